"""Outages wider than one rank, with real processes on loopback: a coordinator restarted
while one of its agents died (the job resumes on min_nodes after rejoin_timeout instead of
waiting for all its nodes forever), every worker of a job killed at once (the job re-forms
from its durable checkpoint with the same agents once their cool-down is over, instead of
failing), and a hung worker's node cooling down like a killed one's (not taken straight
back by growth), and a coordinator stopped (SIGSTOP) for longer than its agents' timeout
(the job re-forms from its checkpoint instead of failing, and no agent is blamed for the
coordinator's own silence)."""
import json
import os
import signal
import time

from harness import cluster, main, read_metrics, unpack, worker_pid

ENV = {"DROVER_HEARTBEAT_MS": "200", "DROVER_PEER_TIMEOUT_MS": "3000",
       "DROVER_RECONNECT_MS": "300", "DROVER_RING_TIMEOUT_MS": "3000"}

SPEC = """
name: %s
target: attached
nodes: 3
min_nodes: 2
max_restarts: 3
rejoin_timeout: %d
model: {type: mlp, hidden: [64]}
data:
  format: synthetic
  synthetic: {train_samples: 24000, test_samples: 2000, features: 32, classes: 4, seed: 4}
train:
  epochs: %d
  global_batch: 60
  seed: 3
  commit_every: 20
  checkpoint_every: 40
  keep_checkpoints: 3
  optimizer: {type: sgd, lr: 0.05}
run_dir: %s
"""  # 400 steps per epoch


def start(c, name, rejoin, epochs, agent_env=None, restarts=3):
    c.start_coordinator()
    for a in ("a1", "a2", "a3"):
        c.start_agent(a, env=(agent_env or {}).get(a))
    c.wait_agents(3)
    sub = c.subscribe()
    spec = (SPEC % (name, rejoin, epochs, c.runs)).replace("max_restarts: 3",
                                                         "max_restarts: %d" % restarts)
    job = c.request("submit", {"spec": spec})[2]["job"]
    return sub, job


def status(c, job):
    return c.request("status", {"job": job})[2]["jobs"][0]


