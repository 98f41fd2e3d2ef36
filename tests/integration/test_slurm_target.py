"""A managed target through the Slurm launcher, on a real Slurm cluster the test starts
itself (slurmfix.py: munged, slurmctld, 4 slurmd on loopback):

- a 2-node job on the cold target (min_nodes 0, max_nodes 4) starts 2 agents as Slurm jobs
  (sbatch --exclusive, agents named after SLURMD_NODENAME), trains to completion, and
  idle_timeout later the Slurm jobs are gone (squeue empty) and the target has 0 nodes;
- scancel of one node's Slurm job mid-training (a preemption, on a preemptible target with
  max_restarts 0): the job carries on without it, the autoscaler starts a replacement, the
  job completes, and no restart was counted;
- the coordinator SIGKILLed with 2 Slurm nodes up and restarted: it finds them (launches
  none), the job completes, and the Slurm jobs end when idle;
- a node whose Slurm job never starts (pending): a launch failure at launch_timeout, its
  job cancelled, retried;
- a Slurm launch that fails (a partition that does not exist): detected, retried, reported.
Exits 77 where the Slurm fixture cannot run (not root, Slurm not installed)."""
import os
import re
import subprocess
import sys
import time

from harness import cluster, main, wait_for
from slurmfix import SlurmCluster
import test_targets as tt

TARGETS = """
targets:
  - name: hpc
    launcher: slurm
    max_nodes: 4
    idle_timeout: 3
    launch_timeout: 60
    preemptible: true
    agent_args: [--host, 127.0.0.1, --allow-dir, /tmp]
    slurm: {partition: drover, time_limit: "10"}
  - name: late
    launcher: slurm
    max_nodes: 1
    launch_timeout: 3
    slurm: {partition: drover, sbatch_args: [--begin=now+3600]}
  - name: nowhere
    launcher: slurm
    max_nodes: 1
    launch_timeout: 30
    slurm: {partition: no-such-partition}
"""


def start(c, s):
    path = os.path.join(c.tmp, "targets.yaml")
    with open(path, "w") as f:
        f.write(TARGETS)
    c.coord = c._spawn(["coordinator", "--bind", c.endpoint, "--state-dir", c.state,
                        "--targets", path], "coordinator.log", env=s.full_env())
    wait_for(lambda: tt.try_request(c), 15, "the coordinator")


def ours(s):
    return [j for j in s.squeue() if j["name"].startswith("drover-")]


def log_of(c):
    with open(os.path.join(c.tmp, "coordinator.log"), errors="replace") as f:
        return f.read()


