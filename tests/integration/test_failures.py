"""Failure paths with real processes: a dead agent fails its job with the reason and the
other agents are released; cancel stops a running job; a killed coordinator is replaced and
the agents register again by themselves, with past jobs still listed; a worker that cannot
read its data fails the job with a reason naming the file."""
import json
import os
import signal
import time

from harness import Cluster, cluster, main, wait_for

FAST = {"DROVER_HEARTBEAT_MS": "200", "DROVER_PEER_TIMEOUT_MS": "3000",
        "DROVER_RECONNECT_MS": "300"}

LONG_SPEC = """
name: long
target: attached
nodes: 2
rejoin_timeout: 0
model: {type: mlp, hidden: [64]}
data:
  format: synthetic
  synthetic: {train_samples: 20000, test_samples: 1000, features: 64, classes: 4, seed: 3}
train:
  epochs: 1000
  global_batch: 32
  optimizer: {type: sgd, lr: 0.05}
run_dir: %s
"""


def wait_progress(c, sub, job):
    deadline = time.time() + 60
    while time.time() < deadline:
        if sub.poll(500):
            _, frame = sub.recv_multipart()
            from harness import unpack
            m = unpack(frame)
            if m[1] == "ev_progress" and m[2]["job"] == job and m[2]["step"] > 5:
                return
    raise AssertionError("no progress from job %d:\n%s" % (job, c.all_logs()))


def long_job_running(c):
    """A coordinator, agents a1 and a2, and LONG_SPEC running on them (progress seen).
    Returns the event subscription and the job id."""
    c.start_coordinator()
    c.start_agent("a1")
    c.start_agent("a2")
    c.wait_agents(2)
    sub = c.subscribe()
    job = c.request("submit", {"spec": LONG_SPEC % c.runs})[2]["job"]
    wait_progress(c, sub, job)
    return sub, job


def agent_states(c):
    return {a["agent_id"]: a for a in c.request("agents", {})[2]["agents"]}


