# drover: the two commands of the README, and a few more.
#   make demo   installs what is missing, builds, trains Fashion-MNIST on 2 local agents
#   make test   installs what is missing, builds, runs the whole test suite
#   make fuzz   builds the fuzz harnesses with clang (build-fuzz/) and runs each for
#               FUZZ_SECONDS; new inputs go to build-fuzz/fuzz/corpus/, crashes to
#               build-fuzz/fuzz/artifacts/ (docs/architecture.md, Fuzzing)
BUILD ?= build
JOBS  ?= $(shell nproc)
CMAKE_FLAGS ?=
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 60
FUZZ_CC ?= clang-14
FUZZ_TARGETS ?= proto jobspec dataset checkpoint safetensors
FUZZ_FLAGS ?=

.PHONY: all deps build demo test test-unit bench clean format fuzz

all: build

deps:
	@bash scripts/install-deps.sh

$(BUILD)/CMakeCache.txt: | deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS)

build: deps $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

demo: build
	$(BUILD)/cli/drover submit examples/fashion-mnist.yaml --target local --nodes 2

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS) --timeout 600

test-unit: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS) -L unit

bench: build
	$(BUILD)/cli/drover bench ring --workers 2,4 --bytes 64M
	bash scripts/bench-train.sh $(BUILD)/cli/drover

$(FUZZ_BUILD)/CMakeCache.txt:
	@bash scripts/install-deps.sh fuzz
	cmake -S . -B $(FUZZ_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=$(FUZZ_CC) \
	  -DDROVER_FUZZ=ON -DDROVER_CUDA=OFF $(CMAKE_FLAGS)

# Each fuzzer in turn, all of them even when one fails; the first corpus directory (in the
# build) takes what fuzzing finds, the committed one (tests/fuzz/corpus/) is only read.
fuzz: $(FUZZ_BUILD)/CMakeCache.txt
	cmake --build $(FUZZ_BUILD) -j $(JOBS) --target $(addprefix fuzz_,$(FUZZ_TARGETS))
	@failed=""; for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(FUZZ_BUILD)/fuzz/corpus/$$t $(FUZZ_BUILD)/fuzz/artifacts; \
	  dict=""; if [ -f tests/fuzz/$$t.dict ]; then dict="-dict=tests/fuzz/$$t.dict"; fi; \
	  echo "== fuzz_$$t for $(FUZZ_SECONDS) s"; \
	  $(FUZZ_BUILD)/tests/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	    -artifact_prefix=$(FUZZ_BUILD)/fuzz/artifacts/$$t- $$dict $(FUZZ_FLAGS) \
	    $(FUZZ_BUILD)/fuzz/corpus/$$t tests/fuzz/corpus/$$t || failed="$$failed $$t"; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: failed:$$failed (see $(FUZZ_BUILD)/fuzz/artifacts/)"; exit 1; fi

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf $(BUILD)
