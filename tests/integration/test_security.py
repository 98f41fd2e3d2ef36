"""The audit's attacks on authentication, run against real processes on loopback; each
must now fail while the coordinator, the agents and the victim's job carry on.

  1. no authentication: strangers list, read, cancel; a fake agent wins placement; forged
     worker messages (done, failed, progress, eval, checkpoint, lost) finish a job
  1. a peer that names an existing agent's routing id takes its connection over
  1. a key admitted as one agent registers as another
  2. a forged rendezvous is relayed in `start`
  3. agents obey a fake coordinator
  5. an anonymous peer aborts the coordinator: stall it, fill a connection past the
     high-water mark, reset it; and a second agent with an id in use, then stopped
  ownership: a second user reads, cancels or resumes the first one's job
"""
import os
import signal
import socket
import struct
import subprocess
import time

import zmq

from harness import cluster, curve, load_key, main, pack, unpack, wait_for

# Steps slowed to 2 ms, so that the victim job is still training while it is attacked.
FAST = {"DROVER_HEARTBEAT_MS": "200", "DROVER_PEER_TIMEOUT_MS": "3000",
        "DROVER_RECONNECT_MS": "300", "DROVER_FAULT_SLOW_MS": "2"}

SPEC = """
name: victim
target: attached
nodes: 2
model: {type: mlp, hidden: [64]}
data:
  format: synthetic
  synthetic: {train_samples: 4000, test_samples: 1000, features: 64, classes: 4, seed: 3}
train:
  epochs: %d
  global_batch: 32
  optimizer: {type: sgd, lr: 0.05}
run_dir: %s
"""


def stranger_keys():
    pub, sec = zmq.curve_keypair()
    return {"public-key": pub.decode(), "secret-key": sec.decode()}


def no_answer(s, frame, ms=1500):
    """Sends frame on s; True when nothing came back within ms."""
    s.send(frame)
    got = s.poll(ms)
    s.close()
    return not got


def add_key(c, role, name):
    """`drover keys add ROLE NAME`: the join file's contents, as a dict, and its path."""
    r = c.drover_cli("keys", "add", role, name, "--state-dir", c.state)
    assert r.returncode == 0, r.stderr
    path = os.path.join(c.tmp, "%s-%s.join" % (role, name.replace("*", "x")))
    with open(path, "w") as f:
        f.write(r.stdout)
    os.chmod(path, 0o600)
    return load_key(path), path


def running_job(c, epochs=30):
    """A coordinator, agents a1 and a2 and a victim job with progress seen; (sub, job, gen)."""
    c.start_coordinator()
    c.start_agent("a1")
    c.start_agent("a2")
    c.wait_agents(2)
    sub = c.subscribe()
    job = c.request("submit", {"spec": SPEC % (epochs, c.runs)})[2]["job"]
    deadline = time.time() + 60
    while time.time() < deadline:
        if sub.poll(500):
            m = unpack(sub.recv_multipart()[1])
            if m[1] == "ev_progress" and m[2]["job"] == job and m[2]["step"] > 3:
                return sub, job, m[2]["generation"]
    raise AssertionError("no progress")


