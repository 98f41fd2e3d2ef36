"""drover: what a training program run as a drover command job tells its worker.

A command job (`command: [python3, train.py, ...]` in the job spec) runs each rank as a
plain program with torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
GROUP_RANK, MASTER_ADDR, MASTER_PORT, TORCHELASTIC_RESTART_COUNT) and drover's own
(DROVER_JOB, DROVER_RANK, DROVER_RUN_DIR, DROVER_CHECKPOINT_DIR, DROVER_COORDINATOR,
DROVER_REPORT). This module is how such a program reports its progress and learns that
it should stop. It needs pyzmq and msgpack (Debian: python3-zmq, python3-msgpack), and
imports them only when DROVER_REPORT is set.

    import drover
    for step in ...:
        ...
        if drover.report(step=step, loss=loss.item(), epoch=epoch, samples=len(batch)):
            save_checkpoint(drover.checkpoint_dir()); sys.exit(0)

Functions
---------
enabled()
    True when DROVER_REPORT is set (read once, at import): the program runs under a
    drover worker. When False, report() does nothing (it does not even check its
    arguments) and returns should_stop(), which then reflects SIGTERM only.
report(step, loss=None, epoch=None, steps_total=None, samples=None, **metrics)
    Tells the worker: `step` global steps done (int >= 0, required), the latest `loss`,
    the 0-based `epoch`, `steps_total` the run will take, `samples` this rank processed
    since its previous call, and any other numbers as keyword arguments (`lr=0.1`), sent
    as one JSON object. Returns should_stop(). Raises TypeError/ValueError only for bad
    arguments (a negative step, a metric that is not a number), never because of the
    worker; non-finite metrics (nan, inf) are left out of the JSON.
should_stop()
    True once the worker asked the program to stop (an answer with stop 1: the job is
    being preempted or cancelled) or the process got SIGTERM. Sticky. The program should
    then save a checkpoint and exit 0. It also sends a report held back by the rate limit
    (below) once its time has come, so a program that reports rarely still hears a stop.
checkpoint_dir()
    DROVER_CHECKPOINT_DIR, else ./checkpoints; created (with parents) if missing.
rank(), local_rank(), world_size()
    RANK (else DROVER_RANK), LOCAL_RANK, WORLD_SIZE from the environment; 0, 0, 1 when
    unset.

Protocol (program -> its own worker)
------------------------------------
DROVER_REPORT is a ZeroMQ endpoint (`ipc:///tmp/drover-report-XXXX/r.sock`). The module
connects one DEALER socket to it, lazily on the first report (again in a forked child).
Each report is one frame, the msgpack array `[1, "report", body]`, body a map with
`step` and those of `loss` (float), `epoch`, `steps_total`, `samples` (uints) and
`metrics` (str, a JSON object) that were given. The worker answers each with one frame
`[1, "report_ack", {"stop": 0 | 1}]`. Nothing else is sent either way.

Rate and timeouts
-----------------
- At most one report per 100 ms goes out (~10/s). A call within 100 ms of the previous
  send is held back: the newest values replace the held ones, `samples` are summed and
  metrics merged (newest wins per name). A held report goes out with the next report()
  or should_stop() call made once the 100 ms are up, and at exit (atexit).
- After a send, the module waits at most 1 s for the answer. If none comes, it logs one
  line to stderr, assumes no stop and stops waiting for answers (later answers are still
  read, without waiting, and once one arrives it waits again). A send that cannot be
  queued (the worker long gone, 100 reports queued) is dropped. The socket lingers
  200 ms at exit. Nothing here raises into the program because the worker is away.

SIGTERM
-------
At import, in the main thread, and only if SIGTERM still has its default action (the
program set no handler of its own and does not ignore it), the module installs a handler
that makes should_stop() true; drover's worker forwards a preempted agent's SIGTERM to
the program. The handler then gives SIGTERM back its default action, so a second SIGTERM
ends a program that never asks should_stop(). This holds outside drover too (plain
torchrun forwards SIGTERM to its ranks as well).
"""
import atexit
import json
import math
import os
import signal
import sys
import threading
import time

