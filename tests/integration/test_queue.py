"""The shared queue with real processes: priorities (a later, higher-priority job starts
first), backfill (a job that fits the idle agent and ends in time starts while a bigger
one waits, without delaying it), a job more agents than are registered would hold does
not block the queue, every wait shows its reason, and per-worker resources no agent has
are refused at submission with the numbers, a job waiting for a pool says for how long, and a
job past its max_runtime is stopped.
Long jobs run slowed steps and end when cancelled: nothing here depends on timing."""
import json
import os
import re

from harness import cluster, main, wait_for

SPEC = """
name: %s
target: attached
nodes: %d
%s
model: {type: mlp, hidden: [16]}
data:
  format: synthetic
  synthetic: {train_samples: 2000, test_samples: 200, features: 8, classes: 3, seed: 3}
train: {epochs: %d, global_batch: 50, optimizer: {type: sgd, lr: 0.05}}
run_dir: %s
"""

ENV = {"DROVER_HEARTBEAT_MS": "200"}
SLOW = {"DROVER_FAULT_SLOW_MS": "20"}  # 40 steps an epoch: a 1000-epoch job runs until cancelled
LONG, SHORT = 1000, 1


def spec(c, name, nodes, epochs, extra=""):
    return SPEC % (name, nodes, extra, epochs, c.runs)


def submit(c, name, nodes, epochs, extra=""):
    r = c.request("submit", {"spec": spec(c, name, nodes, epochs, extra)})
    assert r[1] == "submitted", r
    return r[2]["job"]


def job(c, j):
    return c.request("status", {"job": j})[2]["jobs"][0]


def state(c, j):
    return job(c, j)["state"]


def reason_has(c, j, text):
    """The job's reason once it contains text (waited for: the next scheduling pass)."""
    return wait_for(lambda: text in job(c, j)["reason"] and job(c, j)["reason"], 20,
                    "job %d's reason to say %r (it says %r)" % (j, text, job(c, j)["reason"]))


def running(c, j):
    wait_for(lambda: state(c, j) == "running", 60, "job %d to run" % j)


def cancel(c, j):
    r = c.drover_cli("cancel", str(j))
    assert r.returncode == 0, r.stderr


def agents_up(c, n):
    for i in range(n):
        c.start_agent("a%d" % i, env=SLOW)
    c.wait_agents(n)


def test_priority(drover):
    with cluster(drover, env=ENV) as c:
        c.start_coordinator()
        agents_up(c, 1)
        sub = c.subscribe()
        blocker = submit(c, "blocker", 1, LONG)
        running(c, blocker)
        low = submit(c, "low", 1, SHORT)
        # drover submit --priority N, as `--set priority=N`
        path = os.path.join(c.tmp, "high.yaml")
        with open(path, "w") as f:
            f.write(spec(c, "high", 1, SHORT))
        r = c.drover_cli("submit", path, "--target", "attached", "--priority", "5", "--detach",
                         "--json", timeout=60)
        assert r.returncode == 0, r.stderr
        high = json.loads(r.stdout)["job"]
        assert "priority: 5" in c.request("get_spec", {"job": high})[2]["spec"]
        # The later job is first now: the older one waits behind it, and says so.
        reason_has(c, low, "priority: 1 job ahead; needs 1 node, 1 registered")
        reason_has(c, high, "resources: needs 1 node, 0 idle, 1 busy (job %d)" % blocker)
        cancel(c, blocker)
        for j in (high, low):
            final, _ = c.follow(sub, j, timeout=120)
            assert final["state"] == "succeeded", final
        log = c.log("agent-a0.log")
        assert log.index("job %d rank 0/1" % high) < log.index("job %d rank 0/1" % low), log