def assert_trained(c, sub, job, epochs):
    final, events = c.follow(sub, job, timeout=240)
    assert final["state"] == "succeeded", final
    st = c.request("status", {"job": job})[2]["jobs"][0]
    steps = epochs * (4000 // 32)
    assert st["step"] == steps, (st["step"], steps)
    assert final["test_accuracy"] > 0.6, final
    return final


def test_strangers_get_nothing(drover):
    with cluster(drover, env=FAST) as c:
        sub, job, gen = running_job(c, epochs=12)
        stranger = stranger_keys()
        # No answer to a key the allow-list lacks, nor to plaintext, on the client port.
        for req in (pack("agents", {}), pack("get_spec", {"job": job}), pack("cancel", {"job": job}),
                    pack("status", {})):
            assert no_answer(c.client_socket(keys=stranger), req), req
            assert no_answer(c.client_socket(own=None), req), req
        # An agent's key is not a user's: no answer on the client port either.
        assert no_answer(c.client_socket(own="agent.secret"), pack("agents", {}))
        # A stranger's subscription sees no events.
        spy = c.subscribe(keys=stranger)
        assert not spy.poll(1500), "a stranger read the events"
        spy.close()
        # A fake agent whose id sorts first, with a stranger's key, never registers.
        fake = c.agent_port_socket(keys=stranger)
        fake.send(pack("hello", {"agent_id": "0-first", "host": "127.0.0.1", "target": "attached",
                                 "session": 1, "cpus": 64, "mem_bytes": 1 << 40, "gpus": []}))
        assert not fake.poll(1000)
        fake.close()
        assert sorted(a["agent_id"] for a in c.request("agents", {})[2]["agents"]) == ["a1", "a2"]
        # The refusals are in the coordinator's log, naming the port and the address.
        assert "refused a connection to the clients port from 127.0.0.1" in c.log("coordinator.log")
        assert_trained(c, sub, job, 12)
        assert c.coord.poll() is None


def test_forged_worker_messages_are_refused(drover):
    # An insider with an agent's key (not the worker's) forges every worker message for the
    # victim's job, with the generation ev_progress publishes; the job trains to the end.
    with cluster(drover, env=FAST) as c:
        sub, job, gen = running_job(c, epochs=12)
        f = c.agent_port_socket()
        for rank in (0, 1):
            f.send(pack("rendezvous", {"job": job, "generation": gen, "rank": rank, "pid": 1,
                                       "addr": "127.0.0.1:9"}))
            f.send(pack("progress", {"job": job, "generation": gen, "rank": rank, "epoch": 0,
                                     "step": 10 ** 6, "steps_total": 10 ** 6, "loss": 1e9,
                                     "samples": 1, "interval_s": 1.0, "step_ms": 1.0}))
            f.send(pack("lost", {"job": job, "generation": gen, "rank": rank, "step": 0,
                                 "reason": "forged"}))
            f.send(pack("done", {"job": job, "generation": gen, "rank": rank, "steps": 1,
                                 "test_loss": 0.0, "test_accuracy": 1.0, "samples_per_s": 1.0,
                                 "train_s": 1.0}))
        f.send(pack("eval", {"job": job, "generation": gen, "epoch": 99, "test_loss": 0.0,
                             "test_accuracy": 1.0}))
        f.send(pack("checkpoint", {"job": job, "generation": gen, "step": 10 ** 6, "dir": "/"}))
        f.send(pack("failed", {"job": job, "generation": gen, "rank": 0, "reason": "forged"}))
        time.sleep(1.0)
        f.close()
        st = c.request("status", {"job": job})[2]["jobs"][0]
        assert st["state"] == "running", st
        assert st["ckpt_step"] != 10 ** 6, st
        final = assert_trained(c, sub, job, 12)
        assert final["test_accuracy"] < 1.0, final  # the real one, not the forged 1.0
        log = c.log("coordinator.log")
        for what in ("rendezvous", "progress", "lost", "done", "eval", "checkpoint", "failed"):
            assert "%s for job %d rank" % (what, job) in log and "refused: sent by agent:" in log, what
        assert c.coord.poll() is None


def test_agent_ids_are_bound_to_keys(drover):
    with cluster(drover, env=FAST) as c:
        c.start_coordinator()
        c.start_agent("a1")
        c.wait_agents(1)
        keys, path = add_key(c, "agent", "n1")
        # A key admitted as n1 registering as a0 (which sorts first) is refused.
        s = c.agent_port_socket(keys=keys)
        s.send(pack("hello", {"agent_id": "a0", "host": "127.0.0.1", "target": "attached",
                              "session": 1, "cpus": 1, "mem_bytes": 1 << 30, "gpus": []}))
        assert s.poll(5000)
        m = unpack(s.recv())
        assert m[1] == "error" and m[2]["code"] == "forbidden", m
        s.close()
        # As n1 it may: a real agent with the join file registers and runs a job.
        a = c._spawn(["agent", "--join", path, "--id", "n1", "--host", "127.0.0.1"], "agent-n1.log")
        c.wait_agents(2)
        # A peer naming a1's old routing id, with the local agents' key, says `bye` for it:
        # nothing happens to a1 (routing ids are the coordinator's, not the peer's).
        t = c.ctx.socket(zmq.DEALER)
        t.setsockopt(zmq.LINGER, 0)
        t.setsockopt(zmq.ROUTING_ID, b"a1")
        curve(t, c.key("agent.secret"), c.server_key())
        t.connect(c.endpoint)
        t.send(pack("bye", {"reason": "hijacked"}))
        t.send(pack("leave", {"reason": "hijacked"}))
        time.sleep(1.0)
        t.close()
        ids = sorted(x["agent_id"] for x in c.request("agents", {})[2]["agents"])
        assert ids == ["a1", "n1"], ids
        # A second agent with an id in use is refused while the first lives; stopping it
        # harms nobody (this crashed the coordinator with ZMTP heartbeats on).
        dup = c._spawn(["agent", "--id", "a1", "--host", "127.0.0.1"], "agent-dup.log")
        wait_for(lambda: "a live agent of that id is registered" in c.log("coordinator.log"), 10,
                 "the duplicate to be refused")
        dup.send_signal(signal.SIGTERM)
        dup.wait(timeout=20)
        sub = c.subscribe()
        job = c.request("submit", {"spec": SPEC % (2, c.runs)})[2]["job"]
        assert_trained(c, sub, job, 2)
        assert c.coord.poll() is None
        a.send_signal(signal.SIGTERM)


def test_agents_ignore_a_fake_coordinator(drover):
    # A fake coordinator (its own keys, or plaintext) on the port an agent dials: the agent
    # pins the real coordinator's key, so its handshake fails and nothing crosses.
    with cluster(drover, env=FAST) as c:
        c.start_coordinator()  # makes the state directory's keys; then it steps aside
        c.stop_coordinator()
        ctx = zmq.Context()
        for mode in ("curve", "plain"):
            fake = ctx.socket(zmq.ROUTER)
            fake.setsockopt(zmq.LINGER, 0)
            if mode == "curve":
                pub, sec = zmq.curve_keypair()
                fake.curve_server = True
                fake.curve_secretkey = sec
            # The previous socket's close is finished by libzmq's I/O thread: retry briefly.
            for attempt in range(40):
                try:
                    fake.bind(c.endpoint)
                    break
                except zmq.error.ZMQError:
                    if attempt == 39:
                        raise
                    time.sleep(0.05)
            a = c.start_agent("victim-" + mode)
            got = fake.poll(3000)
            if got:
                frames = fake.recv_multipart()
                # Even if a frame came, it cannot be an assignment's answer: send one.
                fake.send_multipart([frames[0], pack("assign", {"job": 1, "generation": 1,
                    "rank": 0, "world": 1, "local_rank": 0, "device": -1,
                    "spec": SPEC % (1, "/tmp/evil"), "run_dir": "/tmp/evil-fake",
                    "coordinator": c.endpoint})])
                time.sleep(1)
            fake.close()
            assert not got, "the agent talked to a fake coordinator (%s)" % mode
            assert not os.path.exists("/tmp/evil-fake")
            assert a.poll() is None, "the agent died"
            a.send_signal(signal.SIGTERM)
            a.wait(timeout=20)
        ctx.term()


def reset_connection(sock):
    """Closes a TCP socket with a reset (SO_LINGER 0)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_stalled_flooded_reset_coordinator_lives(drover):
    # libzmq 4.3.4 asserted (stream_engine_base.cpp:331) when a ZMTP heartbeat timeout reset
    # a connection stalled at the high-water mark. Stall the coordinator, flood it from an
    # anonymous TCP peer and from an authenticated client that never reads, reset both.
    with cluster(drover, env=dict(FAST, DROVER_HWM="100")) as c:
        sub, job, gen = running_job(c, epochs=15)
        for round_ in range(3):
            c.coord.send_signal(signal.SIGSTOP)
            time.sleep(0.2)
            try:
                raw = socket.create_connection(("127.0.0.1", c.base + 1))
                raw.setblocking(False)
                junk = b"\xff" * 65536
                try:
                    for _ in range(64):
                        raw.send(junk)
                except (BlockingIOError, ConnectionResetError, BrokenPipeError):
                    pass  # full, or already refused: the flood is what it could be
                # An authenticated client in a child process that floods and never reads:
                # killed with unread data, its kernel resets the connection.
                flood = subprocess.Popen([
                    "/usr/bin/python3", "-c",
                    "import sys, zmq, time\n"
                    "sys.path.insert(0, %r)\n"
                    "from harness import curve, load_key, pack\n"
                    "s = zmq.Context().socket(zmq.DEALER)\n"
                    "curve(s, load_key(%r), %r)\n"
                    "s.setsockopt(zmq.SNDHWM, 100000)\n"
                    "s.connect('tcp://127.0.0.1:%d')\n"
                    "m = pack('status', {'limit': 1000})\n"
                    "for i in range(20000): s.send(m, zmq.NOBLOCK)\n"
                    "time.sleep(30)\n" % (os.path.dirname(os.path.abspath(__file__)),
                                          os.path.join(c.state, "keys", "admin.secret"),
                                          c.server_key(), c.base + 1)])
                time.sleep(1.0)
            finally:
                c.coord.send_signal(signal.SIGCONT)
            time.sleep(1.5)  # it answers the flood; the flooder reads nothing
            flood.kill()
            flood.wait()
            try:
                reset_connection(raw)
            except OSError:
                pass
            time.sleep(0.5)
            assert c.coord.poll() is None, "round %d: the coordinator died:\n%s" % (
                round_, c.log("coordinator.log"))
            assert c.request("status", {"job": job})[1] == "jobs"
        assert_trained(c, sub, job, 15)


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_connection_flood_is_bounded(drover):
    # 2000 idle TCP connections to the client port of a coordinator whose open-file limit
    # is 1024 (soft and hard): before, its loop spun at 100 % CPU on EMFILE. Now one
    # address may hold DROVER_MAX_CONN_PER_ADDR (here 100) per port; the rest are ended at
    # once, the coordinator answers when the flood is gone, and the victim job goes on.
    env = dict(FAST, DROVER_MAX_CONN_PER_ADDR="100")
    with cluster(drover, env=FAST) as c:
        c.start_coordinator(env=env, wrap=["prlimit", "--nofile=1024:1024", "--"])
        c.start_agent("a1")
        c.start_agent("a2")
        c.wait_agents(2)
        sub = c.subscribe()
        job = c.request("submit", {"spec": SPEC % (20, c.runs)})[2]["job"]
        flood = []
        for _ in range(2000):
            try:
                s = socket.create_connection(("127.0.0.1", c.base + 1), timeout=2)
                s.setblocking(False)
                flood.append(s)
            except OSError:
                break
        t0, before = time.time(), cpu_seconds(c.coord.pid)
        ended = set()
        # Those beyond its open-file limit wait in the kernel's backlog until fds free up:
        # they are accepted, and ended, as the earlier ones are.
        while len(flood) - len(ended) > 100 and time.time() - t0 < 60:
            for i, s in enumerate(flood):
                if i in ended:
                    continue
                try:
                    if s.recv(1) == b"":
                        ended.add(i)
                except BlockingIOError:
                    pass
                except OSError:
                    ended.add(i)
            time.sleep(0.2)
        spent, took = cpu_seconds(c.coord.pid) - before, time.time() - t0
        print("flood: %d connections made, %d ended by the coordinator within %.1f s, using "
              "%.2f s of CPU meanwhile" % (len(flood), len(ended), took, spent))
        assert len(flood) - len(ended) <= 100, (len(flood), len(ended))
        assert "ended a connection from 127.0.0.1" in c.log("coordinator.log")
        for s in flood:
            s.close()
        time.sleep(1.0)
        assert c.coord.poll() is None
        assert c.request("status", {"job": job}, timeout=10)[1] == "jobs"
        assert_trained(c, sub, job, 20)


def test_one_user_cannot_fill_the_queue(drover):
    # Before: 1024 queued jobs in 1 s, then `busy` for everyone; 254 fake agents filled the
    # registry. Now a user has DROVER_MAX_QUEUED_PER_USER active jobs at most (here 5) and
    # others still submit; keys the allow-list lacks register no agent, however many.
    with cluster(drover, env=dict(FAST, DROVER_MAX_QUEUED_PER_USER="5")) as c:
        sub, job, gen = running_job(c, epochs=20)
        bob, _ = add_key(c, "user", "bob")
        codes = []
        for _ in range(8):
            r = c.request("submit", {"spec": SPEC % (1, c.runs)}, keys=bob)
            codes.append(r[1] if r[1] != "error" else r[2]["code"])
        assert codes == ["submitted"] * 5 + ["quota"] * 3, codes
        r = c.request("submit", {"spec": SPEC % (1, c.runs)}, keys=bob)
        assert "bob has 5 active jobs" in r[2]["message"], r
        mine = c.request("submit", {"spec": SPEC % (1, c.runs)})  # the admin: 2 of 5
        assert mine[1] == "submitted", mine
        for _ in range(300):
            fake = c.agent_port_socket(keys=stranger_keys())
            fake.send(pack("hello", {"agent_id": "fake", "host": "127.0.0.1", "target": "attached",
                                     "session": 1, "cpus": 1, "mem_bytes": 1, "gpus": []}))
            fake.close()
        time.sleep(1.0)
        assert sorted(a["agent_id"] for a in c.request("agents", {})[2]["agents"]) == ["a1", "a2"]
        assert_trained(c, sub, job, 20)


def test_plaintext_only_when_asked(drover):
    # An agent that asks for plaintext cannot join a secure coordinator; a cluster that is
    # plaintext throughout (--insecure) runs jobs, and every process says so in its log.
    with cluster(drover, env=FAST) as c:
        c.start_coordinator()
        a = c._spawn(["agent", "--insecure", "--id", "plain", "--host", "127.0.0.1"],
                     "agent-plain.log")
        time.sleep(2.0)
        assert c.request("agents", {})[2]["agents"] == []
        a.send_signal(signal.SIGTERM)
        a.wait(timeout=20)
        c.stop_coordinator()
    with cluster(drover, env=dict(FAST, DROVER_INSECURE="1")) as c:
        c.start_coordinator()
        c.start_agent("a1")
        c.start_agent("a2")
        c.wait_agents(2)
        r = c.request("agents", {}, own=None)  # a plaintext client: believed
        assert len(r[2]["agents"]) == 2, r
        sub = c.subscribe(own=None)
        job = c.request("submit", {"spec": SPEC % (2, c.runs)}, own=None)[2]["job"]
        final, _ = c.follow(sub, job, timeout=120)
        assert final["state"] == "succeeded", final
        for log in ("coordinator.log", "agent-a1.log"):
            assert "PLAINTEXT: no CurveZMQ" in c.log(log), log


def test_owners_and_admins(drover):
    with cluster(drover, env=FAST) as c:
        sub, job, gen = running_job(c, epochs=6)
        bob, bob_path = add_key(c, "user", "bob")
        me = c.request("status", {"job": job})[2]["jobs"][0]["owner"]
        assert me, "the job has no owner"
        # Bob sees the job and its owner, but may not read its spec, cancel or resume it.
        st = c.request("status", {"job": job}, keys=bob)[2]["jobs"][0]
        assert st["owner"] == me and st["state"] == "running", st
        for mtype, body in (("get_spec", {"job": job}), ("cancel", {"job": job})):
            r = c.request(mtype, body, keys=bob)
            assert r[1] == "error" and r[2]["code"] == "forbidden", r
            assert "belongs to %s" % me in r[2]["message"], r
        # Bob's own job is his: he cancels it; the admin (the state directory's owner) may too.
        r = c.request("submit", {"spec": SPEC % (50, c.runs)}, keys=bob)
        assert r[1] == "submitted", r
        bobs = r[2]["job"]
        assert c.request("status", {"job": bobs})[2]["jobs"][0]["owner"] == "bob"
        assert c.request("get_spec", {"job": bobs}, keys=bob)[1] == "spec"
        assert c.request("cancel", {"job": bobs}, keys=bob)[1] == "ok"
        # The CLI, with bob's join file: status shows the OWNER column; cancel is refused.
        env = dict(c.env, DROVER_JOIN=bob_path)
        del env["DROVER_STATE_DIR"]
        r = subprocess.run([c.drover, "status"], capture_output=True, text=True, env=env, timeout=30)
        assert r.returncode == 0 and "OWNER" in r.stdout and "bob" in r.stdout, r
        r = subprocess.run([c.drover, "cancel", str(job)], capture_output=True, text=True,
                           env=env, timeout=30)
        assert r.returncode != 0 and "belongs to" in r.stderr, r
        assert_trained(c, sub, job, 6)
        # A user may not jump the queue: above DROVER_MAX_USER_PRIORITY (0) is an admin's.
        r = c.request("submit", {"spec": SPEC % (1, c.runs) + "priority: 9\n"}, keys=bob)
        assert r[1] == "error" and r[2]["code"] == "forbidden" and "priority 9" in r[2]["message"], r
        r = c.request("submit", {"spec": SPEC % (1, c.runs) + "priority: 9\n"})
        assert r[1] == "submitted", r
        c.request("cancel", {"job": r[2]["job"]})
        # A submission token names the submitter's own job only: bob replaying the admin's
        # token learns nothing of it.
        r = c.request("submit", {"spec": SPEC % (1, c.runs), "token": "t-admin"})
        assert r[1] == "submitted", r
        r2 = c.request("submit", {"spec": SPEC % (1, c.runs), "token": "t-admin"}, keys=bob)
        assert r2[1] == "error" and "another submission's" in r2[2]["message"], r2
        c.request("cancel", {"job": r[2]["job"]})
        # Resume is the owner's too.
        r = c.request("submit", {"spec": "", "resume": job}, keys=bob)
        assert r[1] == "error" and "only its owner or an admin" in r[2]["message"], r
        # A revoked key is refused from its next connection.
        r = c.drover_cli("keys", "remove", "bob", "--state-dir", c.state)
        assert r.returncode == 0, r.stderr
        assert no_answer(c.client_socket(keys=bob), pack("status", {}))


if __name__ == "__main__":
    main([test_strangers_get_nothing, test_forged_worker_messages_are_refused,
          test_agent_ids_are_bound_to_keys, test_agents_ignore_a_fake_coordinator,
          test_stalled_flooded_reset_coordinator_lives, test_connection_flood_is_bounded,
          test_one_user_cannot_fill_the_queue, test_plaintext_only_when_asked,
          test_owners_and_admins])
