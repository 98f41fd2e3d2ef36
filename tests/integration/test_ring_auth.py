"""The ring's handshake against a stranger on the same machine, with real processes on
loopback. A 3-rank job trains while an attacker finds each rank's ring port (the worker
processes' listening sockets, from /proc) and connects to it again and again: with the
public-tag hello that once let it into the ring (job << 32 | generation, from the events
it can see), and with the keyed hello and a proof it cannot make. Every attempt is refused
and gets nothing past the handshake; the job trains as if nobody had tried: every loss is
finite, no re-formation, and its test accuracy is that of the same job unattacked (the
same seed) within 1 %. Each refusal is logged by address, and no ring key appears in any
log. And a worker assigned no ring key refuses to connect its ring unless DROVER_INSECURE=1
lets it connect by the public tag, loudly."""
import math
import os
import re
import socket
import struct
import subprocess
import threading
import time

from harness import cluster, main, pack, read_metrics, unpack, worker_pid
from ports import free_base_port

MAGIC = 0x474E5244  # "DRNG"
HELLO, ACCEPT, REFUSE, AUTH_HELLO, CHALLENGE, PROOF = 1, 2, 3, 4, 5, 6

# Every rank holds its ring port open 3 s after `start` before it connects, and rank 0 (on
# a1) 5 s, so that rank 1 waits 2 s for it, refusing whoever else comes meanwhile: windows
# in which the attacker is sure to reach every port, and one port again and again. Both
# runs have them, so they differ only by the attack.
ENV = {"DROVER_RING_TIMEOUT_MS": "10000", "DROVER_FAULT_RING_WAIT_MS": "3000"}
RANK0_ENV = {"DROVER_FAULT_RING_WAIT_MS": "5000"}
WORLD = 3

SPEC = """
name: %s
target: attached
nodes: 3
model: {type: mlp, hidden: [64]}
data:
  format: synthetic
  synthetic: {train_samples: 12000, test_samples: 2000, features: 32, classes: 4, seed: 4}
train:
  epochs: 2
  global_batch: 60
  seed: 3
  optimizer: {type: sgd, lr: 0.05}
run_dir: %s
"""


def head(kind, rank, world, tag):
    return struct.pack("<IIIIQ", MAGIC, kind, rank, world, tag)


def kinds(data):
    """The kinds of the handshake messages in what a connection received, in order."""
    out, i = [], 0
    sizes = {ACCEPT: 24, REFUSE: 24, CHALLENGE: 88, HELLO: 24, AUTH_HELLO: 56, PROOF: 56}
    while i + 24 <= len(data):
        magic, kind = struct.unpack_from("<II", data, i)
        if magic != MAGIC or kind not in sizes:
            return out + ["?"]
        out.append(kind)
        i += sizes[kind]
    return out + (["?"] if i != len(data) else [])


def listening_ports(pids):
    """{port: pid}: the TCP ports the processes listen on, from /proc (fd links and
    /proc/net/tcp, as any local user can read them of their own processes)."""
    inode_pid = {}
    for pid in pids:
        try:
            fds = os.listdir("/proc/%d/fd" % pid)
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            except OSError:
                continue
            if link.startswith("socket:["):
                inode_pid[link[8:-1]] = pid
    ports = {}
    with open("/proc/net/tcp") as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inode_pid:  # LISTEN
                ports[int(fields[1].split(":")[1], 16)] = inode_pid[fields[9]]
    return ports


