#!/usr/bin/env bash
# gpu-check.sh: the whole GPU check of drover on a GPU machine, in one go, within a total
# budget (BUDGET, default 450 s: every step's timeout is cut to what is left of it, so the
# whole run ends inside 8 minutes on an H100, build included):
#   1. nvidia-smi -L                    (no GPU: exit 77)
#   2. configure and build build-gpu/   (CUDA on, Release, CUDA_ARCH, default 90)
#   3. ctest -L gpu                     (pass or fail, the benchmarks still run)
#   4. 2-worker NCCL training of examples/fashion-mnist-gpu.yaml on the one GPU (2 epochs)
#   5. bench/compare.py: drover against PyTorch, same GPU, same run
#   6. a summary (step, status, seconds), then the comparison table, last
#
# Usage, from anywhere in the repository:
#   scripts/gpu-check.sh
#   QUICK=1 scripts/gpu-check.sh       # fewer benchmark steps
#   BUDGET=600 scripts/gpu-check.sh    # more time in all (seconds)
#   CUDA_ARCH=100 JOBS=8 scripts/gpu-check.sh
# Needs: the CUDA toolkit (nvcc, NCCL), python3 with PyTorch for the reference benchmark,
# and the Debian packages of scripts/install-deps.sh installed, or unpacked with their
# paths exported: DEPS_ENV=FILE names a shell script to source first that exports them
# (CMAKE_PREFIX_PATH, PKG_CONFIG_PATH, LD_LIBRARY_PATH, ...), or source it yourself.
# Each step's output goes to gpu-check-logs/ (created here); stdout gets one line a step.
# Exit status: 0 when build, ctest and training succeeded, 1 otherwise, 77 with no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${DEPS_ENV:-}" ]; then
  set +u
  # shellcheck disable=SC1090
  source "$DEPS_ENV"
  set -u
fi
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi

logs=gpu-check-logs
rm -rf "$logs"
mkdir -p "$logs"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

drover=build-gpu/cli/drover
steps=()
declare -A status secs
budget=${BUDGET:-450}
# No GPU is a failure in the GPU tests here, never a skip (they exit 77 elsewhere).
export DROVER_REQUIRE_GPU=1

# cap WANTED: WANTED seconds, or what is left of the budget (at least 10) if less.
cap() {
  local left=$((budget - SECONDS))
  if [ "$left" -lt 10 ]; then left=10; fi
  if [ "$1" -lt "$left" ]; then echo "$1"; else echo "$left"; fi
}

# run_step NAME LIMIT_S CMD...: runs CMD under `timeout`, stdout and stderr to
# $logs/NAME.log; records status and seconds; returns CMD's exit status.
run_step() {
  local name=$1 limit=$2
  shift 2
  steps+=("$name")
  local t0=$SECONDS rc=0
  timeout -k 15 "$limit" "$@" >"$logs/$name.log" 2>&1 || rc=$?
  secs[$name]=$((SECONDS - t0))
  if [ "$rc" -eq 0 ]; then
    status[$name]=ok
  else
    status[$name]=FAILED
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
      echo "  (timed out after ${limit} s)" >>"$logs/$name.log"
    fi
  fi
  return "$rc"
}

skip() {
  steps+=("$1")
  status[$1]=skipped
  secs[$1]=0
  echo "$1: skipped ($2)"
}

# 1. A GPU.
if ! run_step gpu 30 bash -c 'nvidia-smi -L && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv && (nvcc --version | tail -2)'; then
  echo "gpu: no GPU answers (nvidia-smi failed; see $logs/gpu.log)"
  exit 77
fi
echo "gpu: ok, $(head -1 "$logs/gpu.log"); driver $(sed -n 3p "$logs/gpu.log")"

# 2. Configure and build.
# (DROVER_WERROR=OFF: this machine's compiler may warn where CI's does not; the build
# still shows every warning in its log.)
if run_step build "$(cap 180)" bash -c '
  cmake -B build-gpu -DDROVER_CUDA=ON -DDROVER_WERROR=OFF -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_CUDA_ARCHITECTURES="$1" && cmake --build build-gpu -j"$2"' \
    build "${CUDA_ARCH:-90}" "${JOBS:-16}"; then
  echo "build: ok in ${secs[build]} s (CUDA_ARCH ${CUDA_ARCH:-90})"
