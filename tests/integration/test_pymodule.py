"""The Python module of command jobs (python/drover) for real, without drover's C side:
the test binds a ROUTER on an ipc endpoint itself and plays the worker, and a child
program (Debian's python3, PYTHONPATH=python) calls report() and should_stop() as it is
told on stdin. Checked: the frames are exactly [1, "report", body] as documented; acks
with stop 0, then 1, flip should_stop(); the rate limit holds reports back and merges
them; SIGTERM flips should_stop() (not when the program has its own handler); without
DROVER_REPORT nothing is done (pyzmq not even imported); a worker that never answers or
is not there costs one wait and one line on stderr. Then examples/torch-ddp/train.py
under Debian's torchrun, 2 ranks: --max-steps 20 to a test accuracy; 10 steps and a
resumed run to 20 end at the same model; with the test's ROUTER as DROVER_REPORT, an
answer with stop 1 makes both ranks checkpoint the same step and exit 0. Exits 77
(skipped) when /usr/bin/python3 cannot import torch, after the module's checks passed."""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import msgpack
import zmq

import harness
from ports import free_base_port

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PYTHON = "/usr/bin/python3"

# The child: one JSON command per stdin line, one JSON answer per stdout line.
CHILD = r"""
import json, os, signal, sys, time
if "--own-handler" in sys.argv:
    signal.signal(signal.SIGTERM, lambda s, f: print(json.dumps({"own": True}), flush=True))
import drover
for line in sys.stdin:
    cmd = json.loads(line)
    t0 = time.monotonic()
    do = cmd["do"]
    if do == "interval":
        drover.INTERVAL_S = cmd["s"]
        out = None
    elif do == "report":
        out = drover.report(**cmd["args"])
    elif do == "stop":
        out = drover.should_stop()
    elif do == "info":
        out = {"enabled": drover.enabled(), "zmq": "zmq" in sys.modules,
               "rank": drover.rank(), "local_rank": drover.local_rank(),
               "world_size": drover.world_size(), "ckpt": drover.checkpoint_dir()}
    elif do == "many":
        for i in range(cmd["n"]):
            drover.report(i, loss=0.5, epoch=0, samples=8, lr=0.1)
            drover.should_stop()
        out = drover.should_stop()
    elif do == "exit":
        break
    print(json.dumps({"out": out, "dt": time.monotonic() - t0}), flush=True)
"""


class Child:
    """The child program; always killed (its process group) by close()."""

    def __init__(self, tmp, endpoint=None, args=(), env=None):
        path = os.path.join(tmp, "child.py")
        with open(path, "w") as f:
            f.write(CHILD)
        e = {k: v for k, v in os.environ.items() if not k.startswith("DROVER_")}
        e["PYTHONPATH"] = os.path.join(REPO, "python")
        if endpoint:
            e["DROVER_REPORT"] = endpoint
        e.update(env or {})
        self.err = open(os.path.join(tmp, "child.err"), "w+")
        self.proc = subprocess.Popen([PYTHON, path] + list(args), cwd=tmp, env=e,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err, text=True, start_new_session=True)

    def send(self, do, **kw):
        kw["do"] = do
        self.proc.stdin.write(json.dumps(kw) + "\n")
        self.proc.stdin.flush()

    def answer(self, timeout=20):
        """The child's next answer line as a dict (within timeout s: did it hang)."""
        import select
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert r, "the child did not answer within %d s: %s" % (timeout, self.stderr())
        line = self.proc.stdout.readline()
        assert line, "the child ended: %s" % self.stderr()
        return json.loads(line)

    def call(self, do, **kw):
        self.send(do, **kw)
        return self.answer()

    def exit(self, timeout=20):
        self.send("exit")
        self.proc.stdin.close()
        return self.proc.wait(timeout)

    def stderr(self):
        self.err.flush()
        self.err.seek(0)
        return self.err.read()

    def close(self):
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.err):
            with contextlib.suppress(Exception):
                f.close()


@contextlib.contextmanager
def setup(bind=True, **kw):
    """(worker ROUTER or None, child, tmp) with everything closed and removed after."""
    tmp = tempfile.mkdtemp(prefix="drover-py-")
    endpoint = "ipc://%s/r.sock" % tmp
    ctx = zmq.Context()
    router = None
    child = None
    try:
        if bind:
            router = ctx.socket(zmq.ROUTER)
            router.linger = 0
            router.bind(endpoint)
        child = Child(tmp, endpoint=endpoint if kw.pop("report", True) else None, **kw)
        yield router, child, tmp
    except BaseException:
        if child is not None:
            print("child's stderr:\n" + child.stderr())
        raise
    finally:
        if child is not None:
            child.close()
        if router is not None:
            router.close()
        ctx.term()
        shutil.rmtree(tmp, ignore_errors=True)