__all__ = ["enabled", "report", "should_stop", "checkpoint_dir", "rank", "local_rank",
           "world_size"]

PROTO_VERSION = 1
INTERVAL_S = 0.1  # at most one report per INTERVAL_S
ACK_WAIT_S = 1.0  # the longest report() waits for an answer
LINGER_MS = 200
SNDHWM = 100

_ENDPOINT = os.environ.get("DROVER_REPORT") or None
_stop = False  # sticky: an answer with stop 1, or SIGTERM
_lock = threading.Lock()
_warned = set()


def _warn(key, text):
    """One line to stderr, once per kind of trouble."""
    if key in _warned:
        return
    _warned.add(key)
    try:
        sys.stderr.write("drover: %s\n" % text)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


# --- environment ---------------------------------------------------------------------

def _env_int(names, default):
    for n in names:
        v = os.environ.get(n)
        if v:
            try:
                return int(v)
            except ValueError:
                pass
    return default


def enabled():
    """True when the program runs under a drover worker (DROVER_REPORT set)."""
    return _ENDPOINT is not None


def rank():
    """This process's global rank: RANK, else DROVER_RANK, else 0."""
    return _env_int(("RANK", "DROVER_RANK"), 0)


def local_rank():
    """This process's rank on its node: LOCAL_RANK, else 0."""
    return _env_int(("LOCAL_RANK",), 0)


def world_size():
    """How many ranks the job has: WORLD_SIZE, else 1."""
    return _env_int(("WORLD_SIZE",), 1)


def checkpoint_dir():
    """DROVER_CHECKPOINT_DIR, else ./checkpoints, created if missing; returns the path."""
    d = os.environ.get("DROVER_CHECKPOINT_DIR") or os.path.join(".", "checkpoints")
    os.makedirs(d, exist_ok=True)
    return d


# --- the link to the worker ----------------------------------------------------------

class _Link:
    """The DEALER socket to the worker and what is held back for it. Owned by one pid."""

    def __init__(self):
        import msgpack
        import zmq
        self.zmq, self.msgpack = zmq, msgpack
        self.pid = os.getpid()
        self.ctx = zmq.Context(1)
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, LINGER_MS)
        self.sock.setsockopt(zmq.SNDHWM, SNDHWM)
        self.sock.connect(_ENDPOINT)
        self.last_send = 0.0  # time.monotonic() of the last send
        self.held = None  # the report body held back by the rate limit
        self.waiting = True  # False after an answer did not come in time

    def hold(self, body):
        """Merges body into the held report: newest values, samples summed."""
        if self.held is None:
            self.held = body
            return
        h = self.held
        if "samples" in h or "samples" in body:
            body["samples"] = h.get("samples", 0) + body.get("samples", 0)
        if "metrics" in h:
            m = json.loads(h["metrics"])
            m.update(json.loads(body.get("metrics", "{}")))
            body["metrics"] = json.dumps(m, separators=(",", ":"))
        for k, v in h.items():
            body.setdefault(k, v)
        self.held = body

    def due(self):
        return time.monotonic() - self.last_send >= INTERVAL_S

    def flush(self):
        """Sends the held report, if any, and waits for its answer (unless away)."""
        if self.held is None:
            return
        body, self.held = self.held, None
        frame = self.msgpack.packb([PROTO_VERSION, "report", body], use_bin_type=True)
        self.last_send = time.monotonic()
        try:
            self.sock.send(frame, self.zmq.NOBLOCK)
        except self.zmq.Again:
            _warn("full", "the worker at %s takes no reports; dropping them" % _ENDPOINT)
            return
        except self.zmq.ZMQError as e:
            _warn("send", "cannot report to %s: %s" % (_ENDPOINT, e))
            return
        if not self.waiting:
            self.drain(0)
        elif not self.drain(ACK_WAIT_S):
            self.waiting = False
            _warn("away", "no answer from the worker at %s within %.0f s; "
                  "going on without waiting" % (_ENDPOINT, ACK_WAIT_S))

    def drain(self, timeout):
        """Reads every answer there is, waiting up to timeout s for the first one.
        True if one was read."""
        got = False
        try:
            wait_ms = int(timeout * 1000)
            while self.sock.poll(wait_ms, self.zmq.POLLIN):
                self.answer(self.sock.recv(self.zmq.NOBLOCK))
                got, wait_ms = True, 0
        except self.zmq.ZMQError as e:
            _warn("recv", "cannot read answers from %s: %s" % (_ENDPOINT, e))
        if got:
            self.waiting = True
        return got

    def answer(self, frame):
        global _stop
        try:
            msg = self.msgpack.unpackb(frame, raw=False)
            ok = (isinstance(msg, list) and len(msg) == 3 and msg[0] == PROTO_VERSION
                  and msg[1] == "report_ack" and isinstance(msg[2], dict)
                  and msg[2].get("stop") in (0, 1))
        except Exception:  # any undecodable frame: msgpack raises several kinds
            ok = False
        if not ok:
            _warn("answer", "ignoring an answer that is not [1, 'report_ack', {stop}]")
            return
        if msg[2]["stop"] == 1:
            _stop = True

    def close(self):
        try:
            self.sock.close()
            self.ctx.term()
        except Exception:
            pass