else
  echo "build: FAILED after ${secs[build]} s; see $logs/build.log: $(tail -1 "$logs/build.log")"
fi

if [ "${status[build]}" = ok ]; then
  # 3. GPU tests.
  if run_step ctest "$(cap 200)" ctest --test-dir build-gpu -L gpu --output-on-failure --no-tests=error --timeout 190 &&
    ! grep -qE 'Skipped|Not Run' "$logs/ctest.log"; then
    echo "ctest: ok in ${secs[ctest]} s, $(grep -E 'tests passed' "$logs/ctest.log" | tail -1)"
  else
    status[ctest]=FAILED
    echo "ctest: FAILED after ${secs[ctest]} s, $(grep -E 'tests passed|No tests' "$logs/ctest.log" | tail -1); see $logs/ctest.log"
  fi

  # 4. Two NCCL workers on the one GPU; submit starts its own coordinator and agents, on a
  # port of its own so that nothing else on the machine is joined.
  port=$((30000 + RANDOM % 20000))
  run_step train "$(cap 75)" env DROVER_STATE_DIR="$tmp/state" \
    DROVER_COORDINATOR="tcp://127.0.0.1:$port" \
    bash -c '"$1" submit examples/fashion-mnist-gpu.yaml --json --set nodes=2 \
               --set train.epochs=2 --set run_dir="$2" >"$3"' \
    train "$drover" "$tmp/runs" "$logs/train.json" || true
  cp -r "$tmp/state" "$logs/train-state" 2>/dev/null || true
  cp -r "$tmp/runs" "$logs/train-runs" 2>/dev/null || true
  # The result line: {"job":..,"status":"succeeded","test_accuracy":..,...}.
  result=$(python3 - "$logs/train.json" <<'PY' || true
import json, sys
try:
    lines = [l for l in open(sys.argv[1]) if l.strip().startswith("{")]
    r = json.loads(lines[-1])
except (OSError, IndexError, ValueError):
    print("none -")
    sys.exit(0)
state = r.get("state", r.get("status", "unknown"))
acc = r.get("test_accuracy")
print(state, "%.4f" % acc if isinstance(acc, (int, float)) else "-")
PY
)
  read -r state acc <<<"${result:-none -}"
  if [ "${status[train]}" = ok ] && [ "$state" = succeeded ]; then
    echo "train: ok in ${secs[train]} s, 2 workers, state $state, test accuracy $acc"
  else
    status[train]=FAILED
    echo "train: FAILED after ${secs[train]} s, state $state, test accuracy $acc; see $logs/train.log and $logs/train-state/"
  fi

  # 5. drover against PyTorch. The table is compare.py's stdout; its progress, stderr.
  quick=()
  if [ "${QUICK:-0}" = 1 ]; then quick=(--quick); fi
  bench_s=$(cap 240)
  run_step bench "$bench_s" bash -c 'out=$1; shift; python3 bench/compare.py "$@" >"$out"' \
    bench "$logs/bench-table.txt" --drover "$drover" --out "$logs/bench.json" \
    --budget $((bench_s - 15)) "${quick[@]}" || true
  if [ "${status[bench]}" = ok ]; then
    echo "bench: ok in ${secs[bench]} s (raw rows in $logs/bench.json)"
  else
    echo "bench: FAILED after ${secs[bench]} s; see $logs/bench.log"
  fi
else
  skip ctest "no build"
  skip train "no build"
  skip bench "no build"
fi

# 6. Summary, then the comparison table last.
echo
printf '%-6s  %-8s  %7s\n' step status seconds
for s in "${steps[@]}"; do
  printf '%-6s  %-8s  %7s\n' "$s" "${status[$s]}" "${secs[$s]}"
done
if [ -s "$logs/bench-table.txt" ]; then
  echo
  cat "$logs/bench-table.txt"
fi

if [ "${status[build]}" = ok ] && [ "${status[ctest]}" = ok ] && [ "${status[train]}" = ok ]; then
  exit 0
fi
exit 1
