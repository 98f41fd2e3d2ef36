"""In-place recovery with real processes: a worker SIGKILLed mid-epoch, a worker SIGSTOPped
(a hang), an agent SIGKILLed: the survivors roll back to their last commit, the world is
re-formed without the dead rank, and the job completes; the steps redone are at most
commit_every, and an audit of sample ids shows every sample of the interrupted epoch seen
exactly once. A job that keeps losing workers stops at max_restarts with the first
failure's reason."""
import glob
import os
import signal
import time

from harness import Cluster, cluster, main, read_metrics, unpack, worker_pid

ENV = {"DROVER_HEARTBEAT_MS": "200", "DROVER_PEER_TIMEOUT_MS": "3000",
       "DROVER_RECONNECT_MS": "300", "DROVER_RING_TIMEOUT_MS": "3000"}

SPEC = """
name: %s
target: attached
nodes: 3
min_nodes: %d
max_restarts: %d
model: {type: mlp, hidden: [64]}
data:
  format: synthetic
  synthetic: {train_samples: 24000, test_samples: 2000, features: 32, classes: 4, seed: 4}
train:
  epochs: %d
  global_batch: 60
  seed: 3
  commit_every: 20
  optimizer: {type: sgd, lr: 0.05}
run_dir: %s
"""  # 400 steps per epoch


def start(c, name, min_nodes=2, max_restarts=3, agents=("a1", "a2", "a3"), epochs=2,
          nodes="nodes: 3\n", agent_env=None):
    """A coordinator, `agents` (agent_env: {name: extra environment}) and a job of SPEC,
    its `nodes:` line replaced by `nodes` (which may add keys)."""
    c.start_coordinator()
    for a in agents:
        c.start_agent(a, env=(agent_env or {}).get(a))
    c.wait_agents(len(agents))
    sub = c.subscribe()
    spec = (SPEC % (name, min_nodes, max_restarts, epochs, c.runs)).replace("nodes: 3\n", nodes, 1)
    job = c.request("submit", {"spec": spec})[2]["job"]
    return sub, job


def wait_step(c, sub, job, at_least):
    deadline = time.time() + 60
    while time.time() < deadline:
        if sub.poll(200):
            _, frame = sub.recv_multipart()
            m = unpack(frame)
            if m[1] == "ev_progress" and m[2]["job"] == job and m[2]["step"] >= at_least:
                return m[2]["step"]
    raise AssertionError("job %d did not reach step %d" % (job, at_least))


def audit(audit_dir, n, spe, epoch):
    """Every sample of `epoch` seen exactly once, counting for each step only the records of
    the newest generation that started it. A rank writes a step's record before it adds its
    gradients, so a step that reached the model has the records of its whole world even
    when only some ranks saw its all-reduce finish (a rank killed mid-step, a survivor
    whose send to it failed after everything had arrived); a step that did not reach the
    model is started again by the next generation."""
    recs = {}
    for path in glob.glob(audit_dir + "/audit-*.txt"):
        for line in open(path):
            f = line.split()
            g, s, ids = int(f[0]), int(f[1]), [int(x) for x in f[2:]]
            recs.setdefault(s, {}).setdefault(g, []).extend(ids)
    seen = []
    for s in range(epoch * spe + 1, (epoch + 1) * spe + 1):
        assert s in recs, "step %d has no record" % s
        seen.extend(recs[s][max(recs[s])])
    assert len(seen) == n and sorted(seen) == list(range(n)), (
        "epoch %d: %d ids, %d distinct" % (epoch, len(seen), len(set(seen))))


def run_with_fault(drover, fault):
    ref_c = Cluster(drover, env=ENV)
    try:
        sub, job = start(ref_c, "reference")
        ref, _ = ref_c.follow(sub, job, timeout=180)
        assert ref["state"] == "succeeded", ref
    finally:
        ref_c.close()
    c = Cluster(drover, env=ENV)
    audit_dir = os.path.join(c.tmp, "audit")
    os.makedirs(audit_dir)
    os.chmod(audit_dir, 0o1777)  # workers write here, as nobody under a root agent
    c.env["DROVER_AUDIT_DIR"] = audit_dir
    try:
        sub, job = start(c, "faulty")
        run_dir = c.run_dir(job)
        at = wait_step(c, sub, job, 130)
        t0 = time.time()
        victim = fault(c, run_dir)
        final, events = c.follow(sub, job, timeout=180)
        assert final["state"] == "succeeded", (final, c.all_logs())
        states = [e[2] for e in events if e[1] == "ev_state" and "re-formed" in (e[2].get("reason") or "")]
        assert states, "no re-formation event"
        m = read_metrics(run_dir)
        reform = [x for x in m if x["type"] == "reform"]
        assert reform and reform[0]["world"] == 2, reform
        steps_before = [x["step"] for x in m[:m.index(reform[0])] if x["type"] == "step"]
        redone = max(steps_before) - reform[0]["step"]
        assert 0 <= redone <= 20, (max(steps_before), reform[0])
        epoch = reform[0]["step"] // 400
        audit(audit_dir, 24000, 400, epoch)
        print("%s at step ~%d: re-formed with 2 workers from step %d (%d step(s) redone), "
              "reason: %s; accuracy %.4f vs %.4f unfailed"
              % (victim, at, reform[0]["step"], redone, states[0]["reason"],
                 final["test_accuracy"], ref["test_accuracy"]))
        assert abs(final["test_accuracy"] - ref["test_accuracy"]) <= 0.01, (final, ref)
        return states[0]["reason"]
    except Exception:
        print(c.all_logs())
        raise
    finally:
        c.close()


