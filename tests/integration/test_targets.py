"""Managed compute targets with the command launcher (agents as local processes), with a
real coordinator reading a targets file:

- a 2-node job on a cold target (min_nodes 0) launches 2 agents, trains, and idle_timeout
  later the target is back to 0 nodes with no agent process left;
- a job for an unknown target, or for more nodes than max_nodes, is refused at submission;
- two 2-node jobs on a max_nodes 3 target: the second waits with a reason naming the
  shortfall and starts when the first ends;
- a target whose launches fail: each failure is detected, counted, retried with back-off
  and shown (drover targets, the job's reason, an ev_target event);
- the coordinator SIGKILLed with 2 nodes up and restarted: it finds them (no node launched
  twice, none leaked) and the job completes.
"""
import json
import os
import re
import signal
import time

from harness import cluster, main, unpack, wait_for

ENV = {"DROVER_HEARTBEAT_MS": "200", "DROVER_PEER_TIMEOUT_MS": "3000",
       "DROVER_RECONNECT_MS": "300"}

TARGETS = """
targets:
  - name: pool
    launcher: command
    max_nodes: 3
    idle_timeout: 3
    launch_timeout: 20
    agent_args: [--host, 127.0.0.1, --allow-dir, /tmp]
    command: {start: "{agent}"}
  - name: spot
    launcher: command
    max_nodes: 2
    idle_timeout: 3
    launch_timeout: 20
    preemptible: true
    agent_args: [--host, 127.0.0.1, --allow-dir, /tmp]
    command: {start: "{agent}"}
  - name: mute
    launcher: command
    max_nodes: 1
    launch_timeout: 2
    command: {start: "exec sleep 300"}
  - name: broken
    launcher: command
    max_nodes: 2
    launch_timeout: 20
    command: {start: "echo no such cloud >&2; exit 3"}
"""

JOB = """
name: %s
target: %s
nodes: %d
model: {type: mlp, hidden: [16]}
data:
  format: synthetic
  synthetic: {train_samples: 2000, test_samples: 200, features: 8, classes: 3, seed: 3}
train: {epochs: %d, global_batch: 50, checkpoint_every: 20, optimizer: {type: sgd, lr: 0.05}}
run_dir: %s
"""


def start(c):
    path = os.path.join(c.tmp, "targets.yaml")
    with open(path, "w") as f:
        f.write(TARGETS)
    c.coord = c._spawn(["coordinator", "--bind", c.endpoint, "--state-dir", c.state,
                        "--targets", path], "coordinator.log")
    wait_for(lambda: try_request(c), 15, "the coordinator")


def try_request(c):
    try:
        c.request("status", {"limit": 1}, timeout=0.5)
        return True
    except TimeoutError:
        return False


def target(c, name):
    r = c.request("targets", {})
    assert r[1] == "target_list", r
    return next(t for t in r[2]["targets"] if t["name"] == name)


def submit(c, name, tgt, nodes, epochs=1):
    return c.request("submit", {"spec": JOB % (name, tgt, nodes, epochs, c.runs)})


def job(c, j):
    return c.request("status", {"job": j})[2]["jobs"][0]