def wait_for_checkpoint(c, job, at_least, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = status(c, job)
        if st.get("ckpt_step", 0) >= at_least:
            return st
        time.sleep(0.05)
    raise AssertionError("no checkpoint of job %d reached step %d" % (job, at_least))


def follow_timed(c, sub, job, timeout):
    """Like Cluster.follow, with the time each ev_state arrived: (final, [(t, body)])."""
    states = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not sub.poll(500):
            st = status(c, job)
            if st["state"] in ("succeeded", "failed", "cancelled"):
                return st, states
            continue
        _, frame = sub.recv_multipart()
        m = unpack(frame)
        if m[1] == "ev_state" and m[2]["job"] == job:
            states.append((time.time(), m[2]))
            if m[2]["state"] in ("succeeded", "failed", "cancelled"):
                return m[2], states
    raise AssertionError("job %d did not finish within %d s" % (job, timeout))


def redone(m, resumed):
    """Steps trained before the resume record `resumed` beyond the step it resumed from."""
    before = [x["step"] for x in m[:m.index(resumed)] if x["type"] == "step"]
    return max(before) - resumed["step"]


_UNFAILED = {}


def unfailed_accuracy(drover, epochs=10):
    """The test accuracy of the same job with nothing failing: what a job that came through
    an outage must reach within 1 %. One run per epochs, cached for the file's tests."""
    if epochs not in _UNFAILED:
        with cluster(drover, env=ENV) as c:
            sub, job = start(c, "unfailed", rejoin=30, epochs=epochs)
            final, _ = follow_timed(c, sub, job, timeout=180)
            assert final["state"] == "succeeded", final
            steps = [x for x in read_metrics(c.run_dir(job)) if x["type"] == "step"]
            _UNFAILED[epochs] = (status(c, job)["test_accuracy"], steps[-1]["loss"])
    return _UNFAILED[epochs][0]


def unfailed_last_loss(epochs=10):
    """The last step's loss of the unfailed run (unfailed_accuracy ran it)."""
    return _UNFAILED[epochs][1]


def assert_accuracy(c, job, ref):
    acc = status(c, job)["test_accuracy"]
    assert abs(acc - ref) <= 0.01, "test accuracy %.4f, unfailed %.4f" % (acc, ref)
    return acc


def wait_reason(c, job, state, words, timeout=20):
    deadline = time.time() + timeout
    st = None
    while time.time() < deadline:
        st = status(c, job)
        if st["state"] == state and all(w in (st["reason"] or "") for w in words):
            return st
        time.sleep(0.1)
    raise AssertionError("job %d never %s with %r: %r" % (job, state, words, st))


def test_restart_with_an_agent_gone_resumes_on_min_nodes(drover):
    ref = unfailed_accuracy(drover)
    with cluster(drover, env=ENV) as c:
        sub, job = start(c, "shrunk", rejoin=6, epochs=10)
        wait_for_checkpoint(c, job, 40)
        c.stop_coordinator(signal.SIGKILL)
        c.agents["a3"].send_signal(signal.SIGKILL)  # its worker dies with it (PDEATHSIG)
        c.agents["a3"].wait(timeout=10)
        t0 = time.time()
        c.start_coordinator()
        sub = c.subscribe()
        # Queued, saying why: it waits for all 3 up to rejoin_timeout, and drover status
        # shows that reason.
        st = wait_reason(c, job, "queued", ["waiting up to 6 s", "min_nodes 2"])
        out = json.loads(c.drover_cli("status", str(job), "--json").stdout)[0]
        assert "waiting up to 6 s" in out["reason"], out
        final, states = follow_timed(c, sub, job, timeout=180)
        assert final["state"] == "succeeded", final
        placed = [t for t, s in states if s["state"] == "running"]
        assert placed and placed[0] - t0 >= 5.0, "placed %.1f s after the restart" % (
            placed[0] - t0)  # after rejoin_timeout (6 s from its start), not at once
        m = read_metrics(status(c, job)["run_dir"])
        resumed = [x for x in m if x["type"] == "resume"]
        assert resumed and resumed[-1]["world"] == 2 and resumed[-1]["step"] >= 40, resumed
        assert resumed[-1]["step"] % 40 == 0, resumed
        first = [x for x in m if x["type"] == "step" and x["step"] == resumed[-1]["step"] + 1]
        assert first, "no step after the resume"
        with open(os.path.join(c.tmp, "coordinator.log"), errors="replace") as f:
            log = f.read()
        assert "placed on 2 agent(s) (fewer than its nodes" in log, log[-3000:]
        acc = assert_accuracy(c, job, ref)
        print("coordinator restarted with 2 of 3 agents: queued (%s), placed on 2 after %.1f s, "
              "resumed from step %d, %d step(s) redone; accuracy %.4f vs %.4f unfailed"
              % (st["reason"], placed[0] - t0, resumed[-1]["step"], redone(m, resumed[-1]), acc,
                 ref))


def test_fresh_job_waits_for_all_nodes(drover):
    # Strict gang for a job that never started: 2 agents for 3 nodes, it stays queued
    # past rejoin_timeout.
    with cluster(drover, env=ENV) as c:
        c.start_coordinator()
        c.start_agent("a1")
        c.start_agent("a2")
        c.wait_agents(2)
        job = c.request("submit", {"spec": SPEC % ("gang", 1, 1, c.runs)})[2]["job"]
        time.sleep(3)
        assert status(c, job)["state"] == "queued", status(c, job)
        c.request("cancel", {"job": job})


def test_every_worker_killed_resumes_from_checkpoint(drover):
    ref = unfailed_accuracy(drover)
    env = dict(ENV, DROVER_COOLDOWN_MS="4000")
    with cluster(drover, env=env) as c:
        sub, job = start(c, "wiped", rejoin=30, epochs=10)
        run_dir = c.run_dir(job)
        wait_for_checkpoint(c, job, 40)
        pids = [worker_pid(run_dir, r) for r in range(3)]
        t0 = time.time()
        # Stopped first, so that no rank can report a broken ring before the others die:
        # the three deaths arrive together, as when a rack loses power.
        for p in pids:
            os.kill(p, signal.SIGSTOP)
        for p in pids:
            os.kill(p, signal.SIGKILL)
        # Not failed: waiting (cool-down keeps the agents out for 4 s), saying so.
        st = wait_reason(c, job, "running",
                         ["0 worker(s) left", "waiting up to 30 s for agents", "min_nodes 2"])
        final, states = follow_timed(c, sub, job, timeout=180)
        assert final["state"] == "succeeded", final
        reformed = [(t, s) for t, s in states if "re-formed" in (s.get("reason") or "")]
        assert reformed, states
        t_re, s_re = reformed[0]
        assert "from the checkpoint of step" in s_re["reason"], s_re
        assert "killed by signal 9" in s_re["reason"], s_re
        assert t_re - t0 >= 3.0, "re-formed before the cool-down was over: %.1f s" % (t_re - t0)
        m = read_metrics(run_dir)
        resumed = [x for x in m if x["type"] == "resume"]
        # On as many agents as were free when the job re-formed: min_nodes at least (the
        # agents leave their cool-down one by one, as their workers' exits were reported).
        assert resumed and 2 <= resumed[-1]["world"] <= 3 and resumed[-1]["step"] >= 40, resumed
        done = [x["step"] for x in m if x["type"] == "step"]
        assert done[-1] == 4000, done[-3:]
        acc = assert_accuracy(c, job, ref)
        same = "world 2: loss not compared"
        if resumed[-1]["world"] == 3:  # the same world size from a checkpoint: the same bits
            last = [x for x in m if x["type"] == "step"][-1]["loss"]
            assert last == unfailed_last_loss(), (last, unfailed_last_loss())
            same = "last loss %.9g, bit-identical to the unfailed run's" % last
        print("every worker killed: waited (%s), re-formed after %.1f s, %d step(s) redone: %s; "
              "accuracy %.4f vs %.4f unfailed; %s"
              % (st["reason"], t_re - t0, redone(m, resumed[-1]), s_re["reason"], acc, ref, same))


def test_hung_node_cools_down(drover):
    # Steps slowed to 1 ms (12000 of them) so that the job outlives the cool-down.
    env = dict(ENV, DROVER_COOLDOWN_MS="5000", DROVER_FAULT_SLOW_MS="1")
    ref = unfailed_accuracy(drover, epochs=30)
    stopped = []
    with cluster(drover, env=env) as c:
        sub, job = start(c, "hung", rejoin=30, epochs=30)
        run_dir = c.run_dir(job)
        wait_for_checkpoint(c, job, 40)
        pid = worker_pid(run_dir, 2)
        os.kill(pid, signal.SIGSTOP)
        stopped.append(pid)
        try:
            deadline = time.time() + 60
            t_out = None
            while time.time() < deadline and t_out is None:
                if sub.poll(200):
                    _, frame = sub.recv_multipart()
                    m = unpack(frame)
                    if m[1] == "ev_state" and "re-formed" in (m[2].get("reason") or ""):
                        t_out = time.time()
                        first = m[2]["reason"]
            assert t_out, "the hung rank was never left out"
            assert "stopped making progress" in first, first
            final, states = follow_timed(c, sub, job, timeout=240)
            assert final["state"] == "succeeded", final
            grown = [t for t, s in states if "taking in" in (s.get("reason") or "")]
            # Left out as silent, its agent takes no work for the cool-down (5 s), then the
            # job grows back onto it (before, it was taken back 1-3 s after).
            assert grown, "never grew back onto the cooled-down agent: %r" % states
            assert grown[0] - t_out >= 4.5, "taken back after %.1f s" % (grown[0] - t_out)
            acc = assert_accuracy(c, job, ref)
            print("hung rank left out (%s); taken back after %.1f s; accuracy %.4f vs %.4f "
                  "unfailed" % (first, grown[0] - t_out, acc, ref))
        finally:
            for p in stopped:
                try:
                    os.kill(p, signal.SIGCONT)
                except ProcessLookupError:
                    pass


def test_killed_agent_named_as_its_death(drover):
    # SIGKILL to an agent: its worker dies with it and nobody reports; the rank is left out
    # naming the agent's death, not a hang.
    # The agent timeout longer than the re-formation's grace, so the grace ends first.
    ref = unfailed_accuracy(drover)
    with cluster(drover, env=dict(ENV, DROVER_PEER_TIMEOUT_MS="8000")) as c:
        sub, job = start(c, "orphaned", rejoin=30, epochs=10)
        wait_for_checkpoint(c, job, 40)
        t0 = time.time()
        c.agents["a2"].send_signal(signal.SIGKILL)
        final, states = follow_timed(c, sub, job, timeout=180)
        assert final["state"] == "succeeded", final
        reformed = [(t, s["reason"]) for t, s in states if "re-formed" in (s.get("reason") or "")]
        assert reformed, states
        t_re, reason = reformed[0]
        assert "agent a2" in reason, reason
        assert "went silent with its worker: no heartbeat for" in reason, reason
        assert "stopped making progress" not in reason, reason
        acc = assert_accuracy(c, job, ref)
        print("agent SIGKILL: re-formed after %.1f s: %s; accuracy %.4f vs %.4f unfailed"
              % (t_re - t0, reason, acc, ref))


def test_own_error_named_over_peers_broken_rings(drover):
    # Rank 1 fails with an error of its own after its ring is closed and its peers' failed
    # reports (their rings' errors) have reached the coordinator first: the job's reason is
    # rank 1's error, the root cause, not whichever report came first.
    fault = {"a2": {"DROVER_FAULT_FAIL_AT_STEP": "150"}}
    for hold in ("200", "0"):
        with cluster(drover, env=dict(ENV, DROVER_FAIL_HOLD_MS=hold)) as c:
            sub, job = start(c, "rooted", rejoin=30, epochs=10, agent_env=fault, restarts=0)
            final, _ = follow_timed(c, sub, job, timeout=120)
            assert final["state"] == "failed", final
            if hold != "0":
                assert "rank 1 (agent a2): fault injection: failed after step 150" in \
                    final["reason"], final
            print("DROVER_FAIL_HOLD_MS=%s: %s" % (hold, final["reason"]))


def follow_training(c, sub, job, timeout):
    """Like follow_timed, and the time of the first ev_progress of a generation after
    the first: (final, [(t, ev_state body)], t_training or None)."""
    states, t_train = [], None
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not sub.poll(500):
            st = status(c, job)
            if st["state"] in ("succeeded", "failed", "cancelled"):
                return st, states, t_train
            continue
        _, frame = sub.recv_multipart()
        m = unpack(frame)
        if m[2].get("job") != job:
            continue
        if m[1] == "ev_progress" and t_train is None and m[2]["generation"] > 1:
            t_train = time.time()
        if m[1] == "ev_state":
            states.append((time.time(), m[2]))
            if m[2]["state"] in ("succeeded", "failed", "cancelled"):
                return m[2], states, t_train
    raise AssertionError("job %d did not finish within %d s" % (job, timeout))


def test_coordinator_stopped_resumes_from_checkpoint(drover):
    # SIGSTOP the coordinator for 8 s, longer than the agents' 3 s timeout: they stop their
    # workers (they lost the coordinator) and reconnect. On waking, the coordinator knows it
    # was away: it does not declare its agents silent, and the job, all its workers gone,
    # waits for agents and re-forms from its durable checkpoint instead of failing.
    # Steps slowed to 1 ms so that the workers are still training when their agents stop
    # them.
    ref = unfailed_accuracy(drover)
    with cluster(drover, env=dict(ENV, DROVER_FAULT_SLOW_MS="1")) as c:
        sub, job = start(c, "stalled", rejoin=30, epochs=10)
        run_dir = c.run_dir(job)
        wait_for_checkpoint(c, job, 40)
        c.coord.send_signal(signal.SIGSTOP)
        try:
            time.sleep(8)
        finally:
            c.coord.send_signal(signal.SIGCONT)
        t0 = time.time()
        final, states, t_train = follow_training(c, sub, job, timeout=180)
        assert final["state"] == "succeeded", final
        reasons = [s.get("reason") or "" for _, s in states] + [final.get("reason") or ""]
        assert not [r for r in reasons if "silent for" in r], reasons
        assert [r for r in reasons if "from the checkpoint of step" in r], reasons
        with open(os.path.join(c.tmp, "coordinator.log"), errors="replace") as f:
            log = f.read()
        assert "the coordinator was not running for" in log, log[-3000:]
        assert "silent for" not in log, log[-3000:]
        m = read_metrics(run_dir)
        resumed = [x for x in m if x["type"] == "resume"]
        assert resumed and resumed[-1]["step"] >= 40 and resumed[-1]["step"] % 40 == 0, \
            [x for x in m if x["type"] != "step"]
        done = [x["step"] for x in m if x["type"] == "step"]
        assert done[-1] == 4000, done[-3:]
        assert t_train, "no progress after the re-formation"
        acc = assert_accuracy(c, job, ref)
        print("coordinator SIGSTOP 8 s: training again %.2f s after SIGCONT, resumed from the "
              "checkpoint of step %d, %d step(s) redone: %s; accuracy %.4f vs %.4f unfailed"
              % (t_train - t0, resumed[-1]["step"], redone(m, resumed[-1]),
                 [r for r in reasons if "checkpoint" in r][0], acc, ref))


if __name__ == "__main__":
    main([test_restart_with_an_agent_gone_resumes_on_min_nodes, test_fresh_job_waits_for_all_nodes,
          test_every_worker_killed_resumes_from_checkpoint, test_hung_node_cools_down,
          test_killed_agent_named_as_its_death, test_own_error_named_over_peers_broken_rings,
          test_coordinator_stopped_resumes_from_checkpoint])
