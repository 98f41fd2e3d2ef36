#!/usr/bin/python3
"""Command jobs against torchrun, on the same program (examples/torch-ddp/train.py, 2 ranks,
CPU, gloo) in the same run, REPEAT times each:

  - start -> first line: from `drover submit` (a coordinator and 2 agents already up) or
    from starting torchrun, to the program's first line ("rank 0: no checkpoint ...");
  - kill -> resumed: SIGKILL of rank 1 in its second epoch (after the first epoch's
    checkpoint), to the restarted program's "resuming from epoch 1" line. drover restarts
    the job (max_restarts 2); torchrun with --max-restarts 1 restarts its workers.

Prints the medians (min-max).

    /usr/bin/python3 scripts/bench-command.py build-nocuda/cli/drover [REPEAT]
"""
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

from harness import Cluster, wait_for  # noqa: E402
from ports import free_base_port  # noqa: E402
import test_torch_ddp as td  # noqa: E402

TRAIN = os.path.join(REPO, "examples", "torch-ddp", "train.py")
FIRST = re.compile(r"rank 0: no checkpoint")
RESUMED = re.compile(r"rank \d: resuming from epoch 1")


def stamp_s(line):
    m = re.match(r"(\d\d):(\d\d):(\d\d)\.(\d{3}) ", line)
    return (int(m.group(1)) * 3600 + int(m.group(2)) * 60 + int(m.group(3)) +
            int(m.group(4)) / 1000.0) if m else None


def day_s(t):
    lt = time.localtime(t)
    return lt.tm_hour * 3600 + lt.tm_min * 60 + lt.tm_sec + (t % 1)


def log_time(run, pat):
    """The stamp (seconds of the day) of the first line matching pat in the ranks' logs."""
    best = None
    for f in os.listdir(os.path.join(run, "logs")):
        for line in open(os.path.join(run, "logs", f), errors="replace"):
            body = line.split("] ", 1)[-1]
            if pat.search(body):
                s = stamp_s(line)
                if s is not None and (best is None or s < best):
                    best = s
                break
    return best


def drover_runs(drover, repeat):
    firsts, resumes = [], []
    c = Cluster(drover, env=td.ENV)
    try:
        td.up(c)
        for i in range(repeat):
            t0 = time.time()
            r = c.request("submit", {"spec": td.spec(c, "first-%d" % i, 1).replace(
                "\"1\"]", "\"1\", --max-steps, \"40\"]")})
            j, run = r[2]["job"], r[2]["run_dir"]
            wait_for(lambda: td.job(c, j)["state"] in ("succeeded", "failed"), 240, "the job")
            firsts.append(log_time(run, FIRST) - day_s(t0))
            r = c.request("submit", {"spec": td.spec(c, "kill-%d" % i, 2, "max_restarts: 2\n")
                                     .replace("\"2\"]", "\"2\", --max-steps, \"520\"]")})
            j, run = r[2]["job"], r[2]["run_dir"]
            wait_for(lambda: td.job(c, j)["step"] >= 480, 240, "the second epoch")
            pid = wait_for(lambda: td.tp_pid(run, 1), 20, "rank 1")
            t_kill = time.time()
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: td.job(c, j)["state"] in ("succeeded", "failed"), 240, "the job")
            resumes.append(log_time(run, RESUMED) - day_s(t_kill))
    finally:
        c.close()
    return firsts, resumes


def kill_rank1(torchrun_pid):
    """SIGKILLs rank 1's train.py (its environment says RANK=1); the time, or None."""
    out = subprocess.run(["pgrep", "-f", "train.py"], capture_output=True, text=True)
    for pid in (int(x) for x in out.stdout.split()):
        try:
            if pid != torchrun_pid and b"RANK=1\0" in open("/proc/%d/environ" % pid, "rb").read():
                os.kill(pid, signal.SIGKILL)
                return time.time()
        except OSError:
            pass
    return None


def torchrun(args, env_extra=None, kill_after_ckpt=None):
    """Runs torchrun on train.py; returns (output lines with their arrival times, t0, t_kill)."""
    tmp = os.path.join("/tmp", "bench-torchrun-%d" % os.getpid())
    subprocess.run(["rm", "-rf", tmp])
    os.makedirs(tmp)
    e = {k: v for k, v in os.environ.items() if not k.startswith("DROVER_")}
    e.update(PYTHONPATH=os.path.join(REPO, "python"), OMP_NUM_THREADS="1")
    cmd = ["/usr/bin/python3", "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_base_port()),
           "--redirects", "1", "--tee", "1"] + list(env_extra or []) + [TRAIN] + list(args)
    t0 = time.time()
    p = subprocess.Popen(cmd, cwd=tmp, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, start_new_session=True)
    lines, t_kill = [], None
    reader = threading.Thread(target=lambda: [lines.append((time.time(), l)) for l in p.stdout],
                              daemon=True)
    reader.start()
    try:
        ckdir = os.path.join(tmp, "checkpoints")
        while kill_after_ckpt and t_kill is None and p.poll() is None:
            if os.path.isdir(ckdir) and any(f.startswith("ckpt-") for f in os.listdir(ckdir)):
                time.sleep(kill_after_ckpt)
                t_kill = kill_rank1(p.pid)
            time.sleep(0.05)
        p.wait(timeout=240)
        reader.join(timeout=10)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        subprocess.run(["rm", "-rf", tmp])
    return lines, t0, t_kill


def torchrun_runs(repeat):
    firsts, resumes = [], []
    for _ in range(repeat):
        lines, t0, _ = torchrun(["--epochs", "1", "--max-steps", "40"])
        firsts.append(next(t for t, l in lines if FIRST.search(l)) - t0)
        lines, _, t_kill = torchrun(["--epochs", "2", "--max-steps", "520"],
                                    ["--max_restarts", "1"], kill_after_ckpt=1.0)
        resumes.append(next(t for t, l in lines if RESUMED.search(l) and t > t_kill) - t_kill)
    return firsts, resumes


def fmt(xs):
    return "%.2f (%.2f-%.2f)" % (statistics.median(xs), min(xs), max(xs))


def main():
    drover = os.path.abspath(sys.argv[1])
    repeat = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    d_first, d_resume = drover_runs(drover, repeat)
    t_first, t_resume = torchrun_runs(repeat)
    print("examples/torch-ddp, 2 ranks on one %d-CPU machine, %d runs each" %
          (os.cpu_count(), repeat))
    print("| | drover (command job, 2 agents) | torchrun --nproc_per_node 2 |")
    print("| --- | --- | --- |")
    print("| start -> program's first line, s | %s | %s |" % (fmt(d_first), fmt(t_first)))
    print("| SIGKILL of rank 1 -> resumed from its checkpoint, s | %s | %s (--max_restarts 1) |"
          % (fmt(d_resume), fmt(t_resume)))


if __name__ == "__main__":
    main()