def agent_procs(c):
    """pids of the drover agents this cluster's coordinator launched."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = open("/proc/%s/cmdline" % pid, "rb").read().split(b"\0")
            state = open("/proc/%s/stat" % pid).read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and b"agent" in cmd and c.endpoint.encode() in cmd and b"--node" in cmd:
            out.append(int(pid))
    return out


def finished(c, j):
    return (lambda s: s["state"] in ("succeeded", "failed", "cancelled") and s)(job(c, j))


def test_cold_target_scales_up_and_down(drover):
    with cluster(drover, env=ENV) as c:
        start(c)
        t = target(c, "pool")
        assert (t["kind"], t["launcher"], t["min_nodes"], t["max_nodes"]) == \
            ("managed", "command", 0, 3), t
        assert t["idle"] + t["busy"] + t["starting"] == 0, t
        sub = c.subscribe()
        sub.setsockopt(__import__("zmq").SUBSCRIBE, b"target/")
        t0 = time.time()
        r = submit(c, "cold", "pool", 2)
        assert r[1] == "submitted", r
        j = r[2]["job"]
        first_step = None
        while first_step is None and time.time() - t0 < 60:
            if job(c, j)["step"] > 0:
                first_step = time.time() - t0
            time.sleep(0.05)
        st = wait_for(lambda: finished(c, j), 120, "job %d to end" % j)
        assert st["state"] == "succeeded", st
        gone = wait_for(lambda: (lambda x: x["idle"] + x["busy"] + x["starting"] +
                                 x["stopping"] == 0 and x)(target(c, "pool")), 30,
                        "the target to scale down to 0")
        t_down = time.time() - t0
        wait_for(lambda: not agent_procs(c), 15, "the agents' processes to exit")
        assert gone["launched"] == 2 and gone["failed"] == 0, gone
        events = []
        while sub.poll(100):
            topic, frame = sub.recv_multipart()
            if topic.startswith(b"target/"):
                events.append(unpack(frame)[2]["event"])
        assert events.count("scale_up") == 2 and events.count("node_up") == 2, events
        assert events.count("scale_down") == 2, events
        print("cold command target: submit -> first step %.2f s; 2 nodes launched, trained, "
              "scaled to 0 (idle_timeout 3 s) %.1f s after submission; events %s"
              % (first_step, t_down, events))


def test_refused_at_submit(drover):
    with cluster(drover, env=ENV) as c:
        start(c)
        r = submit(c, "nowhere", "cloud9", 1)
        assert r[1] == "error" and r[2]["code"] == "invalid", r
        assert r[2]["message"] == ("target cloud9: no such target (targets: local, attached, "
                                   "pool, spot, mute, broken)"), r
        r = submit(c, "huge", "pool", 4)
        assert r[1] == "error" and r[2]["message"] == \
            "nodes 4: target pool has at most 3 (max_nodes)", r


def test_second_job_waits_for_max_nodes(drover):
    with cluster(drover, env=ENV) as c:
        start(c)
        a = submit(c, "first", "pool", 2, epochs=40)[2]["job"]
        b = submit(c, "second", "pool", 2)[2]["job"]
        wait_for(lambda: job(c, a)["state"] == "running", 60, "the first job to run")
        # (Once the third node is up: while it starts the reason says so, "1 starting".)
        why = wait_for(lambda: (lambda s: "at max_nodes 3" in s["reason"] and
                                "0 starting" in s["reason"] and s["reason"])(job(c, b)), 30,
                       "the second job's reason")
        assert why.startswith("needs 2 nodes on pool: 1 idle, 0 starting, 2 busy"), why
        assert job(c, b)["state"] == "queued"
        st = wait_for(lambda: finished(c, b), 180, "the second job to end")
        assert st["state"] == "succeeded", st
        assert finished(c, a)["state"] == "succeeded"
        assert target(c, "pool")["launched"] == 3, target(c, "pool")
        print("max_nodes 3, two 2-node jobs: the second waited with '%s', then ran" % why)


def test_launch_failures_retried_and_reported(drover):
    with cluster(drover, env=ENV) as c:
        start(c)
        j = submit(c, "doomed", "broken", 1)[2]["job"]
        t = wait_for(lambda: (lambda x: x["failed"] >= 2 and x)(target(c, "broken")), 30,
                     "two launch failures")
        assert "exited with code 3: no such cloud" in t["last_error"], t
        assert t["retry_in_s"] > 0, t
        why = job(c, j)["reason"]
        assert re.search(r"launch failure\(s\), next try in \d+ s \(last: broken-\d+: its process "
                         r"\(the start command\) exited with code 3: no such cloud\)", why), why
        r = c.drover_cli("targets")
        assert "broken" in r.stdout and "no such cloud" in r.stdout, r.stdout
        c.drover_cli("cancel", str(j))
        print("failing launches: %d failures, reason '%s'" % (t["failed"], why))


def test_coordinator_restart_finds_its_nodes(drover):
    with cluster(drover, env=ENV) as c:
        start(c)
        j = submit(c, "survivor", "pool", 2, epochs=60)[2]["job"]
        wait_for(lambda: job(c, j)["step"] >= 40, 60, "the job to train")
        before = sorted(agent_procs(c))
        assert len(before) == 2, before
        c.coord.send_signal(signal.SIGKILL)
        c.coord.wait()
        start(c)  # the same state directory
        st = wait_for(lambda: finished(c, j), 240, "the job to end after the restart")
        assert st["state"] == "succeeded", st
        t = target(c, "pool")
        assert t["launched"] == 0 and t["failed"] == 0, t  # nothing launched again
        with open(os.path.join(c.tmp, "coordinator.log"), errors="replace") as f:
            log = f.read()
        assert log.count("found from before the restart") == 2, log[-3000:]
        assert log.count("scale_up") == 2, log[-3000:]  # the first coordinator's two only
        wait_for(lambda: not agent_procs(c), 30, "the nodes to be stopped when idle")
        print("coordinator SIGKILL with 2 nodes up: restarted, found both (pids %s), job "
              "completed, nothing launched again, both stopped when idle" % before)


def cmdline(pid):
    try:
        with open("/proc/%s/cmdline" % pid, "rb") as f:
            return f.read()
    except OSError:
        return b""


def test_launch_timeout(drover):
    # A node that starts but never registers (a machine that never boots): stopped after
    # launch_timeout, counted, retried after the back-off; its process is gone.
    with cluster(drover, env=ENV) as c:
        start(c)
        j = submit(c, "waits", "mute", 1)[2]["job"]
        t = wait_for(lambda: (lambda x: x["failed"] >= 2 and x)(target(c, "mute")), 40,
                     "two launch timeouts")
        assert "did not register within launch_timeout (2 s)" in t["last_error"], t
        assert "launch failure(s)" in job(c, j)["reason"], job(c, j)
        c.drover_cli("cancel", str(j))
        c.stop_coordinator()
        left = [p for p in os.listdir("/proc") if p.isdigit() and b"sleep\x00300" in cmdline(p)]
        assert not left, left
        print("a node that never registers: %d launch failures, '%s'" % (t["failed"], t["last_error"]))


def workers_of(agent_pid):
    out = []
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and int(open("/proc/%s/stat" % pid).read().rsplit(")", 1)[1].split()[1]) == agent_pid:
                out.append(int(pid))
        except OSError:
            pass
    return out


def test_preemption_is_no_restart(drover):
    # As a Slurm preemption or a spot reclaim does: SIGTERM to a node's agent and its workers
    # at once. The job (max_restarts 0: a counted restart would fail it) re-forms without
    # the node, the autoscaler launches a replacement, the job takes it in and completes.
    with cluster(drover, env=ENV) as c:
        start(c)
        spec = (JOB % ("spot-job", "spot", 2, 200, c.runs)).replace(
            "nodes: 2\n", "nodes: 2\nmin_nodes: 1\nmax_restarts: 0\n")
        r = c.request("submit", {"spec": spec})
        assert r[1] == "submitted", r
        j = r[2]["job"]
        wait_for(lambda: job(c, j)["step"] >= 40, 60, "the job to train")
        victim = sorted(agent_procs(c))[-1]
        kids = workers_of(victim)
        for pid in [victim] + kids:
            os.kill(pid, signal.SIGTERM)
        st = wait_for(lambda: finished(c, j), 240, "the job to end")
        assert st["state"] == "succeeded", st
        t = target(c, "spot")
        assert t["launched"] == 3, t  # the replacement
        with open(os.path.join(c.tmp, "coordinator.log"), errors="replace") as f:
            log = f.read()
        reformed = re.findall(r"re-formed with (\d) worker\(s\)[^;]*; generation \d+, restart (\d) of 0",
                              log)
        assert reformed and all(n == "0" for _, n in reformed), reformed
        print("preemptible target, max_restarts 0: SIGTERM to a node's agent and %d worker(s): "
              "re-formations %s (worlds, restart counts), a replacement launched, job done"
              % (len(kids), reformed))


if __name__ == "__main__":
    main([test_refused_at_submit, test_cold_target_scales_up_and_down,
          test_second_job_waits_for_max_nodes, test_launch_failures_retried_and_reported,
          test_coordinator_restart_finds_its_nodes, test_preemption_is_no_restart,
          test_launch_timeout])
