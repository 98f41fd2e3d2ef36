# drover: the two commands of the README, and a few more.
#   make demo   installs what is missing, builds, trains Fashion-MNIST on 2 local agents
#   make test   installs what is missing, builds, runs the whole test suite
BUILD ?= build
JOBS  ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: all deps build demo test test-unit bench clean format

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

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf $(BUILD)
