"""The Slurm fixture (slurmfix.py) against real Slurm daemons, before any launcher uses it:

- 3 static nodes (with a gres gpu each) come up idle; two exclusive `sleep 30` jobs run on two different nodes;
- scancel ends a job and its processes, also a job whose shell and sleep ignore SIGTERM;
- a job for a powered-down CLOUD node makes slurmctld run the ResumeProgram: the node's
  slurmd boots, the job runs; after SuspendTime the SuspendProgram stops it again;
- close() from a failing `with` block still stops everything;
- after each cluster's close no process of it is left (close checks /proc itself).

Exits 77 (skipped) where the fixture cannot run (not root, Slurm or munge missing)."""
import os
import shutil
import sys
import tempfile
import time

from harness import main
from slurmfix import SlurmCluster


def job_pids(job):
    """Live processes of Slurm job `job` (SLURM_JOB_ID in their environment)."""
    mark = b"SLURM_JOB_ID=%s\0" % job.encode()
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if open("/proc/%s/stat" % pid).read().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            if mark in open("/proc/%s/environ" % pid, "rb").read():
                out.append(int(pid))
        except OSError:
            continue
    return out


def alive(pid):
    """pid runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        return open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(what, pred, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError("not within %d s: %s" % (timeout, what))


def wait_running_pids(c, job, cmd):
    """The job is RUNNING and a process of it runs `cmd`; its pids."""
    c.wait_job(job, ["RUNNING"], timeout=30)

    def have():
        pids = job_pids(job)
        for p in pids:
            try:
                if cmd in open("/proc/%d/cmdline" % p, "rb").read().replace(b"\0", b" "):
                    return pids
            except OSError:
                pass
        return None
    return wait_for("job %s runs %r" % (job, cmd), have)


def test_static_nodes(drover):
    tmp = tempfile.mkdtemp(prefix="drover-slurm-")
    t0 = time.time()
    with SlurmCluster(tmp, nodes=3, gres="gpu:1") as c:
        print("3 nodes idle in %.1f s (%s)" % (time.time() - t0, c.proctrack), flush=True)
        assert c.sinfo() == {"node1": "idle", "node2": "idle", "node3": "idle"}, c.sinfo()
        out = os.path.join(tmp, "job-%j.out")
        a = c.sbatch("--job-name", "a", "--partition", c.PARTITION, "--exclusive",
                     "--output", out, "--wrap", "sleep 30")
        # The launcher's options: --time and --gres too.
        b = c.sbatch("--job-name", "b", "--partition", c.PARTITION, "--exclusive",
                     "--time", "5", "--gres", "gpu:1",
                     "--output", out, "--wrap", "sleep 30")
        ja, jb = c.wait_job(a, ["RUNNING"]), c.wait_job(b, ["RUNNING"])
        assert ja["name"] == "a" and jb["name"] == "b", (ja, jb)
        assert {ja["node"], jb["node"]} <= set(c.static) and ja["node"] != jb["node"], (ja, jb)
        pa = wait_running_pids(c, a, b"sleep 30")
        pb = wait_running_pids(c, b, b"sleep 30")
        t1 = time.time()
        c.run("scancel", a)
        c.wait_job(a, ["GONE"], timeout=30)
        wait_for("job %s's processes gone" % a, lambda: not job_pids(a))
        print("scancel: job and processes gone in %.1f s" % (time.time() - t1), flush=True)
        assert not [p for p in pa if alive(p)], pa
        assert c.wait_job(b, ["RUNNING"])["node"] == jb["node"]
        assert set(job_pids(b)) >= set(pb), (pb, job_pids(b))
        env_b = open("/proc/%d/environ" % pb[0], "rb").read().split(b"\0")
        assert b"CUDA_VISIBLE_DEVICES=0" in env_b, [e for e in env_b if b"CUDA" in e]

        # The shell and its sleep ignore SIGTERM: scancel's SIGKILL after KillWait ends them.
        s = c.sbatch("--job-name", "stubborn", "--partition", c.PARTITION, "--exclusive",
                     "--output", out, "--wrap", "trap '' TERM; sleep 60; sleep 60")
        ps = wait_running_pids(c, s, b"sleep 60")
        t1 = time.time()
        c.run("scancel", s)
        c.wait_job(s, ["GONE"], timeout=40)
        wait_for("job %s's processes gone" % s, lambda: not job_pids(s), timeout=30)
        print("scancel of a TERM-ignoring job: gone in %.1f s" % (time.time() - t1), flush=True)
        assert not [p for p in ps if alive(p)], ps
        # b still runs: close() must cancel it and kill its sleep.
    assert not job_pids(b), job_pids(b)
    assert not c.ours()
    shutil.rmtree(tmp)  # kept, with its logs, when the test failed


def test_cloud_node(drover):
    tmp = tempfile.mkdtemp(prefix="drover-slurm-")
    with SlurmCluster(tmp, nodes=1, cloud_nodes=1) as c:
        assert c.sinfo().get("nodeC1") == "idle~", c.sinfo()
        assert "POWERED_DOWN" in c.node_state("nodeC1"), c.node_state("nodeC1")
        t0 = time.time()
        j = c.sbatch("--job-name", "cloudy", "--partition", c.PARTITION, "-w", "nodeC1",
                     "--output", os.path.join(tmp, "cloud-%j.out"), "--wrap", "sleep 4")
        job = c.wait_job(j, ["RUNNING"], timeout=90)
        up = time.time() - t0
        print("CLOUD node: submit to RUNNING in %.1f s" % up, flush=True)
        assert job["node"] == "nodeC1", job
        log = open(os.path.join(tmp, "power.log")).read()
        assert "resume ['nodeC1']" in log, log
        c.wait_job(j, ["GONE"], timeout=30)
        assert open(os.path.join(tmp, "cloud-%s.out" % j)).read() == ""
        t1 = time.time()
        wait_for("nodeC1 powered down again",
                 lambda: "POWERED_DOWN" in c.node_state("nodeC1")
                 and "POWERING_DOWN" not in c.node_state("nodeC1"), timeout=60)
        print("CLOUD node: job end to powered down in %.1f s" % (time.time() - t1), flush=True)
        assert "suspend ['nodeC1']" in open(os.path.join(tmp, "power.log")).read()
        wait_for("nodeC1's slurmd stopped",
                 lambda: not [p for p, cmd in c.ours() if "-N nodeC1" in cmd], timeout=15)
    assert not c.ours()
    shutil.rmtree(tmp)


def test_close_on_failure(drover):
    tmp = tempfile.mkdtemp(prefix="drover-slurm-")
    c = None
    try:
        with SlurmCluster(tmp, nodes=1) as c:
            j = c.sbatch("--output", os.path.join(tmp, "x.out"), "--wrap", "sleep 45")
            wait_running_pids(c, j, b"sleep 45")
            raise KeyError("the test failed")
    except KeyError:
        pass
    assert c is not None and not c.ours(), c.ours()
    assert not job_pids(j)
    shutil.rmtree(tmp)


if __name__ == "__main__":
    why = SlurmCluster.available()
    if why:
        print("SKIP:", why)
        sys.exit(77)
    main([test_static_nodes, test_cloud_node, test_close_on_failure])
