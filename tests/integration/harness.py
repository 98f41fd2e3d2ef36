"""Shared pieces of drover's integration tests: real coordinator, agent and worker
processes on loopback, each test in its own state directory and ports.

Only Debian's python3 with python3-zmq and python3-msgpack is needed. The protocol helpers
here are written from docs/protocol.md alone: [version, type, body-map] frames.
"""
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import msgpack
import zmq

from ports import free_base_port

PROTO_VERSION = 1
CLUSTERS = []  # every Cluster made, checked for leftovers after each test


def pack(mtype, body):
    return msgpack.packb([PROTO_VERSION, mtype, body], use_bin_type=True)


def unpack(frame):
    return msgpack.unpackb(frame, raw=False)


def load_key(path):
    """A drover key file (common/keys.h): its `name = "value"` lines as a dict."""
    out = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if "=" in line and not line.startswith("#"):
                k, v = line.split("=", 1)
                out[k.strip()] = v.strip().strip('"')
    return out


def curve(sock, own, server_key):
    """Makes sock a CurveZMQ client with key file dict `own`, pinning server_key (Z85)."""
    sock.curve_secretkey = own["secret-key"].encode()
    sock.curve_publickey = zmq.curve_public(own["secret-key"].encode())
    sock.curve_serverkey = server_key.encode()
    return sock


