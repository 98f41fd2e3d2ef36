"""Hostile messages against a live cluster: each attack fails, and the coordinator, its agents
and a victim's job running meanwhile carry on, the job ending with the very result it has
without the attack (training is deterministic: same test accuracy and loss, bit for bit).

  (a) job specs that libyaml's scanner takes quadratic time in ([[[...]]] nesting), in
      the coordinator and in `drover submit`;
  (b) a flood of frames of 524286 junk keys to the agent port, and to the client port;
  (c) specs that ask for too much (a 35 GB model, 2^32-1 epochs, ...), 50 submissions of a
      900 KB run_dir, and the history of finished jobs, pruned by age;
  (d) 2000 idle connections at an open-file limit of 1024;
  (e) strings that are not UTF-8, which the coordinator used to store and echo.

The attacker speaks through the harness (hand-built frames on Cluster.client_socket() and
Cluster.agent_port_socket()), as docs/protocol.md describes the wire, no more.
"""
import os
import resource
import socket
import sqlite3
import struct
import time

import msgpack

from harness import cluster, main, pack, unpack

# The victim: a small job made slow (DROVER_FAULT_SLOW_MS on its agents) so that it runs
# for the whole of each attack.
VICTIM_SPEC = """
name: victim
target: attached
nodes: 2
model: {type: mlp, hidden: [32], activation: gelu}
data:
  format: synthetic
  synthetic: {train_samples: 4000, test_samples: 1000, features: 20, classes: 4, seed: 3}
train:
  epochs: 3
  global_batch: 64
  seed: 1
  optimizer: {type: adamw, lr: 0.01, weight_decay: 0.01}
run_dir: %s
"""
SLOW = {"DROVER_FAULT_SLOW_MS": "60"}
REFERENCE = {}  # the victim's result without any attack: test_accuracy, test_loss


def start_victim(c, env=None):
    """Two agents and the victim's job, returned once it is training: (job, events sub).
    `env` adds to the coordinator's environment."""
    c.start_coordinator(env=env)
    c.start_agent("v1", env=SLOW)
    c.start_agent("v2", env=SLOW)
    c.wait_agents(2)
    sub = c.subscribe()
    reply = c.request("submit", {"spec": VICTIM_SPEC % c.runs})
    assert reply[1] == "submitted", reply
    job = reply[2]["job"]
    deadline = time.time() + 60
    while time.time() < deadline:
        st = c.request("status", {"job": job})[2]["jobs"][0]
        if st["state"] == "running" and st["step"] > 0:
            return job, sub
        time.sleep(0.1)
    raise AssertionError("the victim job did not start training")