def test_killed_worker(drover):
    def fault(c, run_dir):
        os.kill(worker_pid(run_dir, 1), signal.SIGKILL)
        return "SIGKILL rank 1"
    reason = run_with_fault(drover, fault)
    assert "rank 1" in reason, reason


def test_hung_worker(drover):
    stopped = []

    def fault(c, run_dir):
        pid = worker_pid(run_dir, 2)
        os.kill(pid, signal.SIGSTOP)
        stopped.append(pid)
        return "SIGSTOP rank 2"
    try:
        reason = run_with_fault(drover, fault)
        assert "rank" in reason, reason
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


def test_killed_agent(drover):
    def fault(c, run_dir):
        os.kill(c.agents["a2"].pid, signal.SIGKILL)
        return "SIGKILL agent a2"
    run_with_fault(drover, fault)


def test_max_restarts(drover):
    with cluster(drover, env=ENV) as c:
        sub, job = start(c, "fragile", min_nodes=1, max_restarts=1, epochs=100)
        run_dir = c.run_dir(job)
        wait_step(c, sub, job, 60)
        os.kill(worker_pid(run_dir, 2), signal.SIGKILL)  # first failure: re-formed on 2
        deadline = time.time() + 30
        while time.time() < deadline and not any(
                x["type"] == "reform" for x in read_metrics(run_dir)):
            time.sleep(0.1)
        time.sleep(0.5)
        pid = None
        while time.time() < deadline and not pid:
            pid = worker_pid(run_dir, 1)
        os.kill(pid, signal.SIGKILL)  # second failure: no restart left
        final, _ = c.follow(sub, job, timeout=60)
        print("max_restarts: %s" % final["reason"])
        assert final["state"] == "failed", final
        assert "max_restarts 1 reached" in final["reason"], final
        assert "rank 2" in final["reason"], final  # the first failure's reason


def reform_records(run_dir):
    m = read_metrics(run_dir)
    out = []
    for i, x in enumerate(m):
        if x["type"] == "reform":
            before = [y["step"] for y in m[:i] if y["type"] == "step"]
            out.append((x, max(before) - x["step"]))
    return out


def test_graceful_leave(drover):
    # SIGTERM to an agent (a preemption notice): its rank leaves at the next commit, no
    # step is lost, the job finishes on the others, and the agent exits by itself.
    with cluster(drover, env=ENV) as c:
        sub, job = start(c, "preempted", epochs=10)  # long enough to drain mid-run
        run_dir = c.run_dir(job)
        wait_step(c, sub, job, 130)
        c.agents["a2"].send_signal(signal.SIGTERM)
        final, _ = c.follow(sub, job, timeout=180)
        assert final["state"] == "succeeded", final
        (rec, redone), = reform_records(run_dir)
        assert rec["world"] == 2 and redone == 0, (rec, redone)
        assert c.agents["a2"].wait(timeout=20) == 0
        assert "a2" not in [a["agent_id"] for a in c.request("agents", {})[2]["agents"]]
        print("graceful leave: re-formed on 2 at step %d, no step redone" % rec["step"])


def test_grow_when_an_agent_joins(drover):
    # A job running below max_nodes takes in an agent that registers mid-run, at its next
    # commit, without losing a step.
    with cluster(drover, env=ENV) as c:
        sub, job = start(c, "growing", agents=("a1", "a2"), epochs=30,
                         nodes="nodes: 2\nmax_nodes: 3\n")
        run_dir = c.run_dir(job)
        wait_step(c, sub, job, 100)
        c.start_agent("a3")
        final, _ = c.follow(sub, job, timeout=180)
        assert final["state"] == "succeeded", final
        (rec, redone), = reform_records(run_dir)
        assert rec["world"] == 3 and redone == 0, (rec, redone)
        print("grow: re-formed on 3 at step %d, no step redone" % rec["step"])