_link = None


def _get_link():
    """The link of this process, made on first use (and anew in a forked child)."""
    global _link, _ENDPOINT
    if _link is not None and _link.pid == os.getpid():
        return _link
    # A forked child must not touch its parent's socket: it is dropped, never closed.
    _link = None
    try:
        _link = _Link()
    except ImportError as e:
        _warn("import", "DROVER_REPORT is set but %s; not reporting" % e)
        _ENDPOINT = None
    except Exception as e:  # zmq errors: a bad endpoint, no more file descriptors
        _warn("link", "cannot connect to %s: %s; not reporting" % (_ENDPOINT, e))
        _ENDPOINT = None
    return _link


def _at_exit():
    with _lock:
        if _link is not None and _link.pid == os.getpid():
            _link.flush()
            _link.close()


atexit.register(_at_exit)


# --- reports ---------------------------------------------------------------------------

def _uint(name, v):
    if isinstance(v, bool) or int(v) != v or v < 0:
        raise ValueError("drover.report: %s must be an integer >= 0, not %r" % (name, v))
    return int(v)


def _body(step, loss, epoch, steps_total, samples, metrics):
    body = {"step": _uint("step", step)}
    if loss is not None:
        body["loss"] = float(loss)
    for name, v in (("epoch", epoch), ("steps_total", steps_total), ("samples", samples)):
        if v is not None:
            body[name] = _uint(name, v)
    if metrics:
        m = {}
        for k, v in metrics.items():
            try:
                f = float(v)
            except (TypeError, ValueError):
                raise TypeError("drover.report: metric %s must be a number, not %r"
                                % (k, v)) from None
            if math.isfinite(f):
                m[k] = int(v) if isinstance(v, int) and not isinstance(v, bool) else f
        body["metrics"] = json.dumps(m, separators=(",", ":"))
    return body


def report(step, loss=None, epoch=None, steps_total=None, samples=None, **metrics):
    """Reports progress to the worker (see the module's docstring); returns should_stop()."""
    if _ENDPOINT is None:
        return _stop
    body = _body(step, loss, epoch, steps_total, samples, metrics)
    with _lock:
        link = _get_link()
        if link is not None:
            link.hold(body)
            if link.due():
                link.flush()
            else:
                link.drain(0)
    return _stop


def should_stop():
    """True once the worker asked for a stop or SIGTERM came; sends a held report when due."""
    if _ENDPOINT is not None and not _stop:
        with _lock:
            link = _get_link()
            if link is not None:
                if link.held is not None and link.due():
                    link.flush()
                else:
                    link.drain(0)
    return _stop


# --- SIGTERM ---------------------------------------------------------------------------

def _on_sigterm(signum, frame):
    global _stop
    _stop = True
    # A second SIGTERM ends a program that never asks should_stop().
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _install_sigterm():
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):
        pass


_install_sigterm()