class Cluster:
    """A coordinator and agents started by hand, as an operator would."""

    def __init__(self, drover, env=None):
        self.drover = os.path.abspath(drover)
        self.tmp = tempfile.mkdtemp(prefix="drover-it-")
        # An agent running as root runs its workers as another user (nobody): they must
        # reach the run directories and the test's data under here.
        os.chmod(self.tmp, 0o755)
        self.state = os.path.join(self.tmp, "state")
        self.runs = os.path.join(self.tmp, "runs")
        self.base = free_base_port()
        self.endpoint = "tcp://127.0.0.1:%d" % self.base
        self.env = dict(os.environ)
        self.env.update(env or {})
        self.env["DROVER_COORDINATOR"] = self.endpoint
        self.env["DROVER_STATE_DIR"] = self.state
        self.plaintext = self.env.get("DROVER_INSECURE") == "1"
        self.procs = []
        self.coord = None
        self.agents = {}
        self.ctx = zmq.Context.instance()
        CLUSTERS.append(self)

    # -- processes --------------------------------------------------------------------
    def _spawn(self, args, log, env=None, wrap=()):
        f = open(os.path.join(self.tmp, log), "ab")
        p = subprocess.Popen(list(wrap) + [self.drover] + args, stdout=f, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=dict(self.env, **(env or {})),
                             start_new_session=True)
        self.procs.append(p)
        return p

    def start_coordinator(self, env=None, wrap=()):
        """The coordinator; `env` adds to its environment; `wrap` runs it under a command
        (["prlimit", "--nofile=1024:1024", "--"])."""
        self.coord = self._spawn(["coordinator", "--bind", self.endpoint,
                                  "--state-dir", self.state], "coordinator.log", env, wrap)
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                self.request("status", {"limit": 1}, timeout=0.5)
                return self.coord
            except TimeoutError:
                if self.coord.poll() is not None:
                    break
        raise RuntimeError("coordinator did not come up:\n" + self.log("coordinator.log"))

    def stop_coordinator(self, sig=signal.SIGTERM):
        self.coord.send_signal(sig)
        self.coord.wait(timeout=20)

    def start_agent(self, name, target="attached", threads="1", env=None, args=()):
        """An agent named `name`; `env` adds to its environment (its workers inherit it),
        `args` to its command line (e.g. "--allow-dir", DIR)."""
        p = self._spawn(["agent", "--coordinator", self.endpoint, "--id", name, "--target",
                         target, "--host", "127.0.0.1"] + list(args), "agent-%s.log" % name,
                        dict({"OPENBLAS_NUM_THREADS": threads}, **(env or {})))
        self.agents[name] = p
        return p

    def wait_agents(self, n, timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline:
            r = self.request("agents", {})
            if len(r[2]["agents"]) >= n:
                return r[2]["agents"]
            time.sleep(0.2)
        raise AssertionError("only %d of %d agents registered" % (len(r[2]["agents"]), n))

    def drover_cli(self, *args, timeout=600):
        return subprocess.run([self.drover] + list(args), capture_output=True, text=True,
                              env=self.env, timeout=timeout)

    def log(self, name):
        try:
            with open(os.path.join(self.tmp, name), "rb") as f:
                return f.read().decode(errors="replace")[-6000:]
        except OSError:
            return ""

    def all_logs(self):
        out = []
        for name in sorted(os.listdir(self.tmp)):
            if name.endswith(".log"):
                out.append("==== %s\n%s" % (name, self.log(name)))
        return "\n".join(out)

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def leftovers(self):
        """drover processes of this cluster still alive, and its ports still bound."""
        marks = [self.tmp.encode(), ("127.0.0.1:%d" % self.base).encode()]
        procs = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                cmd = open("/proc/%s/cmdline" % pid, "rb").read()
                state = open("/proc/%s/stat" % pid).read().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z" and b"drover" in cmd and any(m in cmd for m in marks):
                procs.append("%s: %s" % (pid, cmd.replace(b"\0", b" ").decode(errors="replace")))
        ports = []
        for p in range(self.base, self.base + 3):
            sk = socket.socket()
            # SO_REUSEADDR, as a server would: TIME_WAIT is not "bound", a listener is.
            sk.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sk.bind(("127.0.0.1", p))
                sk.listen(1)
            except OSError:
                ports.append(p)
            finally:
                sk.close()
        return procs, ports

    # -- keys ---------------------------------------------------------------------------
    def key(self, name):
        """Key file `name` of the coordinator's state directory ("admin.secret", ...)."""
        return load_key(os.path.join(self.state, "keys", name))

    def server_key(self):
        return self.key("coordinator.key")["public-key"]

    def socket(self, kind, port, own="admin.secret", keys=None):
        """A socket to the coordinator's port base+`port` with key file `own` of the state
        directory, or with `keys` (a dict with "secret-key"); own=None: plaintext."""
        s = self.ctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        if self.plaintext and keys is None:
            own = None  # a cluster started with DROVER_INSECURE=1 has no keys
        if keys is not None or own is not None:
            curve(s, keys if keys is not None else self.key(own), self.server_key())
        s.connect("tcp://127.0.0.1:%d" % (self.base + port))
        return s

    # -- protocol -----------------------------------------------------------------------
    def client_socket(self, own="admin.secret", keys=None):
        return self.socket(zmq.DEALER, 1, own, keys)

    def agent_port_socket(self, own="agent.secret", keys=None):
        """A DEALER to the agents' and workers' port, with the local agents' key."""
        return self.socket(zmq.DEALER, 0, own, keys)

    def send_raw(self, frame, timeout=5.0, own="admin.secret", keys=None):
        """Sends one hand-built frame (bytes) to the client port and returns the reply
        frame as bytes, undecoded, or None when none came within `timeout`."""
        s = self.client_socket(own, keys)
        try:
            s.send(frame)
            if not s.poll(int(timeout * 1000)):
                return None
            return s.recv()
        finally:
            s.close()

    def request(self, mtype, body, timeout=5.0, own="admin.secret", keys=None):
        try:
            s = self.client_socket(own, keys)
        except OSError:  # no keys yet: the coordinator makes them at its first start
            time.sleep(min(timeout, 0.2))
            raise TimeoutError("no keys yet for %s" % mtype)
        try:
            s.send(pack(mtype, body))
            if not s.poll(int(timeout * 1000)):
                raise TimeoutError("no reply to %s" % mtype)
            return unpack(s.recv())
        finally:
            s.close()

    def subscribe(self, job=None, own="admin.secret", keys=None):
        s = self.ctx.socket(zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SUBSCRIBE, b"job/" if job is None else ("job/%d" % job).encode())
        if self.plaintext and keys is None:
            own = None
        if keys is not None or own is not None:
            curve(s, keys if keys is not None else self.key(own), self.server_key())
        s.connect("tcp://127.0.0.1:%d" % (self.base + 2))
        time.sleep(0.2)
        return s

    def run_dir(self, job):
        """The run directory the coordinator gave job `job`."""
        return self.request("status", {"job": job})[2]["jobs"][0]["run_dir"]

    def follow(self, sub, job, timeout):
        """Reads events of `job` until a terminal state; returns (final ev_state body, events)."""
        events = []
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not sub.poll(500):
                st = self.request("status", {"job": job})[2]["jobs"][0]
                if st["state"] in ("succeeded", "failed", "cancelled"):
                    return {"state": st["state"], "reason": st["reason"],
                            "test_accuracy": st["test_accuracy"]}, events
                continue
            topic, frame = sub.recv_multipart()
            msg = unpack(frame)
            if msg[2].get("job") != job:
                continue
            events.append(msg)
            if msg[1] == "ev_state" and msg[2]["state"] in ("succeeded", "failed", "cancelled"):
                return msg[2], events
        raise AssertionError("job %d did not finish within %d s" % (job, timeout))


def wait_for(pred, timeout, what):
    """pred()'s first true value within timeout seconds (polled every 0.1 s)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError("timed out waiting for " + what)


@contextlib.contextmanager
def cluster(drover, env=None):
    """A Cluster that prints every process's log when the test fails, and is always closed."""
    c = Cluster(drover, env=env)
    try:
        yield c
    except BaseException:
        print(c.all_logs())
        raise
    finally:
        c.close()


def worker_pid(run_dir, rank):
    """pid of the worker of `run_dir` started as `rank` (its --rank), or None."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = open("/proc/%s/cmdline" % pid, "rb").read().split(b"\0")
        except OSError:
            continue
        if b"worker" in cmd and run_dir.encode() in cmd and b"--rank" in cmd:
            if cmd[cmd.index(b"--rank") + 1] == str(rank).encode():
                return int(pid)
    return None


def program_pid(run_dir, rank, word):
    """pid of a command job's program of `rank` in run_dir (its command line holds `word`,
    its environment DROVER_RUN_DIR and RANK), or None."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = open("/proc/%s/cmdline" % pid, "rb").read()
            env = open("/proc/%s/environ" % pid, "rb").read().split(b"\0")
        except OSError:
            continue
        if word.encode() in cmd and ("DROVER_RUN_DIR=%s" % run_dir).encode() in env and \
                ("RANK=%d" % rank).encode() in env:
            return int(pid)
    return None