def frame(router, timeout=10):
    """(routing id, decoded message) of the next message; asserts it is one frame."""
    assert router.poll(timeout * 1000), "no report within %d s" % timeout
    parts = router.recv_multipart()
    assert len(parts) == 2, "a report is one frame, got %d" % (len(parts) - 1)
    msg = msgpack.unpackb(parts[1], raw=False)
    # Strings go as msgpack str (not bin), the version as an int.
    assert isinstance(msg, list) and len(msg) == 3, msg
    assert msg[0] == 1 and type(msg[0]) is int and msg[1] == "report", msg
    assert isinstance(msg[2], dict), msg
    return parts[0], msg[2]


def ack(router, rid, stop):
    router.send_multipart([rid, msgpack.packb([1, "report_ack", {"stop": stop}],
                                              use_bin_type=True)])


def nothing_more(router, wait_s=0.5):
    assert not router.poll(int(wait_s * 1000)), "unexpected: %r" % router.recv_multipart()


# --- the tests ----------------------------------------------------------------------------

def test_frames_and_stop(drover):
    with setup() as (router, child, _):
        child.call("interval", s=0)  # every report goes out
        child.send("report", args={"step": 5, "loss": 0.25, "epoch": 1, "steps_total": 100,
                                   "samples": 64, "lr": 0.1, "acc": 0.5, "n": 3,
                                   "bad": float("nan")})
        rid, body = frame(router)
        metrics = json.loads(body.pop("metrics"))
        assert body == {"step": 5, "loss": 0.25, "epoch": 1, "steps_total": 100,
                        "samples": 64}, body
        assert all(type(body[k]) is int for k in ("step", "epoch", "steps_total", "samples"))
        assert type(body["loss"]) is float, body
        assert metrics == {"lr": 0.1, "acc": 0.5, "n": 3}, metrics  # nan left out
        ack(router, rid, 0)
        assert child.answer()["out"] is False
        # Only what was given: a bare step is {"step": 6}.
        child.send("report", args={"step": 6})
        rid, body = frame(router)
        assert body == {"step": 6}, body
        ack(router, rid, 0)
        assert child.answer()["out"] is False
        assert child.call("stop")["out"] is False
        # stop 1: this report() and every should_stop() after it say stop.
        child.send("report", args={"step": 7, "loss": 0.2})
        rid, body = frame(router)
        assert body == {"step": 7, "loss": 0.2}, body
        ack(router, rid, 1)
        assert child.answer()["out"] is True
        assert child.call("stop")["out"] is True
        assert child.exit() == 0
        nothing_more(router)  # nothing but reports, and none at exit: none was held
        assert "drover:" not in child.stderr(), child.stderr()


def test_bad_arguments(drover):
    """A program's own mistakes raise (not the worker's absence): a negative step."""
    with setup() as (router, child, _):
        child.send("report", args={"step": -1})
        child.proc.stdin.close()
        assert child.proc.wait(20) != 0
        assert "step must be an integer >= 0" in child.stderr(), child.stderr()
        nothing_more(router)


def test_rate_limit_merges(drover):
    with setup() as (router, child, _):
        child.call("interval", s=3600)
        child.send("report", args={"step": 1, "samples": 5, "loss": 1.0})
        rid, body = frame(router)  # the first goes out at once
        assert body == {"step": 1, "samples": 5, "loss": 1.0}, body
        ack(router, rid, 0)
        assert child.answer()["out"] is False
        # Held back: newest values, samples summed, metrics merged.
        assert child.call("report", args={"step": 2, "samples": 3, "loss": 0.5,
                                          "acc": 0.9, "lr": 0.1})["out"] is False
        assert child.call("report", args={"step": 3, "samples": 4, "lr": 0.01,
                                          "epoch": 0})["out"] is False
        assert child.call("stop")["out"] is False  # not yet due: still held
        nothing_more(router)
        # At exit the held report goes out.
        child.send("exit")
        rid, body = frame(router)
        metrics = json.loads(body.pop("metrics"))
        assert body == {"step": 3, "samples": 7, "loss": 0.5, "epoch": 0}, body
        assert metrics == {"acc": 0.9, "lr": 0.01}, metrics
        ack(router, rid, 0)
        child.proc.stdin.close()
        assert child.proc.wait(20) == 0
        nothing_more(router)


def test_held_report_goes_with_should_stop(drover):
    """A held report leaves with should_stop() once due, and its answer counts."""
    with setup() as (router, child, _):
        child.call("interval", s=0.2)
        child.send("report", args={"step": 1})
        rid, _ = frame(router)
        ack(router, rid, 0)
        child.answer()
        assert child.call("report", args={"step": 2, "samples": 1})["out"] is False
        assert child.call("report", args={"step": 3, "samples": 1})["out"] is False
        time.sleep(0.3)
        child.send("stop")
        rid, body = frame(router)
        assert body["step"] == 3 and body["samples"] == 2, body
        ack(router, rid, 1)
        assert child.answer()["out"] is True
        assert child.exit() == 0