def worker_pids(c, run_dir):
    """pids of this job's worker processes still alive."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        if b"worker" in cmd and run_dir.encode() in cmd:
            pids.append(int(pid))
    return pids


def run_and_lose_agent(drover, sig):
    """Starts a 2-agent job, hits agent a1 with `sig`, and checks the job fails and a2 is
    released. Returns (seconds to failure, reason)."""
    c = Cluster(drover, env=FAST)
    try:
        sub, job = long_job_running(c)
        run_dir = c.run_dir(job)
        assert len(worker_pids(c, run_dir)) == 2
        assert agent_states(c)["a1"]["state"] == "busy"
        t0 = time.time()
        os.kill(c.agents["a1"].pid, sig)
        final, _ = c.follow(sub, job, timeout=30)
        took = time.time() - t0
        assert final["state"] == "failed", final
        # The survivor is released: idle, its worker gone.
        wait_for(lambda: agent_states(c).get("a2", {}).get("state") == "idle", 10, "a2 idle")
        wait_for(lambda: all(p == c.agents["a1"].pid or not os.path.exists("/proc/%d" % p)
                             or open("/proc/%d/stat" % p).read().split()[2] in "ZT"
                             for p in worker_pids(c, run_dir)), 10, "workers gone")
        wait_for(lambda: "a1" not in agent_states(c), 10, "a1 dropped from the registry")
        st = json.loads(c.drover_cli("status", str(job), "--json").stdout)[0]
        assert st["status"] == "failed" and st["reason"] == final["reason"], st
        return took, final["reason"]
    except Exception:
        print(c.all_logs())
        raise
    finally:
        if sig == signal.SIGSTOP:
            os.kill(c.agents["a1"].pid, signal.SIGCONT)
        c.close()


def test_silent_agent_fails_job_with_reason(drover):
    # A stopped agent stops heartbeating while its worker keeps going: only the
    # coordinator's heartbeat timeout can tell.
    took, reason = run_and_lose_agent(drover, signal.SIGSTOP)
    print("silent agent: job failed after %.2f s: %s" % (took, reason))
    assert "agent a1" in reason and "silent for" in reason, reason
    assert took < 3.0 + 5.0, took


def test_killed_agent_fails_job_within_seconds(drover):
    # A killed agent takes its worker with it: the peer sees the ring break at once.
    took, reason = run_and_lose_agent(drover, signal.SIGKILL)
    print("killed agent: job failed after %.2f s: %s" % (took, reason))
    assert "rank" in reason, reason
    assert took < 3.0 + 5.0, took


def test_cancel_running_job(drover):
    with cluster(drover, env=FAST) as c:
        sub, job = long_job_running(c)
        r = c.drover_cli("cancel", str(job))
        assert r.returncode == 0, r.stderr
        final, _ = c.follow(sub, job, timeout=20)
        assert final["state"] == "cancelled", final
        wait_for(lambda: all(a["state"] == "idle" for a in agent_states(c).values()), 10,
                 "agents idle after cancel")
        again = c.drover_cli("cancel", str(job))
        assert again.returncode != 0 and "already cancelled" in again.stderr, again.stderr
        missing = c.drover_cli("cancel", "9999")
        assert missing.returncode != 0 and "no such job" in missing.stderr, missing.stderr


def test_coordinator_restart(drover):
    with cluster(drover, env=FAST) as c:
        sub, job = long_job_running(c)
        sub.close()
        run_dir = c.run_dir(job)
        old_workers = worker_pids(c, run_dir)
        assert len(old_workers) == 2
        c.stop_coordinator(signal.SIGKILL)
        c.start_coordinator()
        # Agents notice and register again by themselves; their old workers are stopped.
        agents = wait_for(lambda: len(agent_states(c)) == 2 and agent_states(c), 15,
                          "agents to re-register")
        # Each agent is registered once, however many hellos it sent while the
        # coordinator was away.
        time.sleep(1.0)
        listed = c.request("agents", {})[2]["agents"]
        assert sorted(a["agent_id"] for a in listed) == ["a1", "a2"], listed
        wait_for(lambda: not set(old_workers) & set(worker_pids(c, run_dir)), 10,
                 "old workers gone")
        # The job the old coordinator ran is queued again and placed on the agents anew
        # (it had no checkpoint: it starts over).
        st = wait_for(lambda: (lambda j: j["state"] == "running" and j)(
            c.request("status", {"job": job})[2]["jobs"][0]), 15, "the job to run again")
        assert "job %d (long) reloaded" % job in c.log("coordinator.log")
        assert c.request("cancel", {"job": job})[1] == "ok"
        wait_for(lambda: all(a["state"] == "idle" for a in agent_states(c).values()), 10,
                 "agents idle after cancel")
        # And the new coordinator runs a new job on them.
        short = LONG_SPEC.replace("epochs: 1000", "epochs: 1") % c.runs
        sub = c.subscribe()
        job2 = c.request("submit", {"spec": short})[2]["job"]
        assert job2 > job
        final, _ = c.follow(sub, job2, timeout=120)
        assert final["state"] == "succeeded", final
        assert sorted(agents) == ["a1", "a2"]


def test_bad_dataset_fails_with_named_file(drover):
    c = Cluster(drover, env=FAST)
    try:
        c.start_coordinator()
        c.start_agent("a1")
        c.wait_agents(1)
        bad = os.path.join(c.tmp, "broken-images.idx")
        with open(bad, "wb") as f:
            f.write(b"\x00\x00\x08\x03\x00\x00\x00\x10")  # truncated header
        spec = """
name: broken
target: attached
nodes: 1
model: {type: mlp, hidden: [8]}
data:
  format: idx
  train: {images: %s, labels: %s}
  test: {images: %s, labels: %s}