def read_metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_safetensors(path):
    """Parses a .safetensors file by its spec: u64 LE header length, JSON header, data."""
    import struct
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        count = 1
        for d in info["shape"]:
            count *= d
        assert info["dtype"] == "F32", info
        assert b - a == 4 * count, (name, info)
        assert b <= len(body), (name, b, len(body))
        tensors[name] = (info["shape"], struct.unpack("<%df" % count, body[a:b]))
    return header, tensors


def main(tests):
    """Runs test functions f(drover) given argv[1] = path of the drover binary."""
    drover = sys.argv[1]
    failed = 0
    for t in tests:
        t0 = time.time()
        del CLUSTERS[:]
        try:
            t(drover)
            # Nothing may outlive a test: no drover process, no bound port.
            deadline = time.time() + 15
            while True:
                left = [(c, c.leftovers()) for c in CLUSTERS]
                left = [(c, l) for c, l in left if l[0] or l[1]]
                if not left or time.time() > deadline:
                    break
                time.sleep(0.2)
            assert not left, "left behind: %r" % [l for _, l in left]
            print("PASS %s (%.1f s)" % (t.__name__, time.time() - t0), flush=True)
        except Exception:
            import traceback
            traceback.print_exc()
            print("FAIL %s (%.1f s)" % (t.__name__, time.time() - t0), flush=True)
            failed += 1
    print("%d passed, %d failed" % (len(tests) - failed, failed))
    sys.exit(1 if failed else 0)