def test_sigterm(drover):
    with setup() as (router, child, _):
        assert child.call("stop")["out"] is False
        os.kill(child.proc.pid, signal.SIGTERM)
        harness.wait_for(lambda: child.call("stop")["out"], 10, "should_stop after SIGTERM")
        assert child.proc.poll() is None  # the program goes on, to checkpoint and exit
        # A second SIGTERM ends a program that never asked.
        os.kill(child.proc.pid, signal.SIGTERM)
        assert child.proc.wait(10) == -signal.SIGTERM
        nothing_more(router)
    # Outside drover too.
    with setup(bind=False, report=False) as (_, child, _):
        assert child.call("stop")["out"] is False
        os.kill(child.proc.pid, signal.SIGTERM)
        harness.wait_for(lambda: child.call("stop")["out"], 10, "should_stop after SIGTERM")
        assert child.exit() == 0
    # A program with its own handler keeps it.
    with setup(bind=False, report=False, args=["--own-handler"]) as (_, child, _):
        assert child.call("stop")["out"] is False
        os.kill(child.proc.pid, signal.SIGTERM)
        assert child.answer() == {"own": True}
        assert child.call("stop")["out"] is False
        assert child.exit() == 0


def test_disabled_is_noop(drover):
    env = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"}
    with setup(bind=False, report=False, env=env) as (_, child, tmp):
        a = child.call("many", n=100000)
        assert a["out"] is False and a["dt"] < 30, a  # liveness: 100000 calls did not hang
        info = child.call("info")["out"]
        assert info == {"enabled": False, "zmq": False, "rank": 3, "local_rank": 1,
                        "world_size": 4, "ckpt": "./checkpoints"}, info
        assert os.path.isdir(os.path.join(tmp, "checkpoints"))
        assert child.exit() == 0
        assert child.stderr() == "", child.stderr()
    # The defaults, and DROVER_CHECKPOINT_DIR created with its parents.
    tmpd = tempfile.mkdtemp(prefix="drover-py-")
    try:
        ck = os.path.join(tmpd, "deep", "ck")
        with setup(bind=False, report=False, env={"DROVER_CHECKPOINT_DIR": ck}) as (_, c, _):
            info = c.call("info")["out"]
            assert (info["rank"], info["local_rank"], info["world_size"]) == (0, 0, 1), info
            assert info["ckpt"] == ck and os.path.isdir(ck), info
            assert c.exit() == 0
    finally:
        shutil.rmtree(tmpd, ignore_errors=True)


def test_silent_worker(drover):
    """A worker that never answers: one wait of about 1 s, one line, then no more waits;
    an answer that comes late still counts."""
    with setup() as (router, child, _):
        child.call("interval", s=0)
        child.send("report", args={"step": 1})
        rid, _ = frame(router)
        a = child.answer()
        assert a["out"] is False and 0.5 < a["dt"] < 5, a  # it waited, and gave up
        t0 = time.monotonic()
        for step in range(2, 12):
            assert child.call("report", args={"step": step})["out"] is False
        assert time.monotonic() - t0 < 5  # liveness: no more 1 s waits
        steps = [frame(router)[1]["step"] for _ in range(10)]
        assert steps == list(range(2, 12)), steps
        err = child.stderr()
        assert err.count("drover:") == 1 and "no answer from the worker" in err, err
        # The worker wakes: a late answer with stop 1 is read by the next call.
        ack(router, rid, 1)
        harness.wait_for(lambda: child.call("stop")["out"], 10, "the late stop answer")
        assert child.exit() == 0


def test_absent_worker(drover):
    """Nothing bound at DROVER_REPORT: report() returns, the program exits 0."""
    with setup(bind=False) as (_, child, _):
        child.call("interval", s=0)
        a = child.call("report", args={"step": 1, "loss": 0.1})
        assert a["out"] is False and a["dt"] < 5, a
        assert child.call("many", n=200)["out"] is False
        assert child.exit(timeout=20) == 0
        assert "no answer from the worker" in child.stderr(), child.stderr()


