"""Gang scheduling with real processes: a job starts only when all its workers can be
placed, a job that the registered agents could never hold does not hold up the queue (it
waits with its reason), jobs on another target are not held up, and ranks follow the
agents' names. Priorities and backfill: test_queue.py."""
from harness import Cluster, cluster, main

SPEC = """
name: %s
target: %s
nodes: %d
model: {type: mlp, hidden: [16]}
data:
  format: synthetic
  synthetic: {train_samples: 2000, test_samples: 200, features: 8, classes: 3, seed: 3}
train: {epochs: 2, global_batch: 50, optimizer: {type: sgd, lr: 0.05}}
run_dir: %s
"""


def state(c, job):
    return c.request("status", {"job": job})[2]["jobs"][0]["state"]


def test_gang_and_fifo(drover):
    with cluster(drover, env={"DROVER_HEARTBEAT_MS": "200"}) as c:
        c.start_coordinator()
        c.start_agent("b-agent")
        c.wait_agents(1)
        sub = c.subscribe()
        big = c.request("submit", {"spec": SPEC % ("big", "attached", 2, c.runs)})[2]["job"]
        small = c.request("submit", {"spec": SPEC % ("small", "attached", 1, c.runs)})[2]["job"]
        # One agent cannot hold the 2-worker gang: it waits, saying so, and holds nothing,
        # so the 1-worker job behind it runs.
        final, _ = c.follow(sub, small, timeout=120)
        assert final["state"] == "succeeded", final
        assert state(c, big) == "queued", state(c, big)
        reason = c.request("status", {"job": big})[2]["jobs"][0]["reason"]
        assert "needs 2 nodes, only 1 agent of target attached registered" in reason, reason
        # A job for another target is not held up by that queue (no agents there: queued).
        other = c.request("submit", {"spec": SPEC % ("other", "local", 1, c.runs)})[2]["job"]
        c.start_agent("l-agent", target="local")
        final, _ = c.follow(sub, other, timeout=60)
        assert final["state"] == "succeeded", final
        assert state(c, big) == "queued"
        # A second attached agent completes the gang.
        c.start_agent("a-agent")
        final, events = c.follow(sub, big, timeout=120)
        assert final["state"] == "succeeded", final
        # Rank 0 of the gang is the agent whose name sorts first.
        log = open(c.tmp + "/agent-a-agent.log").read()
        assert "job %d rank 0/2" % big in log, log


if __name__ == "__main__":
    main([test_gang_and_fifo])