def test_slurm_target(drover):
    with cluster(drover, env=tt.ENV) as c:
        with SlurmCluster(os.path.join(c.tmp, "slurm"), nodes=4) as s:
            start(c, s)
            # Cold target, 2 nodes: Slurm jobs, a trained job, then back to none.
            t0 = time.time()
            j = tt.submit(c, "hpc-job", "hpc", 2)[2]["job"]
            first = None
            while first is None and time.time() - t0 < 90:
                if tt.job(c, j)["step"] > 0:
                    first = time.time() - t0
                time.sleep(0.05)
            running = ours(s)
            st = wait_for(lambda: tt.finished(c, j), 120, "the job to end")
            assert st["state"] == "succeeded", st
            assert len(running) == 2 and all(x["state"] == "RUNNING" for x in running), running
            agents = sorted(a["agent_id"] for a in c.request("agents", {})[2]["agents"])
            wait_for(lambda: not ours(s), 60, "the Slurm jobs to end (idle_timeout 3 s)")
            t_down = time.time() - t0
            t = wait_for(lambda: (lambda x: x["idle"] + x["busy"] + x["starting"] +
                                  x["stopping"] == 0 and x)(tt.target(c, "hpc")), 30,
                         "the target to show 0 nodes")
            print("slurm target: agents %s on Slurm jobs %s; submit -> first step %.2f s; "
                  "squeue empty %.1f s after submission" % (agents, [x["id"] for x in running],
                                                            first, t_down))
            assert set(agents) <= {"node1", "node2", "node3", "node4"}, agents

            # Preemption: scancel one node's Slurm job mid-training.
            spec = (tt.JOB % ("preempted", "hpc", 2, 400, c.runs)).replace(
                "nodes: 2\n", "nodes: 2\nmin_nodes: 1\nmax_restarts: 0\n")
            spec = spec.replace("train: {", "train: {commit_every: 20, ")
            j = c.request("submit", {"spec": spec})[2]["job"]
            wait_for(lambda: tt.job(c, j)["step"] >= 60, 90, "the second job to train")
            victim = ours(s)[0]
            launched = tt.target(c, "hpc")["launched"]
            s.run("scancel", victim["id"])
            st = wait_for(lambda: tt.finished(c, j), 240, "the preempted job to end")
            assert st["state"] == "succeeded", st
            log = log_of(c)
            counts = re.findall(r"job %d re-formed with \d worker\(s\)[^;]*; generation \d+, "
                                r"restart (\d) of 0" % j, log)
            assert counts and set(counts) == {"0"}, counts
            t = tt.target(c, "hpc")
            assert t["launched"] > launched, t  # the replacement
            print("scancel of Slurm job %s (node %s) mid-training: re-formed %d time(s), restart "
                  "counts %s, a replacement launched, job done" % (
                      victim["id"], victim["node"], len(counts), counts))

            # The coordinator SIGKILLed with 2 Slurm nodes up: the restarted one finds them.
            wait_for(lambda: not ours(s), 60, "the nodes of the preempted job to go")
            j = tt.submit(c, "outlives", "hpc", 2, epochs=400)[2]["job"]
            wait_for(lambda: tt.job(c, j)["step"] >= 40, 90, "the third job to train")
            before = sorted(x["id"] for x in ours(s))
            c.coord.send_signal(__import__("signal").SIGKILL)
            c.coord.wait()
            start(c, s)
            st = wait_for(lambda: tt.finished(c, j), 240, "the job to end after the restart")
            assert st["state"] == "succeeded", st
            after = tt.target(c, "hpc")
            assert after["launched"] == 0, after  # nothing launched twice
            assert log_of(c).count("found from before the restart") >= 2, log_of(c)[-2000:]
            wait_for(lambda: not ours(s), 60, "its Slurm jobs to end when idle")
            print("coordinator SIGKILL with Slurm jobs %s up: restarted, found them, launched "
                  "none, the job completed, both ended when idle" % before)

            # A node that never comes up (its Slurm job stays pending): a launch failure at
            # launch_timeout, its job cancelled, retried after the back-off.
            j = tt.submit(c, "never", "late", 1)[2]["job"]
            t = wait_for(lambda: (lambda x: x["failed"] >= 2 and x)(tt.target(c, "late")), 40,
                         "two launch timeouts")
            assert "did not register within launch_timeout (3 s)" in t["last_error"], t
            assert len([x for x in ours(s) if x["state"] == "PENDING"]) <= 1, ours(s)
            c.drover_cli("cancel", str(j))
            print("a Slurm node that never comes up: %d launch failures (%s), its jobs cancelled"
                  % (t["failed"], t["last_error"]))

            # A launch Slurm refuses.
            j = tt.submit(c, "refused", "nowhere", 1)[2]["job"]
            t = wait_for(lambda: (lambda x: x["failed"] >= 1 and x)(tt.target(c, "nowhere")), 30,
                         "a launch failure")
            assert "invalid partition" in t["last_error"].lower(), t
            c.drover_cli("cancel", str(j))
            print("sbatch refused: %s" % t["last_error"])
            c.stop_coordinator()
            wait_for(lambda: not ours(s), 30, "no Slurm job left")


if __name__ == "__main__":
    why = SlurmCluster.available()
    if why:
        print("skipped: " + why)
        sys.exit(77)
    main([test_slurm_target])