train: {epochs: 1, global_batch: 8, optimizer: {type: sgd, lr: 0.1}}
run_dir: %s
""" % (bad, bad, bad, bad, c.runs)
        sub = c.subscribe()
        job = c.request("submit", {"spec": spec})[2]["job"]
        final, _ = c.follow(sub, job, timeout=30)
        assert final["state"] == "failed", final
        assert "broken-images.idx" in final["reason"], final
        print("bad dataset: %s" % final["reason"])
        wait_for(lambda: agent_states(c)["a1"]["state"] == "idle", 10, "agent idle")
    except Exception:
        print(c.all_logs())
        raise
    finally:
        c.close()


def fake_agent(c, name):
    """A hand-made agent on the protocol: registers, answers nothing else."""
    from harness import pack
    s = c.agent_port_socket()
    s.send(pack("hello", {"agent_id": name, "host": "127.0.0.1", "target": "attached",
                          "session": 1, "cpus": 1, "mem_bytes": 1 << 30, "gpus": []}))
    assert s.poll(5000)
    return s


def test_unreachable_agent_is_forgotten_and_job_requeued(drover):
    # An agent whose connection is gone before its heartbeat timeout: the assign cannot be
    # delivered, so it is forgotten and the job waits for (and then runs on) a real one.
    with cluster(drover, env=dict(FAST, DROVER_PEER_TIMEOUT_MS="30000")) as c:
        c.start_coordinator()
        ghost = fake_agent(c, "a-ghost")
        assert [a["agent_id"] for a in c.request("agents", {})[2]["agents"]] == ["a-ghost"]
        ghost.close()
        time.sleep(0.5)
        sub = c.subscribe()
        short = LONG_SPEC.replace("epochs: 1000", "epochs: 1").replace("nodes: 2", "nodes: 1")
        job = c.request("submit", {"spec": short % c.runs})[2]["job"]
        wait_for(lambda: "a-ghost" not in agent_states(c), 10, "the ghost to be forgotten")
        assert c.request("status", {"job": job})[2]["jobs"][0]["state"] == "queued"
        c.start_agent("b-real")
        final, _ = c.follow(sub, job, timeout=60)
        assert final["state"] == "succeeded", final


def test_agent_freed_when_its_job_ends_without_a_worker(drover):
    # An agent that takes an assignment but never starts a worker (nor answers kill):
    # the job fails at the rendezvous timeout, and the agent is free again as soon as its
    # heartbeat says it runs no worker.
    from harness import pack, unpack
    with cluster(drover, env=dict(FAST, DROVER_RENDEZVOUS_TIMEOUT_MS="1500")) as c:
        c.start_coordinator()
        mute = fake_agent(c, "a-mute")
        sub = c.subscribe()
        short = LONG_SPEC.replace("nodes: 2", "nodes: 1")
        job = c.request("submit", {"spec": short % c.runs})[2]["job"]
        final, _ = c.follow(sub, job, timeout=20)
        assert final["state"] == "failed" and "did not check in" in final["reason"], final
        assert agent_states(c)["a-mute"]["state"] == "busy"
        seen = set()
        deadline = time.time() + 10
        while time.time() < deadline and agent_states(c)["a-mute"]["state"] != "idle":
            while mute.poll(0):
                seen.add(unpack(mute.recv())[1])
            mute.send(pack("heartbeat", {"seq": 1, "workers": 0}))
            time.sleep(0.2)
        assert agent_states(c)["a-mute"]["state"] == "idle", agent_states(c)
        assert {"welcome", "assign", "kill"} <= seen, seen
        mute.close()


def test_submit_asks_again_while_the_coordinator_is_slow(drover):
    # The coordinator records a submission but answers it after the client gave up (a
    # slow disk): `drover submit` asks again with the same token and gets the job the first
    # request made; one job, not two.
    with cluster(drover, env=dict(FAST, DROVER_CLIENT_TIMEOUT_MS="1000")) as c:
        c.start_coordinator(env={"DROVER_FAULT_SLOW_SUBMIT_MS": "1500"})
        spec = os.path.join(c.tmp, "late.yaml")
        with open(spec, "w") as f:
            f.write((LONG_SPEC % c.runs).replace("name: long", "name: late"))
        r = c.drover_cli("submit", spec, "--detach", "--json", timeout=60)
        assert r.returncode == 0, r.stderr
        assert "asking again" in r.stderr, r.stderr
        job = json.loads(r.stdout.splitlines()[-1])["job"]
        jobs = c.request("status", {"limit": 100})[2]["jobs"]
        assert [j["id"] for j in jobs] == [job], jobs
        assert "its submission came again" in c.log("coordinator.log"), c.log("coordinator.log")


def test_second_coordinator_on_a_state_dir_is_refused(drover):
    with cluster(drover, env=FAST) as c:
        c.start_coordinator()
        c.start_agent("a1")
        c.wait_agents(1)
        sub = c.subscribe()
        job = c.request("submit", {"spec": LONG_SPEC.replace("nodes: 2", "nodes: 1") % c.runs})[2]["job"]
        wait_progress(c, sub, job)
        other = c.drover_cli("coordinator", "--bind", "tcp://127.0.0.1:%d" % (c.base + 10),
                             "--state-dir", c.state, timeout=20)
        assert other.returncode != 0 and "another coordinator" in other.stderr, other.stderr
        assert c.request("status", {"job": job})[2]["jobs"][0]["state"] == "running"


if __name__ == "__main__":
    main([test_silent_agent_fails_job_with_reason, test_killed_agent_fails_job_within_seconds, test_cancel_running_job,
          test_coordinator_restart, test_bad_dataset_fails_with_named_file,
          test_unreachable_agent_is_forgotten_and_job_requeued,
          test_agent_freed_when_its_job_ends_without_a_worker,
          test_submit_asks_again_while_the_coordinator_is_slow,
          test_second_coordinator_on_a_state_dir_is_refused])