class Attacker:
    """Connects to every ring port of the job's workers, over and over, until stopped.
    Each port gets, at once, two connections: the public-tag hello claiming to be the
    rank's left neighbour, and a keyed hello followed by a random proof; then again
    while the port is open. Records what each connection received."""

    def __init__(self, c, job, run_dir, sub):
        self.c, self.job, self.run_dir, self.sub = c, job, run_dir, sub
        self.generation = 1  # a job's first placement; later ones show in the events
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.results = []  # (port, variant, bytes received, None or error)
        self.tcp_refused = 0
        self.threads = {}

    def events(self):
        while self.sub.poll(0):
            _, frame = self.sub.recv_multipart()
            m = unpack(frame)
            if m[2].get("job") == self.job and "generation" in m[2]:
                self.generation = max(self.generation, m[2]["generation"])

    def attempt(self, port, rank, variant):
        tag = (self.job << 32) | self.generation
        left = (rank + WORLD - 1) % WORLD
        s = socket.socket()
        s.settimeout(10)
        try:
            s.connect(("127.0.0.1", port))
            if s.getsockname() == s.getpeername():  # nothing listened: it reached itself
                raise ConnectionRefusedError
        except OSError:
            s.close()
            with self.lock:
                self.tcp_refused += 1
            return False
        got, err = b"", None
        try:
            if variant == "public-tag":
                s.sendall(head(HELLO, left, WORLD, tag))
            else:
                s.sendall(head(AUTH_HELLO, left, WORLD, tag) + os.urandom(32))
            while True:
                b = s.recv(65536)
                if not b:
                    break
                got += b
                if variant == "forged-proof" and len(got) == 88:
                    s.sendall(head(PROOF, left, WORLD, tag) + os.urandom(32))
        except ConnectionResetError:
            pass  # closed with our bytes unread: the ring connected before judging them
        except socket.timeout:
            err = "no end of stream within 10 s"
        except OSError as e:
            err = str(e)
        finally:
            s.close()
        with self.lock:
            self.results.append((port, variant, got, err))
        return True

    def hammer(self, port, rank):
        """Both attempts at once on one port, again and again, until the port closes (the
        ring connected: it listens no more in this generation) or the attack ends."""
        while not self.stop.is_set():
            ok = []
            ts = [threading.Thread(target=lambda v=v: ok.append(self.attempt(port, rank, v)))
                  for v in ("public-tag", "forged-proof")]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            if not all(ok):
                return
            time.sleep(0.02)

    def run(self):
        """While the job runs: finds the workers' ring ports, a new one in each generation,
        and hammers each one."""
        while not self.stop.is_set():
            self.events()
            pids = {}
            for r in range(WORLD):
                p = worker_pid(self.run_dir, r)
                if p:
                    pids[p] = r
            for port, pid in listening_ports(pids).items():
                if port not in self.threads:
                    t = threading.Thread(target=self.hammer, args=(port, pids[pid]))
                    self.threads[port] = t
                    t.start()
            time.sleep(0.05)
        for t in self.threads.values():
            t.join()


def start_job(c, name):
    c.start_coordinator()
    for a in ("a1", "a2", "a3"):
        c.start_agent(a, env=RANK0_ENV if a == "a1" else None)
    c.wait_agents(WORLD)
    sub = c.subscribe()
    job = c.request("submit", {"spec": SPEC % (name, c.runs)})[2]["job"]
    return sub, job


def finish(c, sub, job):
    final, events = c.follow(sub, job, timeout=300)
    assert final["state"] == "succeeded", final
    run_dir = c.run_dir(job)
    m = read_metrics(run_dir)
    steps = [x for x in m if x["type"] == "step"]
    assert steps and all(math.isfinite(x["loss"]) for x in steps), "a loss is not finite"
    st = c.request("status", {"job": job})[2]["jobs"][0]
    return st["test_accuracy"], m, run_dir