def torchrun(tmp, port, args, env=None):
    """Runs train.py under Debian's torchrun, 2 ranks, in tmp; its output (rc 0 asserted)."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("DROVER_")}
    e.update(PYTHONPATH=os.path.join(REPO, "python"), OMP_NUM_THREADS="1")
    e.update(env or {})
    # --redirects 1 --tee 1: Debian's torch 1.13 on Python 3.11 cannot parse the defaults
    # ("0": Std.from_str finds no zero member of the IntFlag and torchrun fails at start),
    # so stdout goes through a log file and is tailed to the console.
    cmd = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(port),
           "--redirects", "1", "--tee", "1",
           os.path.join(REPO, "examples", "torch-ddp", "train.py")] + list(args)
    os.makedirs(tmp, exist_ok=True)
    p = subprocess.Popen(cmd, cwd=tmp, env=e, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=240)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == 0, out
    return out


def result(d):
    with open(os.path.join(d, "result.json")) as f:
        return json.load(f)


def test_torchrun(drover):
    """train.py under Debian's torchrun, 2 ranks: 20 steps to a test accuracy and a
    checkpoint; 10 steps, then a resumed run to 20 ends at exactly that model."""
    tmp = tempfile.mkdtemp(prefix="drover-ddp-")
    port = free_base_port()
    a, b = os.path.join(tmp, "a"), os.path.join(tmp, "b")
    try:
        t0 = time.monotonic()
        out = torchrun(a, port, ["--max-steps", "20"])
        print("torchrun, 2 ranks, 20 steps: %.1f s" % (time.monotonic() - t0))
        assert "rank 0: no checkpoint" in out and "rank 1: no checkpoint" in out, out
        line = [l for l in out.splitlines() if "test_accuracy=" in l]
        assert len(line) == 1, out
        acc = float(line[0].split("test_accuracy=")[1])
        r = result(a)
        assert r["test_accuracy"] == acc and r["steps"] == 20 and r["world_size"] == 2, r
        assert 0.4 < acc <= 1.0, acc  # 20 steps of SGD do learn something
        assert os.listdir(os.path.join(a, "checkpoints")) == ["ckpt-000000020.pt"]
        torchrun(b, port, ["--max-steps", "10"])
        out = torchrun(b, port, ["--max-steps", "20"])
        assert "rank 0: resuming from epoch 0 (step 10)" in out, out
        assert "rank 1: resuming from epoch 0 (step 10)" in out, out
        # Same batches, same optimizer state: the same model as the unbroken run.
        assert result(b) == r, (result(b), r)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_torchrun_stop(drover):
    """train.py with DROVER_REPORT: both ranks report to the test's ROUTER; from step 30
    on the answers say stop: every rank leaves at the same step, rank 0's checkpoint is
    of that step, all exit 0, no evaluation. Each rank's samples add up to 64 a step."""
    import threading
    tmp = tempfile.mkdtemp(prefix="drover-ddp-")
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    router.bind("ipc://%s/r.sock" % tmp)
    got, done = [], threading.Event()

    def worker():
        while not done.is_set():
            if router.poll(100):
                rid, body = frame(router)
                got.append((rid, body))
                ack(router, rid, 1 if body["step"] >= 30 else 0)

    t = threading.Thread(target=worker)
    t.start()
    try:
        out = torchrun(os.path.join(tmp, "run"), free_base_port(), ["--epochs", "1"],
                       env={"DROVER_REPORT": "ipc://%s/r.sock" % tmp})
    finally:
        done.set()
        t.join()
        router.close()
        ctx.term()
    try:
        stops = [l for l in out.splitlines() if "asked to stop at step" in l]
        assert len(stops) == 1 and "test_accuracy" not in out, out
        step = int(stops[0].split("asked to stop at step ")[1].split(":")[0])
        assert 30 <= step < 468, out
        ck = os.listdir(os.path.join(tmp, "run", "checkpoints"))
        assert ck == ["ckpt-%09d.pt" % step], ck
        ranks = {}
        for rid, body in got:
            assert set(body) <= {"step", "loss", "epoch", "steps_total", "samples"}, body
            assert body["epoch"] == 0 and body["steps_total"] == 468, body
            ranks.setdefault(rid, []).append(body)
        assert len(ranks) == 2, ranks.keys()
        for bodies in ranks.values():
            steps = [b["step"] for b in bodies]
            assert steps == sorted(steps) and steps[-1] <= step, steps
            assert sum(b["samples"] for b in bodies) == 64 * steps[-1], bodies
    except BaseException:
        print(out)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def have_torch():
    r = subprocess.run([PYTHON, "-c", "import torch, numpy"], capture_output=True)
    return r.returncode == 0


if __name__ == "__main__":
    tests = [test_frames_and_stop, test_bad_arguments, test_rate_limit_merges,
             test_held_report_goes_with_should_stop, test_sigterm, test_disabled_is_noop,
             test_silent_worker, test_absent_worker]
    torch = have_torch()
    if torch:
        tests += [test_torchrun, test_torchrun_stop]
    try:
        harness.main(tests)
    except SystemExit as e:
        if e.code == 0 and not torch:
            print("SKIP test_torchrun: %s cannot import torch" % PYTHON)
            sys.exit(77)
        raise
