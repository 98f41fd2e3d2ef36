#!/usr/bin/env python3
"""Fault drill: time from fault to detection and to training again, and steps redone, for
each kind of fault, with real processes on loopback.

Usage: scripts/bench-faults.py [DROVER] [REPEATS]
Needs Debian's python3 with python3-zmq and python3-msgpack (scripts/install-deps.sh).
Each run: a coordinator, 3 agents, a 3-rank job (min_nodes 2, commit_every 50); the fault
hits one rank mid-run; the figures come from the job's events (ev_state "re-forming",
ev_state "re-formed", the first ev_progress of the new generation) and metrics.jsonl.
Settings are drover's defaults (heartbeat 1 s, agent timeout 5 s) except the ring
timeout, 30 s by default, which the hang rows set as they say."""
import os
import signal
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
from harness import Cluster, read_metrics, unpack, worker_pid  # noqa: E402

SPEC = """
name: drill
target: attached
nodes: 3
min_nodes: 2
model: {type: mlp, hidden: [64]}
data:
  format: synthetic
  synthetic: {train_samples: 24000, test_samples: 2000, features: 32, classes: 4, seed: 4}
train: {epochs: 200, global_batch: 60, seed: 3, commit_every: 50, optimizer: {type: sgd, lr: 0.05}}
run_dir: %s
"""


def drill(drover, kind, env):
    c = Cluster(drover, env=env)
    try:
        c.start_coordinator()
        for a in ("a1", "a2", "a3"):
            c.start_agent(a)
        c.wait_agents(3)
        sub = c.subscribe()
        job = c.request("submit", {"spec": SPEC % c.runs})[2]["job"]
        run_dir = c.request("status", {"job": job})[2]["jobs"][0]["run_dir"]
        gen0 = None
        while True:  # a second of training first
            _, f = sub.recv_multipart()
            m = unpack(f)
            if m[1] == "ev_progress" and m[2]["step"] > 1000:
                gen0 = m[2]["generation"]
                break
        stopped = None
        t0 = time.time()
        if kind == "worker SIGKILL":
            os.kill(worker_pid(run_dir, 1), signal.SIGKILL)
        elif kind.startswith("worker SIGSTOP"):
            stopped = worker_pid(run_dir, 1)
            os.kill(stopped, signal.SIGSTOP)
        elif kind == "agent SIGKILL":
            os.kill(c.agents["a2"].pid, signal.SIGKILL)
        elif kind == "agent SIGTERM (graceful)":
            c.agents["a2"].send_signal(signal.SIGTERM)
        t_detect = t_training = None
        deadline = t0 + 120
        while time.time() < deadline and t_training is None:
            if not sub.poll(200):
                continue
            _, f = sub.recv_multipart()
            m = unpack(f)
            now = time.time()
            if m[1] == "ev_state" and (m[2].get("reason") or "").startswith("re-forming") and t_detect is None:
                t_detect = now
            if m[1] == "ev_progress" and m[2]["generation"] > gen0:
                t_training = now
        c.request("cancel", {"job": job})
        if stopped:
            os.kill(stopped, signal.SIGCONT)
        if t_training is None:
            raise RuntimeError("%s: the job did not train again:\n%s" % (kind, c.all_logs()))
        recs = read_metrics(run_dir)
        i = next(k for k, x in enumerate(recs) if x["type"] == "reform")
        redone = max(x["step"] for x in recs[:i] if x["type"] == "step") - recs[i]["step"]
        return t_detect - t0, t_training - t0, redone
    finally:
        c.close()


def main():
    drover = sys.argv[1] if len(sys.argv) > 1 else "build/cli/drover"
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    kinds = [("worker SIGKILL", {}), ("agent SIGKILL", {}),
             ("worker SIGSTOP, ring timeout 5 s", {"DROVER_RING_TIMEOUT_MS": "5000"}),
             ("agent SIGTERM (graceful)", {})]
    print("# drover fault drill: 3 ranks, min_nodes 2, commit_every 50; %d runs each, median "
          "(min-max)" % repeats)
    print("| fault | to detection (s) | to training again (s) | steps redone |")
    print("| --- | --- | --- | --- |")
    for kind, env in kinds:
        rows = [drill(drover, kind, env) for _ in range(repeats)]
        cols = list(zip(*rows))
        fmt = lambda v: "%.2f (%.2f-%.2f)" % (statistics.median(v), min(v), max(v))
        print("| %s | %s | %s | %d (%d-%d) |" % (kind, fmt(cols[0]), fmt(cols[1]),
              statistics.median(cols[2]), min(cols[2]), max(cols[2])), flush=True)


if __name__ == "__main__":
    main()