def test_stranger_refused_while_the_job_trains(drover):
    with cluster(drover, env=ENV) as c:
        sub, job = start_job(c, "unattacked")
        ref, _, _ = finish(c, sub, job)

    with cluster(drover, env=ENV) as c:
        sub, job = start_job(c, "attacked")
        # The run directory, as the attacker finds the workers by it (their command line).
        deadline = time.time() + 30
        run_dir = None
        while run_dir is None and time.time() < deadline:
            st = c.request("status", {"job": job})[2]["jobs"][0]
            run_dir = st["run_dir"] or None
            time.sleep(0.01)
        esub = c.subscribe(job)
        att = Attacker(c, job, run_dir, esub)
        thread = threading.Thread(target=att.run)
        thread.start()
        try:
            acc, metrics, _ = finish(c, sub, job)
        finally:
            att.stop.set()
            thread.join(timeout=60)
        assert not thread.is_alive(), "the attacker hung"

        print("attacker: %d connections reached a ring port, %d refused by TCP (ports closed "
              "once the ring connected)" % (len(att.results), att.tcp_refused))
        # It reached the handshake of every rank, and got refused there.
        by_port = {}
        for port, variant, got, err in att.results:
            assert err is None, (variant, err, got)
            k = kinds(got)
            # Nothing past the handshake: at most the challenge and the refusal; an attempt
            # still waiting when the ring connected is closed with what it had.
            if variant == "public-tag":
                assert k in ([REFUSE], []), (variant, k, len(got))
            else:
                assert k in ([CHALLENGE, REFUSE], [CHALLENGE], []), (variant, k, len(got))
            if k and k[-1] == REFUSE:
                by_port.setdefault(port, []).append(variant)
        print("refusals per ring port (public-tag, forged-proof): %r"
              % {p: (v.count("public-tag"), v.count("forged-proof")) for p, v in by_port.items()})
        assert len(by_port) == WORLD, "refusals per ring port: %r" % by_port
        # Again and again, both ways, on the port of rank 1, which waited for rank 0 (on
        # the others, the ring may connect before a forged proof is judged).
        assert any(v.count("public-tag") >= 10 and v.count("forged-proof") >= 10
                   for v in by_port.values()), by_port

        # The job never noticed: no re-formation, same accuracy as unattacked (same seed).
        assert not [x for x in metrics if x["type"] == "reform"], "the ring re-formed"
        assert abs(acc - ref) <= 0.01, "test accuracy %.4f, unattacked %.4f" % (acc, ref)
        print("test accuracy %.4f attacked, %.4f unattacked" % (acc, ref))

        # Refusals are logged naming the address; no ring key is in any log.
        logs = ""
        for r in range(WORLD):
            with open(os.path.join(run_dir, "logs", "rank-%d.log" % r)) as f:
                logs += f.read()
        assert re.search(r"refused the connection from 127\.0\.0\.1:\d+: an unauthenticated "
                         r"hello", logs), logs[-3000:]
        assert "did not prove the ring key" in logs, logs[-3000:]
        everything = logs + c.all_logs()
        assert not re.search(r"[0-9a-fA-F]{64}", everything), "a ring key in the logs"


def run_worker(drover, tmp, env, curve_keys=True):
    """A worker started by hand with an assignment of a 2-rank job that carries no ring
    key (but, with curve_keys, its own CurveZMQ keys); its coordinator is nowhere. Returns
    (exit code, its output)."""
    import zmq
    base = free_base_port()
    spec = SPEC.replace("nodes: 3", "nodes: 2") % ("keyless", tmp)
    body = {"job": 7, "generation": 1, "rank": 0, "world": 2, "local_rank": 0,
            "device": -1, "spec": spec, "run_dir": os.path.join(tmp, "run"),
            "coordinator": "tcp://127.0.0.1:%d" % base, "host": "127.0.0.1",
            "lineage": "0123456789abcdef0123456789abcdef"}
    if curve_keys:
        body["secret"] = zmq.curve_keypair()[1].decode()
        body["coordinator_key"] = zmq.curve_keypair()[0].decode()
    assign = pack("assign", body)
    os.makedirs(os.path.join(tmp, "run"), exist_ok=True)
    e = dict(os.environ, DROVER_RENDEZVOUS_TIMEOUT_MS="1000", **env)
    p = subprocess.Popen([drover, "worker", "--rank", "0"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=e,
                         start_new_session=True)
    try:
        out, _ = p.communicate(assign, timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, 9)
            p.wait()
    return p.returncode, out.decode(errors="replace")


def test_keyless_assignment(drover):
    import tempfile
    tmp = tempfile.mkdtemp(prefix="drover-it-keyless-")
    code, out = run_worker(drover, tmp, {})
    assert code != 0, out
    assert "carries no ring key" in out and "refusing to connect the ring" in out, out
    assert "ring port" not in out, out  # it never opened one
    # With DROVER_INSECURE=1 it goes on, says so loudly, and opens its ring port (then
    # waits in vain for the coordinator's `start`).
    code, out = run_worker(drover, tmp, {"DROVER_INSECURE": "1"}, curve_keys=False)
    assert code != 0, out
    assert "INSECURE" in out and "ring port 127.0.0.1:" in out, out
    assert "no start from the coordinator in time" in out, out


if __name__ == "__main__":
    main([test_keyless_assignment, test_stranger_refused_while_the_job_trains])
