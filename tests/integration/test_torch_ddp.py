"""examples/torch-ddp as a drover command job, against the same program under torchrun,
with Debian's PyTorch (python3-torch), CPU and gloo, on loopback:

- 1 epoch on 2 attached agents reaches the test accuracy torchrun --nproc_per_node 2 gets
  for the same program (within 1%), and `drover logs` shows both ranks;
- SIGKILL of one rank in its second epoch: named in seconds, the job restarts from the
  program's own checkpoint (TORCHELASTIC_RESTART_COUNT 1) and completes.
Prints the time from submission to the program's first line, and from the kill to
training again. Exits 77 where /usr/bin/python3 has no torch."""
import json
import os
import re
import signal
import subprocess
import sys
import time

from harness import cluster, main, program_pid, wait_for
from ports import free_base_port
import test_pymodule as tp

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(REPO, "examples", "torch-ddp")
ENV = {"DROVER_HEARTBEAT_MS": "200", "DROVER_PEER_TIMEOUT_MS": "3000"}


def spec(c, name, epochs, extra=""):
    return ("name: %s\ntarget: attached\nnodes: 2\n"
            "command: [/usr/bin/python3, train.py, --epochs, \"%d\"]\n"
            "workdir: %s\nenv: [PYTHONPATH=%s, OMP_NUM_THREADS=1]\nrun_dir: %s\n%s"
            % (name, epochs, EXAMPLE, os.path.join(REPO, "python"), c.runs, extra))


def up(c):
    c.start_coordinator()
    for a in ("a0", "a1"):
        c.start_agent(a, args=["--allow-dir", REPO, "--allow-dir", c.tmp,
                               "--allow-dir", "/usr/share/datasets"])
    c.wait_agents(2)


def job(c, j):
    return c.request("status", {"job": j})[2]["jobs"][0]


def first_line_s(run, t0):
    """Seconds from t0 to the first program line in the ranks' logs (their stamps)."""
    best = None
    for f in os.listdir(os.path.join(run, "logs")):
        for line in open(os.path.join(run, "logs", f), errors="replace"):
            m = re.match(r"(\d\d):(\d\d):(\d\d)\.(\d{3}) \[rank \d\] ", line)
            if m:
                lt = time.localtime(t0)
                s = (int(m.group(1)) * 3600 + int(m.group(2)) * 60 + int(m.group(3)) +
                     int(m.group(4)) / 1000.0)
                s0 = lt.tm_hour * 3600 + lt.tm_min * 60 + lt.tm_sec + (t0 % 1)
                d = s - s0
                best = d if best is None else min(best, d)
                break
    return best


def test_same_accuracy_as_torchrun(drover):
    tmp_t = os.path.join(os.path.abspath("."), "torchrun-%d" % os.getpid())
    t0 = time.time()
    out = tp.torchrun(tmp_t, free_base_port(), ["--epochs", "1"])
    torch_s = time.time() - t0
    acc_t = tp.result(tmp_t)["test_accuracy"]
    with cluster(drover, env=ENV) as c:
        up(c)
        t0 = time.time()
        r = c.request("submit", {"spec": spec(c, "ddp", 1)})
        assert r[1] == "submitted", r
        j, run = r[2]["job"], r[2]["run_dir"]
        st = wait_for(lambda: (lambda s: s["state"] in ("succeeded", "failed") and s)(job(c, j)),
                      240, "the job")
        drover_s = time.time() - t0
        assert st["state"] == "succeeded", st
        acc_d = json.load(open(os.path.join(run, "result.json")))["test_accuracy"]
        first = first_line_s(run, t0)
        logs = c.drover_cli("logs", str(j))
        assert logs.returncode == 0, logs.stderr
        for rank, agent in ((0, "a0"), (1, "a1")):
            assert re.search(r"^rank %d %s \| " % (rank, agent), logs.stdout, re.M), logs.stdout[-2000:]
        assert "test_accuracy=" in logs.stdout, logs.stdout[-2000:]
        print("torch-ddp, 1 epoch, 2 ranks: drover %.4f (%.1f s, first line after %.2f s), "
              "torchrun %.4f (%.1f s)" % (acc_d, drover_s, first or -1, acc_t, torch_s))
        assert abs(acc_d - acc_t) <= 0.01, (acc_d, acc_t)
    subprocess.run(["rm", "-rf", tmp_t])


def test_killed_rank_resumes_from_checkpoint(drover):
    with cluster(drover, env=ENV) as c:
        up(c)
        r = c.request("submit", {"spec": spec(c, "ddp-kill", 2, "max_restarts: 2\n")})
        j, run = r[2]["job"], r[2]["run_dir"]
        wait_for(lambda: job(c, j)["step"] >= 500, 240, "the second epoch")
        pid = wait_for(lambda: tp_pid(run, 1), 20, "rank 1's program")
        t_kill = time.time()
        os.kill(pid, signal.SIGKILL)
        clog = os.path.join(c.tmp, "coordinator.log")
        pat = re.compile(r"restarting \(restart 1 of 2\) after: rank 1 \(agent a1\): its program "
                         r"was killed by signal 9 after step (\d+)")
        m = wait_for(lambda: pat.search(open(clog, errors="replace").read()), 30, "the restart")
        named = time.time() - t_kill
        step_at_kill = int(m.group(1))
        # Training again: the restarted run's first report (progress starts anew at a
        # restart; it resumes from its checkpoint of the first epoch's end, step 468).
        wait_for(lambda: (lambda s: s["state"] == "running" and s["step"] >= 468)(job(c, j)), 120,
                 "training again")
        again = time.time() - t_kill
        st = wait_for(lambda: (lambda s: s["state"] in ("succeeded", "failed") and s)(job(c, j)),
                      300, "the job")
        assert st["state"] == "succeeded", st
        logs = open(os.path.join(run, "logs", "rank-1.log"), errors="replace").read()
        assert re.search(r"resum", logs, re.I), logs[-2000:]  # from its own checkpoint
        acc = json.load(open(os.path.join(run, "result.json")))["test_accuracy"]
        print("SIGKILL of rank 1 at step %d: named after %.2f s, training again after %.1f s "
              "(from the program's checkpoint), accuracy %.4f" % (step_at_kill, named, again, acc))


def tp_pid(run, rank):
    return program_pid(run, rank, "train.py")


if __name__ == "__main__":
    if subprocess.run(["/usr/bin/python3", "-c", "import torch"], capture_output=True).returncode:
        print("skipped: /usr/bin/python3 has no torch (python3-torch)")
        sys.exit(77)
    main([test_same_accuracy_as_torchrun, test_killed_rank_resumes_from_checkpoint])