def test_backfill(drover):
    with cluster(drover, env=ENV) as c:
        c.start_coordinator()
        agents_up(c, 3)
        sub = c.subscribe()
        long2 = submit(c, "long2", 2, LONG)  # no max_runtime: its end is not known
        running(c, long2)
        big3 = submit(c, "big3", 3, SHORT)
        reason_has(c, big3, "resources: needs 3 nodes, 1 idle, 2 busy (job %d), 3 registered"
                   % long2)
        # Without a max_runtime a job may not take the node big3 holds: it could delay it.
        nomax = submit(c, "nomax", 1, SHORT)
        reason_has(c, nomax, "priority: 1 job ahead; backfill: job %d holds the idle nodes it "
                   "fits; it has no max_runtime" % big3)
        # With one (big3's start is not known before long2 ends: any max_runtime fits), a
        # job starts on the idle node at once, ahead of the older ones.
        fill = submit(c, "fill", 1, SHORT, "max_runtime: 600")
        final, _ = c.follow(sub, fill, timeout=120)
        assert final["state"] == "succeeded", final
        assert state(c, big3) == "queued" and state(c, nomax) == "queued"
        # long2 ends: big3 starts on all three, then nomax.
        cancel(c, long2)
        for j in (big3, nomax):
            final, _ = c.follow(sub, j, timeout=120)
            assert final["state"] == "succeeded", final
        starts = {j["id"]: j["started_at"] for j in c.request("status", {})[2]["jobs"]}
        assert starts[big3] <= starts[nomax], starts
        log = c.log("agent-a0.log") + c.log("agent-a1.log") + c.log("agent-a2.log")
        for r in range(3):
            assert "job %d rank %d/3" % (big3, r) in log, log


def test_impossible_and_resources(drover):
    with cluster(drover, env=ENV) as c:
        c.start_coordinator()
        # Before any agent: too many nodes, or resources, are not refused (agents may come).
        five = submit(c, "five", 5, SHORT)
        early = submit(c, "early-gpus", 1, SHORT, "resources: {gpus_per_worker: 8}")
        agents_up(c, 3)
        sub = c.subscribe()
        reason_has(c, five, "needs 5 nodes, only 3 agents of target attached registered")
        # It holds nothing: a later 1-node job runs.
        one = submit(c, "one", 1, SHORT)
        final, _ = c.follow(sub, one, timeout=120)
        assert final["state"] == "succeeded", final
        assert state(c, five) == "queued", state(c, five)
        reason_has(c, early, "needs 1 node x 8 GPUs, only 0 agents of target attached registered with that")
        # With agents registered, resources none of them has are refused with the numbers.
        r = c.request("submit", {"spec": spec(c, "gpus", 1, SHORT,
                                              "resources: {gpus_per_worker: 8}")})
        assert r[1] == "error" and r[2]["code"] == "invalid", r
        assert r[2]["message"] == ("resources: needs 8 GPUs per worker; the largest agent of "
                                   "target attached has 0"), r
        r = c.request("submit", {"spec": spec(c, "mem", 1, SHORT,
                                              "resources: {memory_mb: 100000000}")})
        assert r[1] == "error" and "needs 100000000 MB per worker" in r[2]["message"], r
        # What the agents have is accepted and runs.
        fits = submit(c, "fits", 1, SHORT, "resources: {cpus_per_worker: 1, memory_mb: 16}")
        final, _ = c.follow(sub, fits, timeout=120)
        assert final["state"] == "succeeded", final
        # A pool nobody serves: its reason says for how long (and when the job fails).
        r = c.request("submit", {"spec": spec(c, "pooled", 1, SHORT), "pool": "gpu-a"})
        assert r[1] == "submitted", r
        pooled = r[2]["job"]
        pat = re.compile(r"^pool gpu-a: no agent registered for (\d+) s \(the job fails at 60 s\)$")
        why = wait_for(lambda: (lambda m: m and int(m.group(1)) >= 2 and m.group(0))(
            pat.match(job(c, pooled)["reason"])), 20, "the pooled job's reason to count 2 s")
        print("pooled job, no agent of its pool: %s" % why)
        for j in (five, early, pooled):
            cancel(c, j)
        # A job that runs past its max_runtime is stopped: backfill counted on its end.
        over = submit(c, "over", 1, LONG, "max_runtime: 1")
        final, _ = c.follow(sub, over, timeout=120)
        assert final["state"] == "failed", final
        assert "ran past its max_runtime (1 s)" in final["reason"], final


if __name__ == "__main__":
    main([test_priority, test_backfill, test_impossible_and_resources])
