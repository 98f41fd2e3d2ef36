#!/usr/bin/python3
"""Cold start and scale-down of managed targets, per launcher, on this machine.

For each launcher (command: agents as local processes; ssh: a real sshd on 127.0.0.2/.3;
slurm: a real Slurm cluster of 4 slurmd on loopback), REPEAT times: a 2-node job is
submitted to the cold target (min_nodes 0), and it measures
  - submit -> first step: until `drover status` shows the job's first training step;
  - idle -> 0 nodes: from the job's end until the target shows no node and no agent is left
    (idle_timeout 1 s is part of it).
Prints the median (min-max) of each. The ssh and Slurm rows are skipped where their
fixtures cannot run (not root, packages missing).

    /usr/bin/python3 scripts/bench-targets.py build-nocuda/cli/drover [REPEAT]
(Debian's python3, with python3-zmq and python3-msgpack, as the integration tests.)
"""
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))

from harness import Cluster, wait_for  # noqa: E402
import sshfix  # noqa: E402
import test_targets as tt  # noqa: E402
from slurmfix import SlurmCluster  # noqa: E402

COMMON = """    max_nodes: 2
    idle_timeout: 1
    launch_timeout: 60
    agent_args: [--host, 127.0.0.1, --allow-dir, /tmp]
"""


def targets_yaml(kind, extra):
    return "targets:\n  - name: cold\n    launcher: %s\n%s%s" % (kind, COMMON, extra)


def one_run(c, name):
    t0 = time.time()
    r = tt.submit(c, name, "cold", 2)
    assert r[1] == "submitted", r
    j = r[2]["job"]
    first = None
    while first is None:
        assert time.time() - t0 < 120, "no first step"
        if tt.job(c, j)["step"] > 0:
            first = time.time() - t0
        time.sleep(0.02)
    st = wait_for(lambda: tt.finished(c, j), 120, "the job")
    assert st["state"] == "succeeded", st
    t_end = time.time()
    wait_for(lambda: (lambda x: x["idle"] + x["busy"] + x["starting"] + x["stopping"] == 0)(
        tt.target(c, "cold")) and not tt.agent_procs(c), 120, "scale-down")
    return first, time.time() - t_end


def bench(drover, kind, repeat, setup):
    c = Cluster(drover, env=tt.ENV)
    firsts, downs = [], []
    try:
        with setup(c) as (extra, env):
            path = os.path.join(c.tmp, "targets.yaml")
            with open(path, "w") as f:
                f.write(targets_yaml(kind, extra))
            c.coord = c._spawn(["coordinator", "--bind", c.endpoint, "--state-dir", c.state,
                                "--targets", path], "coordinator.log", env=env)
            wait_for(lambda: tt.try_request(c), 15, "the coordinator")
            for i in range(repeat):
                a, b = one_run(c, "cold-%d" % i)
                firsts.append(a)
                downs.append(b)
            c.stop_coordinator()
    finally:
        c.close()
    return firsts, downs


class Plain:
    def __init__(self, c):
        pass

    def __enter__(self):
        return ("    command: {start: \"{agent}\"}\n", None)

    def __exit__(self, *a):
        return False


class Ssh:
    def __init__(self, c):
        self.s = sshfix.SshServer(c.tmp)

    def __enter__(self):
        s = self.s
        return ("    ssh: {hosts: [127.0.0.2, 127.0.0.3], port: %d, user: root, identity: %s, "
                "known_hosts: %s, options: [-o, IdentitiesOnly=yes]}\n"
                % (s.port, s.key, s.known_hosts), None)

    def __exit__(self, *a):
        self.s.close()
        return False


class Slurm:
    def __init__(self, c):
        self.s = SlurmCluster(os.path.join(c.tmp, "slurm"), nodes=4)

    def __enter__(self):
        return ("    slurm: {partition: drover}\n", self.s.full_env())

    def __exit__(self, *a):
        self.s.close(check=False)
        return False


def fmt(xs):
    return "%.2f (%.2f-%.2f)" % (statistics.median(xs), min(xs), max(xs))


def main():
    drover = os.path.abspath(sys.argv[1])
    repeat = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    rows = []
    for kind, setup, why in (("command", Plain, None), ("ssh", Ssh, sshfix.unavailable()),
                             ("slurm", Slurm, SlurmCluster.available())):
        if why:
            rows.append((kind, "skipped: " + why, ""))
            continue
        firsts, downs = bench(drover, kind, repeat, setup)
        rows.append((kind, fmt(firsts), fmt(downs)))
    print("managed targets, 2-node job on a cold target, %d runs each, %d CPUs" %
          (repeat, os.cpu_count()))
    print("| launcher | submit -> first step, s: median (min-max) | job end -> 0 nodes, s "
          "(idle_timeout 1 s) |")
    print("| --- | --- | --- |")
    for r in rows:
        print("| %s | %s | %s |" % r)


if __name__ == "__main__":
    main()