def test_straggler_reported_not_killed(drover):
    # One agent's worker is made slow (a fault-injection sleep in every step): it shows
    # as a straggler in drover status, the job goes on with all three ranks.
    import json
    with cluster(drover, env=ENV) as c:
        sub, job = start(c, "straggling", epochs=20, agent_env={"a3": {"DROVER_FAULT_SLOW_MS": "3"}})
        wait_step(c, sub, job, 200)
        deadline = time.time() + 30
        ranks = []
        while time.time() < deadline:
            st = json.loads(c.drover_cli("status", str(job), "--json").stdout)[0]
            ranks = st["ranks"]
            if any(r["straggler"] for r in ranks):
                break
            time.sleep(0.2)
        slow = [r for r in ranks if r["straggler"]]
        assert [r["agent"] for r in slow] == ["a3"], ranks
        others = [r for r in ranks if not r["straggler"]]
        assert all(r["wait_ms"] > slow[0]["wait_ms"] for r in others), ranks
        plain = c.drover_cli("status", str(job)).stdout
        assert "straggler" in plain and "COMPUTE_MS" in plain, plain
        assert st["status"] == "running" and len(ranks) == 3
        print("straggler: %s" % ranks)
        c.request("cancel", {"job": job})


def test_waits_below_min_nodes_for_an_agent(drover):
    # 2 ranks, min_nodes 2: losing one leaves the job below min_nodes; it waits up to
    # rejoin_timeout, and an agent that registers meanwhile takes the lost rank's place.
    with cluster(drover, env=ENV) as c:
        sub, job = start(c, "patient", agents=("a1", "a2"), epochs=30,
                         nodes="nodes: 2\nrejoin_timeout: 30\n")
        run_dir = c.run_dir(job)
        wait_step(c, sub, job, 100)
        os.kill(worker_pid(run_dir, 1), signal.SIGKILL)
        time.sleep(2.0)
        st = c.request("status", {"job": job})[2]["jobs"][0]
        assert st["state"] == "running", st  # waiting, not failed
        c.start_agent("a3")
        final, _ = c.follow(sub, job, timeout=120)
        assert final["state"] == "succeeded", final
        (rec, redone), = reform_records(run_dir)
        assert rec["world"] == 2 and redone <= 20, (rec, redone)
        print("below min_nodes: waited, re-formed with a new agent at step %d" % rec["step"])


def test_newcomer_after_a_loss_at_an_epoch_end(drover):
    # Rank 1 dies right after the evaluation of epoch 1: rank 0 has evaluated at that step
    # and rolls back to it (a commit). A newcomer that takes rank 1's place must make the
    # same choice as rank 0 there (no evaluation: it was reported), or their collectives
    # pair an evaluation with a gradient sum and the job fails at max_restarts.
    with cluster(drover, env=ENV) as c:
        sub, job = start(c, "boundary", agents=("a1", "a2"), epochs=3,
                         nodes="nodes: 2\nrejoin_timeout: 30\n",
                         agent_env={"a2": {"DROVER_FAULT_KILL_AFTER_EVAL": "1"}})
        run_dir = c.run_dir(job)
        deadline = time.time() + 60
        while not any("fault injection" in open(f).read()
                      for f in glob.glob(os.path.join(run_dir, "logs", "rank-1.log"))):
            assert time.time() < deadline, "rank 1 was not killed after the first evaluation"
            time.sleep(0.1)
        c.start_agent("a3")
        final, _ = c.follow(sub, job, timeout=120)
        assert final["state"] == "succeeded", final
        (rec, redone), = reform_records(run_dir)
        assert rec["step"] == 400 and rec["world"] == 2, rec
        evals = [x["epoch"] for x in read_metrics(run_dir) if x["type"] == "eval"]
        assert evals == [0, 1, 2], evals  # each epoch evaluated once, none twice
        print("lost at an epoch end: re-formed at step %d with a newcomer, evaluations %s"
              % (rec["step"], evals))


def test_rank_lost_before_start(drover):
    # A newcomer taken in by growth dies before checking in: the ranks already waiting for
    # `start` re-form again without it, and the job carries on.
    with cluster(drover, env=ENV) as c:
        sub, job = start(c, "unlucky", agents=("a1", "a2"), epochs=30,
                         nodes="nodes: 2\nmax_nodes: 3\n")
        run_dir = c.run_dir(job)
        wait_step(c, sub, job, 100)
        c.start_agent("a3", env={"DROVER_FAULT_KILL_BEFORE_START": "1"})
        final, events = c.follow(sub, job, timeout=180)
        assert final["state"] == "succeeded", final
        worlds = [x["world"] for x, _ in reform_records(run_dir)]
        reasons = [e[2]["reason"] for e in events if e[1] == "ev_state" and (e[2].get("reason") or "").startswith("re-formed")]
        assert worlds and worlds[-1] == 2, (worlds, reasons)
        assert any("killed by signal 9" in r for r in reasons), reasons
        print("rank lost before start: %s" % reasons)


if __name__ == "__main__":
    main([test_newcomer_after_a_loss_at_an_epoch_end, test_rank_lost_before_start, test_waits_below_min_nodes_for_an_agent, test_straggler_reported_not_killed, test_killed_worker, test_hung_worker, test_killed_agent, test_max_restarts,
          test_graceful_leave, test_grow_when_an_agent_joins])
