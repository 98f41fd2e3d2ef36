"""The local target when several `drover submit` commands share one coordinator: each job
runs on the agents its own submit started, sequential submits against a coordinator
started by hand all succeed, and a submit that started the coordinator leaves it running
while another submit's job still needs it."""
import json
import os
import subprocess
import time

from harness import Cluster, cluster, main

SPEC = """
name: %s
target: local
nodes: 2
model: {type: mlp, hidden: [32]}
data:
  format: synthetic
  synthetic: {train_samples: %d, test_samples: 500, features: 16, classes: 3, seed: 5}
train: {epochs: 1, global_batch: 32, optimizer: {type: sgd, lr: 0.05}}
run_dir: %s
"""


def write_spec(c, name, samples):
    path = os.path.join(c.tmp, name + ".yaml")
    with open(path, "w") as f:
        f.write(SPEC % (name, samples, c.runs))
    return path


def coordinator_logs(c):
    """The tails of the coordinator logs the local submits wrote, for a failure message."""
    logs = []
    for d in sorted(os.listdir(c.state)) if os.path.isdir(c.state) else []:
        path = os.path.join(c.state, d, "coordinator.log")
        if os.path.exists(path):
            logs.append("%s:\n%s" % (path, open(path).read()[-2000:]))
    return "\n".join(logs)


def result(c, proc):
    out, err = proc.communicate(timeout=300)
    lines = [l for l in out.splitlines() if l.startswith("{")]
    assert lines, (out, err[-3000:], coordinator_logs(c))
    return json.loads(lines[-1]), err


def test_sequential_submits_on_a_running_coordinator(drover):
    with cluster(drover) as c:
        c.start_coordinator()
        spec = write_spec(c, "seq", 3000)
        for i in range(3):
            r = c.drover_cli("submit", spec, "--json")
            res = json.loads(r.stdout.splitlines()[-1])
            assert r.returncode == 0 and res["status"] == "succeeded", (i, res, r.stderr[-2000:])
        # Stopped agents said goodbye: none is left registered.
        assert c.request("agents", {})[2]["agents"] == []


def test_overlapping_submits_share_a_coordinator(drover):
    c = Cluster(drover)
    try:
        short = write_spec(c, "short", 30000)
        long = write_spec(c, "long", 120000)
        # Steps slowed (the submits' agents and workers inherit it): a's job runs for about
        # 1 s, long enough to be seen running however slow the machine, and b's for about 7 s.
        env = dict(c.env, DROVER_FAULT_SLOW_MS="2")
        a = subprocess.Popen([c.drover, "submit", short, "--json"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             env=dict(c.env, DROVER_FAULT_SLOW_MS="1"))
        # b comes while a's job runs on the coordinator a started, and outlasts it.
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                jobs = c.request("status", {"limit": 1}, timeout=0.5)[2]["jobs"]
                if jobs and jobs[0]["state"] == "running":
                    break
            except TimeoutError:
                pass
            time.sleep(0.1)
        b = subprocess.Popen([c.drover, "submit", long, "--json"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
        ra, ea = result(c, a)
        rb, eb = result(c, b)
        assert ra["status"] == "succeeded", (ra, ea[-2000:])
        assert rb["status"] == "succeeded", (rb, eb[-2000:])
        assert ra["job"] != rb["job"]
        # a did not stop the coordinator under b's job.
        assert "leaving the coordinator" in ea, ea[-2000:]
        # Each job ran on its own submit's agents (pool local-<pid>).
        for res, proc in ((ra, a), (rb, b)):
            logs = "".join(open(os.path.join(res["run_dir"], "logs", f)).read()
                           for f in os.listdir(os.path.join(res["run_dir"], "logs")))
            assert "done:" in logs
        # The coordinator a started exits by itself once idle.
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                c.request("status", {"limit": 1}, timeout=0.5)
                time.sleep(0.5)
            except TimeoutError:
                break
        else:
            raise AssertionError("the local coordinator did not exit when idle")
    finally:
        c.close()


if __name__ == "__main__":
    main([test_sequential_submits_on_a_running_coordinator,
          test_overlapping_submits_share_a_coordinator])
