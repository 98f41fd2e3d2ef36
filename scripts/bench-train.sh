#!/usr/bin/env bash
# CPU training throughput of examples/fashion-mnist.yaml on 1 and 2 local agents.
# Usage: scripts/bench-train.sh [DROVER] [REPEATS] [EPOCHS]
# Each configuration runs REPEATS times (default 3) for EPOCHS epochs (default 2); the
# figure is the median of the job's samples/s (training steps only, evaluation excluded)
# and the ratio is 2 agents over 1 agent, both measured in this run.
set -euo pipefail
drover=${1:-build/cli/drover}
repeats=${2:-3}
epochs=${3:-2}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
port=$(( 30000 + RANDOM % 20000 ))
export DROVER_COORDINATOR=tcp://127.0.0.1:$port DROVER_STATE_DIR=$tmp/state

echo "# drover training throughput: examples/fashion-mnist.yaml, $epochs epoch(s), global batch 128"
echo "# $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $repeats runs each, median"
printf "%-8s %14s %14s %14s %10s\n" agents "samples/s" "min" "max" "test_acc"
# Runs alternate between 1 and 2 agents, so that drift in the machine's speed hits both.
declare -A results
for r in $(seq "$repeats"); do
  for nodes in 1 2; do
    out=$("$drover" submit examples/fashion-mnist.yaml --target local --nodes "$nodes" --json \
          --set train.epochs="$epochs" --set run_dir="$tmp/runs" 2>/dev/null | tail -1)
    results[$nodes]+="$out"$'\n'
  done
done
declare -A med
for nodes in 1 2; do
  line=$(printf '%s' "${results[$nodes]}" | /usr/bin/python3 -c '
import json, statistics, sys
rows = [json.loads(l) for l in sys.stdin if l.strip()]
bad = [r for r in rows if r["status"] != "succeeded"]
if bad:
    sys.exit("a run failed: %r" % bad[0])
s = [r["samples_per_s"] for r in rows]
print("%.0f %.0f %.0f %.4f" % (statistics.median(s), min(s), max(s), rows[-1]["test_accuracy"]))
')
  read -r m lo hi acc <<<"$line"
  med[$nodes]=$m
  printf "%-8s %14s %14s %14s %10s\n" "$nodes" "$m" "$lo" "$hi" "$acc"
done
/usr/bin/python3 -c "print('# 2 agents / 1 agent: %.2fx' % (${med[2]} / ${med[1]}))"
