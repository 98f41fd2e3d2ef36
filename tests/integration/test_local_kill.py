"""The local target when its `drover submit` dies without stopping what it started: killed
(SIGKILL) while its job runs, killed right after its job ended, or stopped (SIGSTOP). Its
agents, their workers and its coordinator must all go by themselves, and no port stay
bound."""
import os
import re
import signal
import subprocess
import time

from harness import Cluster, main, worker_pid

SPEC = """
name: %s
target: local
nodes: 2
model: {type: mlp, hidden: [32]}
data:
  format: synthetic
  synthetic: {train_samples: %d, test_samples: 500, features: 16, classes: 3, seed: 5}
train: {epochs: %d, global_batch: 32, optimizer: {type: sgd, lr: 0.05}}
run_dir: %s
"""

GONE_WITHIN_S = 15  # after the submit is killed: agents at once, the coordinator when idle


def start_submit(c, name, samples, epochs, env=None):
    path = os.path.join(c.tmp, name + ".yaml")
    with open(path, "w") as f:
        f.write(SPEC % (name, samples, epochs, c.runs))
    log = open(os.path.join(c.tmp, "submit-%s.log" % name), "wb")
    return subprocess.Popen([c.drover, "submit", path, "--json"], stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=dict(c.env, **(env or {})))


def wait_job(c, states, timeout=60):
    """The job (the only one) once its state is one of `states`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            jobs = c.request("status", {"limit": 1}, timeout=0.5)[2]["jobs"]
            if jobs and jobs[0]["state"] in states:
                return jobs[0]
        except TimeoutError:
            pass
        time.sleep(0.05)
    raise AssertionError("no job reached %s in %d s:\n%s" % (states, timeout, local_logs(c)))


def local_logs(c):
    """The coordinator and agent logs of the submits, for failure messages."""
    out = []
    for d in sorted(os.listdir(c.state)) if os.path.isdir(c.state) else []:
        if d.startswith("local-"):
            for name in sorted(os.listdir(os.path.join(c.state, d))):
                with open(os.path.join(c.state, d, name), errors="replace") as f:
                    out.append("==== %s/%s\n%s" % (d, name, f.read()[-3000:]))
    return "\n".join(out)


def agent_logs(c, submit_pid):
    d = os.path.join(c.state, "local-%d" % submit_pid)
    return [open(os.path.join(d, n), errors="replace").read()
            for n in sorted(os.listdir(d)) if n.startswith("agent-")]


def wait_gone(c, timeout, ignore=(), only=None):
    """Seconds until no drover process of the cluster (but `ignore`; of the commands in
    `only` when given, and then whatever the ports) and no port is left."""
    t0 = time.time()
    while True:
        procs, ports = c.leftovers()
        procs = [p for p in procs if int(p.split(":")[0]) not in ignore]
        if only:
            procs = [p for p in procs if any(" %s " % o in p for o in only)]
            ports = []
        if not procs and not ports:
            return time.time() - t0
        if time.time() - t0 > timeout:
            raise AssertionError("left after %.0f s: %r, ports %r\n%s"
                                 % (timeout, procs, ports, local_logs(c)))
        time.sleep(0.1)


def kill_leftovers(c):
    for p in c.leftovers()[0]:
        try:
            os.kill(int(p.split(":")[0]), signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_submit_sigkilled_while_its_job_runs(drover):
    c = Cluster(drover)
    try:
        p = start_submit(c, "running", 30000, 200)
        job = wait_job(c, ("running",))
        deadline = time.time() + 30
        while time.time() < deadline and not (worker_pid(job["run_dir"], 0) and
                                              worker_pid(job["run_dir"], 1)):
            time.sleep(0.05)
        assert worker_pid(job["run_dir"], 0) and worker_pid(job["run_dir"], 1), local_logs(c)
        time.sleep(1.0)  # training, not starting
        p.kill()
        p.wait()
        t0 = time.time()
        workers = wait_gone(c, GONE_WITHIN_S, only=("agent", "worker"))
        took = wait_gone(c, GONE_WITHIN_S - (time.time() - t0)) + workers
        print("submit SIGKILLed while its job ran: agents and workers gone in %.1f s, "
              "all (coordinator, ports) in %.1f s" % (workers, took))
        for log in agent_logs(c, p.pid):
            assert re.search(r"its parent \(pid %d\) is gone: stopping its workers" % p.pid,
                             log), log[-3000:]
            assert "stopping worker pid" in log, log[-3000:]
    finally:
        kill_leftovers(c)
        c.close()


def test_submit_sigkilled_when_its_job_has_ended(drover):
    c = Cluster(drover)
    try:
        p = start_submit(c, "ended", 3000, 1)
        wait_job(c, ("succeeded",))
        p.kill()  # while it waits for its agents to be idle, before it stops them
        p.wait()
        agents = [l for l in c.leftovers()[0] if " agent " in l]
        took = wait_gone(c, GONE_WITHIN_S)
        print("submit SIGKILLed after its job ended (%d agents left): all gone in %.1f s"
              % (len(agents), took))
        # The agents it had not stopped yet went because it was gone.
        gone = [log for log in agent_logs(c, p.pid)
                if re.search(r"its parent \(pid %d\) is gone" % p.pid, log)]
        assert len(gone) >= len(agents), (agents, agent_logs(c, p.pid))
    finally:
        kill_leftovers(c)
        c.close()


def test_submit_stopped(drover):
    c = Cluster(drover)
    try:
        # Steps slowed to 2 ms (its agents' workers inherit it): running for about 2 s.
        p = start_submit(c, "stopped", 3000, 10, env={"DROVER_FAULT_SLOW_MS": "2"})
        wait_job(c, ("running",))
        p.send_signal(signal.SIGSTOP)
        wait_job(c, ("succeeded",))
        # The coordinator exits 10 s after its last job; the agents 15 s after they last
        # heard from it.
        took = wait_gone(c, 40, ignore=(p.pid,))
        print("submit SIGSTOPped: all but it gone %.1f s after its job ended" % took)
        for log in agent_logs(c, p.pid):
            assert "no coordinator heard from for" in log, log[-3000:]
    finally:
        p.kill()
        p.wait()
        kill_leftovers(c)
        c.close()


if __name__ == "__main__":
    main([test_submit_sigkilled_while_its_job_runs,
          test_submit_sigkilled_when_its_job_has_ended,
          test_submit_stopped])