def full_log(c, name):
    """The whole of a process's log (Cluster.log keeps only its end)."""
    try:
        with open(os.path.join(c.tmp, name), "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def still_running(c, job):
    """The victim job is still training when an attack ends (so the attack overlapped it)."""
    st = c.request("status", {"job": job}, timeout=10)[2]["jobs"][0]
    if st["state"] == "succeeded":
        raise AssertionError("the attack outlasted the victim job; make the job longer")
    assert st["state"] == "running", ("the victim job did not carry on", st["state"], st["reason"])


def victim_carried_on(c, job, sub):
    """The victim job ends as it does unattacked, in one world (no agent lost, no
    re-formation), and every process is still up and registered."""
    events, final = [], None
    deadline = time.time() + 300
    while final is None and time.time() < deadline:
        if not sub.poll(500):
            st = c.request("status", {"job": job})[2]["jobs"][0]
            if st["state"] in ("succeeded", "failed", "cancelled"):
                final = st
            continue
        msg = unpack(sub.recv_multipart()[1])
        if msg[2].get("job") != job:  # job/1 also matches job/12, and other jobs come too
            continue
        events.append(msg)
        if msg[1] == "ev_state" and msg[2]["state"] in ("succeeded", "failed", "cancelled"):
            final = msg[2]
    assert final is not None, "the victim job did not finish"
    assert final["state"] == "succeeded", (final, c.all_logs())
    gens = {e[2]["generation"] for e in events if e[1] == "ev_progress"}
    assert gens <= {1}, ("the victim's world was re-formed", gens)
    st = c.request("status", {"job": job})[2]["jobs"][0]
    got = {"test_accuracy": st["test_accuracy"], "test_loss": st["test_loss"]}
    if REFERENCE:
        assert got == REFERENCE, ("the victim's result changed", got, REFERENCE)
    assert c.coord.poll() is None, "the coordinator died"
    for name, p in c.agents.items():
        assert p.poll() is None, "agent %s died" % name
    log = full_log(c, "coordinator.log")
    assert "silent for" not in log, "an agent went silent:\n" + c.log("coordinator.log")
    for name in c.agents:
        alog = full_log(c, "agent-%s.log" % name)
        assert "coordinator silent" not in alog, "agent %s lost the coordinator:\n%s" % (name, alog)
    ids = sorted(a["agent_id"] for a in c.request("agents", {})[2]["agents"])
    assert ids == sorted(c.agents), ids
    return got


def expect_refusal(c, body, *needles, timeout=10.0):
    """A submit answered with an error that says each needle, within `timeout` (a liveness
    bound: the point is that it is answered at all, not how fast)."""
    t0 = time.time()
    reply = c.request("submit", body, timeout=timeout)
    took = time.time() - t0
    assert reply[1] == "error", reply
    for n in needles:
        assert n in reply[2]["message"], (n, reply[2]["message"][:300])
    return took


def test_reference(drover):
    """The victim job alone: the result every attacked run must reproduce."""
    with cluster(drover) as c:
        job, sub = start_victim(c)
        REFERENCE.update(victim_carried_on(c, job, sub))
        print("victim, unattacked: test accuracy %.6f, loss %.6f"
              % (REFERENCE["test_accuracy"], REFERENCE["test_loss"]))


def test_spec_nesting(drover):
    """(a) Specs libyaml's scanner is quadratic in are refused at once by the pre-scan,
    naming the limit and the line; before, 200 KB of them held the coordinator over a
    minute."""
    with cluster(drover) as c:
        job, sub = start_victim(c)
        flow200 = "name: " + "[" * 100000 + "]" * 100000 + "\n"
        took = expect_refusal(c, {"spec": flow200}, "200007 bytes", "DROVER_MAX_SPEC_BYTES")
        print("200 KB of nested '[': refused in %.3f s" % took)
        flow60 = "name: t\nmodel: " + "[" * 30000 + "]" * 30000 + "\n"
        took = expect_refusal(c, {"spec": flow60}, "submitted spec:2: nesting deeper than 16 levels")
        print("60 KB of nested '[': refused in %.3f s" % took)
        block = "name: t\nmodel:\n" + "- " * 30000 + "x\n"
        expect_refusal(c, {"spec": block}, "submitted spec:3: nesting deeper than 16 levels")
        maps = "name: t\nmodel: " + "{a: " * 10000 + "1" + "}" * 10000 + "\n"
        expect_refusal(c, {"spec": maps}, "submitted spec:2: nesting deeper than 16")
        # A line the pre-scan takes for a quoted scalar (libyaml reads it as the rest of a
        # plain one) cannot hide nesting: every '[' and '{' counts.
        hidden = "name: a\n  'b\nx: " + "[" * 20000 + "]" * 20000 + "\n"
        expect_refusal(c, {"spec": hidden}, "more than 256 '[' and '{'")
        # drover submit refuses it too, before it talks to anyone.
        path = os.path.join(c.tmp, "nested.yaml")
        with open(path, "w") as f:
            f.write(flow200)
        t0 = time.time()
        r = c.drover_cli("submit", path, timeout=60)
        print("drover submit of the 200 KB spec: exit %d in %.3f s" % (r.returncode, time.time() - t0))
        assert r.returncode == 2 and "DROVER_MAX_SPEC_BYTES" in r.stderr, (r.returncode, r.stderr)
        with open(path, "w") as f:
            f.write(flow60)
        r = c.drover_cli("submit", path, timeout=60)
        assert r.returncode == 2 and "nested.yaml:2: nesting deeper than 16" in r.stderr, r.stderr
        still_running(c, job)
        victim_carried_on(c, job, sub)


def junk_frame(mtype, keys):
    """[1, mtype, {"": nil, ...}] with `keys` entries: 2 bytes each, as cheap to send as a
    map can be."""
    t = mtype.encode()
    return (b"\x93\x01" + bytes([0xa0 | len(t)]) + t + b"\xdf" + struct.pack(">I", keys)
            + b"\xa0\xc0" * keys)


def coordinator_peak_mb(c):
    for line in open("/proc/%d/status" % c.coord.pid):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0


def test_junk_key_flood(drover):
    """(b) Frames of 524286 junk keys, 1 MiB each, to the agent port for longer than the
    agents' timeout, and to the client port: each is refused at its map's header (decoding
    one used to take 56 ms and 26 MB, and 256 of them were read before any timer ran), and
    the victim's agents are heard from all along."""
    with cluster(drover) as c:
        job, sub = start_victim(c)
        frame = junk_frame("heartbeat", 524286)  # with the envelope: 2^20 elements, the old cap
        a = c.agent_port_socket()
        cl = c.client_socket()
        t0 = time.time()
        sent, asked, answered, quiet = 0, 0, 0, 0.0
        # 100 frames a second for 6 s (the peer timeout is 5 s), 200 at once to begin with;
        # every half second the agent registry says when each victim agent was last heard.
        while time.time() - t0 < 6:
            for _ in range(200 if sent == 0 else 50):
                a.send(frame)
                sent += 1
            cl.send(junk_frame("status", 524286))
            asked += 1
            while cl.poll(0):
                reply = unpack(cl.recv())
                assert reply[1] == "error", reply
                assert "map of 524286 keys, more than 64" in reply[2]["message"], reply
                answered += 1
            agents = c.request("agents", {}, timeout=10)[2]["agents"]
            quiet = max([quiet] + [x["last_seen_s"] for x in agents])
            time.sleep(0.5)
        still_running(c, job)
        while answered < asked and cl.poll(30000):
            unpack(cl.recv())
            answered += 1
        cl.close()
        assert answered == asked, "%d of %d junk frames on the client port answered" % (answered, asked)
        # Every frame to the agent port is refused, and the log says why.
        deadline = time.time() + 120
        while time.time() < deadline:
            n = full_log(c, "coordinator.log").count("map of 524286 keys, more than 64")
            if n >= sent + answered:
                break
            time.sleep(0.2)
        a.close()
        print("%d frames of 1 MiB to the agent port, %d to the client port, refused in %.1f s; "
              "victim agents last heard at most %.2f s before; coordinator peak memory %.0f MB"
              % (sent, answered, time.time() - t0, quiet, coordinator_peak_mb(c)))
        assert n >= sent + answered, "only %d of %d junk frames were refused" % (n, sent + answered)
        assert quiet < 5, "a victim agent was not heard from for %.1f s" % quiet  # the peer timeout
        victim_carried_on(c, job, sub)


def test_costly_specs_and_history(drover):
    """(c) Specs that ask for too much are refused naming the key and the limit; 50
    submissions of a 900 KB run_dir add nothing to the store; finished jobs older than
    DROVER_HISTORY_DAYS are forgotten at the next start, newer ones kept."""
    with cluster(drover) as c:
        job, sub = start_victim(c)
        base = VICTIM_SPEC % c.runs
        cases = [
            (base.replace("hidden: [32]", "hidden: [65536, 65536, 65536]"),
             "model.hidden: ", "more than DROVER_MAX_MODEL_BYTES (4294967296)"),
            (base.replace("epochs: 3", "epochs: 4294967295"),
             "train.epochs: 4294967295, more than DROVER_MAX_EPOCHS (10000)"),
            (base.replace("global_batch: 64", "global_batch: 4000000"),
             "train.global_batch: 4000000, more than DROVER_MAX_BATCH (65536)"),
            (base.replace("nodes: 2", "nodes: 100000")
             .replace("global_batch: 64", "global_batch: 100000"),
             "nodes: 100000, more than DROVER_MAX_NODES (256)"),
            (base.replace("train_samples: 4000", "train_samples: 4000000000"),
             "data.synthetic: ", "more than DROVER_MAX_DATA_BYTES"),
            (base.replace("run_dir: /", "run_dir: /" + "r" * 2000 + "/"),
             "run_dir: ", "more than DROVER_MAX_PATH_BYTES (1024)"),
            (base.replace("format: synthetic", "format: idx\n  train: {images: /%s, labels: /l}\n"
                          "  test: {images: /i, labels: /l}" % ("i" * 1500)),
             "data.train.images: 1501 bytes, more than DROVER_MAX_PATH_BYTES"),
        ]
        for spec, *needles in cases:
            expect_refusal(c, {"spec": spec}, *needles)
        # drover submit holds a spec to the same limits before it sends anything.
        path = os.path.join(c.tmp, "forever.yaml")
        with open(path, "w") as f:
            f.write(cases[1][0])
        r = c.drover_cli("submit", path, timeout=60)
        assert r.returncode == 2 and "forever.yaml: train.epochs: 4294967295, more than " \
            "DROVER_MAX_EPOCHS (10000)" in r.stderr, (r.returncode, r.stderr)
        db = os.path.join(c.state, "drover.db")

        def db_bytes():
            return sum(os.path.getsize(db + x) for x in ("", "-wal") if os.path.exists(db + x))
        before = db_bytes()
        big = base.replace("run_dir: /", "run_dir: /" + "d" * 900000 + "/")
        for _ in range(50):
            expect_refusal(c, {"spec": big}, "DROVER_MAX_SPEC_BYTES")
        grown = db_bytes() - before
        print("50 submissions of a 900 KB run_dir: the store grew by %d bytes" % grown)
        assert grown < 1 << 20, grown
        still_running(c, job)
        victim_carried_on(c, job, sub)

        # A job finished just now stays; the victim, made to have finished 40 days ago, goes.
        spare = c.request("submit", {"spec": base.replace("nodes: 2", "nodes: 200").replace(
            "global_batch: 64", "global_batch: 256")})
        assert spare[1] == "submitted", spare
        spare = spare[2]["job"]
        assert c.request("cancel", {"job": spare})[1] == "ok"
        c.stop_coordinator()
        with sqlite3.connect(db) as h:
            h.execute("UPDATE jobs SET finished_at = finished_at - 40 * 86400 WHERE id = ?", (job,))
        h.close()
        c.start_coordinator()
        assert c.request("status", {"job": job})[1] == "error", "a job 40 days old was kept"
        kept = c.request("status", {"job": spare})
        assert kept[1] == "jobs" and kept[2]["jobs"][0]["state"] == "cancelled", kept
        assert "1 job(s) finished more than 30 day(s) ago forgotten" in full_log(c, "coordinator.log")


def test_idle_connections(drover):
    """(d) 2000 idle TCP connections to the agent port of a coordinator started at an
    open-file limit of 1024: it raises its own limit to the hard one, so clients are
    answered, agents register and new jobs start; before, libzmq's accept() failed in a
    loop at 80-90% CPU and no new peer could connect."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # what drover raises its limit to: the hard one, up to Linux's usual fs.nr_open
    top = hard if hard != resource.RLIM_INFINITY and hard <= 1 << 20 else 1 << 20
    n = min(2000, top - 300)
    if n < 1500:
        print("SKIP the attack: the hard open-file limit (%d) is too low to make it" % top)
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # what the cluster inherits
    try:
        with cluster(drover) as c:
            # As from many addresses, each connection renewed before the handshake timeout
            # ends it: the cap per address and the timeout are out of the way, the open-file
            # limit is what is left.
            job, sub = start_victim(c, env={"DROVER_MAX_CONN_PER_ADDR": "4096",
                                            "DROVER_HANDSHAKE_MS": "600000"})
            resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))  # the attacker's own
            pid = c.coord.pid
            conns = []
            try:
                for i in range(n):
                    s = socket.socket()
                    s.setblocking(False)
                    try:
                        s.connect(("127.0.0.1", c.base))
                    except BlockingIOError:
                        pass
                    conns.append(s)
                    if i % 100 == 99:
                        time.sleep(0.05)
                time.sleep(2)

                def cpu():
                    f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
                    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
                c0, t0 = cpu(), time.time()
                time.sleep(3)
                share = 100 * (cpu() - c0) / (time.time() - t0)
                print("%d idle connections: coordinator has %d descriptors, %.0f%% CPU"
                      % (n, len(os.listdir("/proc/%d/fd" % pid)), share))
                # New peers still get in: a client, an agent.
                assert c.request("status", {"limit": 1}, timeout=10)[1] == "jobs"
                c.start_agent("late")
                c.wait_agents(3, timeout=20)
                still_running(c, job)
                # Because it took every descriptor the hard limit allows.
                limits = [l.split() for l in open("/proc/%d/limits" % pid)
                          if l.startswith("Max open files")]
                assert limits and limits[0][3] == str(top), limits
            finally:
                for s in conns:
                    s.close()
            victim_carried_on(c, job, sub)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_invalid_utf8(drover):
    """(e) Strings that are not UTF-8 are refused naming the field, on both ports; what the
    coordinator sends back, the agent list included, always decodes."""
    with cluster(drover) as c:
        job, sub = start_victim(c)

        def raw(mtype, body):  # bytes packed as msgpack str: not UTF-8 on purpose
            return msgpack.packb([1, mtype, body], use_bin_type=False)
        spec = (VICTIM_SPEC % c.runs).replace("name: victim", "name: caf\xe9").encode("latin-1")
        for frame, needle in [
                (raw("submit", {b"spec": spec}), "submit: field 'spec' is not valid UTF-8 (byte"),
                (raw("submit", {b"spec": b"x", b"token": b"\xff\xfe"}),
                 "submit: field 'token' is not valid UTF-8 (byte 0)"),
                (raw("submit", {b"spec": b"x", b"pool": b"a\x00b"}),
                 "submit: field 'pool' holds a NUL byte (byte 1)"),
                (raw(b"frob\xffnicate", {}), "unknown message type 'frob' (cut)")]:
            reply = c.send_raw(frame, timeout=10)
            assert reply is not None, "no reply to %r" % frame[:40]
            reply = unpack(reply)  # raw=False: must be valid UTF-8
            assert reply[1] == "error" and needle in reply[2]["message"], (needle, reply)
        # An agent whose name is not UTF-8 is not registered (it used to be, and `agents`
        # then sent it back to every client, whose decoder threw).
        a = c.agent_port_socket()
        a.send(raw("hello", {b"agent_id": b"evil\xc3", b"host": b"127.0.0.1",
                             b"target": b"attached", b"cpus": 1, b"mem_bytes": 1, b"gpus": []}))
        deadline = time.time() + 10
        while time.time() < deadline and "field 'agent_id'" not in full_log(c, "coordinator.log"):
            time.sleep(0.1)
        a.close()
        assert "hello: field 'agent_id' is not valid UTF-8 (byte 4)" in full_log(c, "coordinator.log")
        agents = unpack(c.send_raw(pack("agents", {})))[2]["agents"]
        assert sorted(x["agent_id"] for x in agents) == ["v1", "v2"], agents
        # Text that is UTF-8 goes through whole, however far from ASCII.
        where = os.path.join(c.runs, "caf\u00e9-\u20ac-\U0001d11e")
        spec = ((VICTIM_SPEC % where).replace("victim", "utf8").replace("nodes: 2", "nodes: 200")
                .replace("global_batch: 64", "global_batch: 256"))  # queued: no 200 agents
        reply = c.request("submit", {"spec": spec})
        assert reply[1] == "submitted", reply
        st = c.request("status", {"job": reply[2]["job"]})[2]["jobs"][0]
        assert st["run_dir"] == "%s/utf8-%d" % (where, reply[2]["job"]), st["run_dir"]
        assert c.request("cancel", {"job": reply[2]["job"]})[1] == "ok"
        still_running(c, job)
        victim_carried_on(c, job, sub)


if __name__ == "__main__":
    main([test_reference, test_spec_nesting, test_junk_key_flood, test_costly_specs_and_history,
          test_idle_connections, test_invalid_utf8])
