"""Command jobs: the user's own program per rank, with real agents and workers on loopback.
The program here is a small Python script that speaks the documented report protocol
itself (pyzmq + msgpack), so these tests need nothing but the drover binary:

- each rank gets torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
  GROUP_RANK, MASTER_ADDR, MASTER_PORT, TORCHELASTIC_RESTART_COUNT) and drover's; its
  reports reach drover status; its output lines land in the rank's log, time-stamped;
- a rank that exits non-zero: named, the whole job restarts (TORCHELASTIC_RESTART_COUNT 1)
  and completes; past max_restarts it fails with the reason;
- a rank SIGKILLed: named (its signal and last step), restarted;
- a rank that stops reporting (SIGSTOP): killed after hang_timeout, named with its last step;
- SIGTERM to an agent: its program's report acks say stop, it exits 0, and the job
  restarts on the agents left without counting it;
- a command that does not exist, a workdir that does not exist: a clear reason;
- a program that never reports still runs to completion.
"""
import json
import os
import re
import signal
import time

from harness import cluster, main, wait_for, worker_pid
from harness import program_pid as harness_program_pid

ENV = {"DROVER_HEARTBEAT_MS": "200", "DROVER_PEER_TIMEOUT_MS": "3000"}

PROGRAM = r'''
import json, os, signal, sys, time
import zmq, msgpack
env = {k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
       "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT", "DROVER_JOB",
       "DROVER_RANK", "DROVER_RUN_DIR", "DROVER_CHECKPOINT_DIR", "DROVER_REPORT")}
rank, restart = int(env["RANK"]), int(env["TORCHELASTIC_RESTART_COUNT"])
out = os.path.join(env["DROVER_RUN_DIR"], "env-%d-%d.json" % (rank, restart))
json.dump(env, open(out, "w"))
print("hello from rank %d of %s, restart %d" % (rank, env["WORLD_SIZE"], restart), flush=True)
steps, pause, fail = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
sock = zmq.Context().socket(zmq.DEALER)
sock.setsockopt(zmq.LINGER, 0)
sock.connect(env["DROVER_REPORT"])
stop = False
def on_term(sig, frame):  # as the drover module does: a preemption notice
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
for step in range(1, steps + 1):
    time.sleep(pause)
    if fail == "silent":
        continue
    sock.send(msgpack.packb([1, "report", {"step": step, "loss": 1.0 / step, "epoch": 0,
                                           "steps_total": steps, "samples": 32}]))
    if sock.poll(2000):
        stop = stop or msgpack.unpackb(sock.recv(), raw=False)[2]["stop"] == 1
    if stop:
        print("rank %d: asked to stop at step %d: checkpointing and exiting" % (rank, step),
              flush=True)
        sys.exit(0)
    if fail == "exit" and rank == 1 and restart == 0 and step == 5:
        print("rank 1 gives up", flush=True)
        sys.exit(3)
print("rank %d done" % rank, flush=True)
'''


def job_spec(c, name, nodes, steps, pause, fail="none", extra="", command=None, workdir=None):
    return ("name: %s\ntarget: attached\nnodes: %d\n"
            "command: %s\nworkdir: %s\nrun_dir: %s\n%s"
            % (name, nodes, json.dumps(command or ["/usr/bin/python3", "prog.py", str(steps),
                                                    str(pause), fail]),
               workdir or c.tmp, c.runs, extra))


def setup(c, agents=2):
    with open(os.path.join(c.tmp, "prog.py"), "w") as f:
        f.write(PROGRAM)
    os.chmod(c.tmp, 0o755)
    c.start_coordinator()
    for i in range(agents):
        c.start_agent("a%d" % i, args=["--allow-dir", c.tmp])
    c.wait_agents(agents)


def submit(c, spec):
    r = c.request("submit", {"spec": spec})
    assert r[1] == "submitted", r
    return r[2]["job"], r[2]["run_dir"]


def job(c, j):
    return c.request("status", {"job": j})[2]["jobs"][0]


def finished(c, j):
    return (lambda s: s["state"] in ("succeeded", "failed", "cancelled") and s)(job(c, j))


def program_pid(run_dir, rank):
    return harness_program_pid(run_dir, rank, "prog.py")


def test_environment_reports_logs_and_restart(drover):
    with cluster(drover, env=ENV) as c:
        setup(c)
        j, run = submit(c, job_spec(c, "envs", 2, 30, 0.05, "exit", "max_restarts: 2\n"))
        st = wait_for(lambda: finished(c, j), 120, "the job to end")
        assert st["state"] == "succeeded", st
        envs = {}
        for f in os.listdir(run):
            m = re.match(r"env-(\d)-(\d)\.json$", f)
            if m:
                envs[(int(m.group(1)), int(m.group(2)))] = json.load(open(os.path.join(run, f)))
        assert sorted(envs) == [(0, 0), (0, 1), (1, 0), (1, 1)], sorted(envs)
        e0, e1 = envs[(0, 1)], envs[(1, 1)]
        assert (e0["RANK"], e0["WORLD_SIZE"], e0["LOCAL_RANK"], e0["LOCAL_WORLD_SIZE"],
                e0["GROUP_RANK"]) == ("0", "2", "0", "1", "0"), e0
        assert (e1["RANK"], e1["GROUP_RANK"], e1["TORCHELASTIC_RESTART_COUNT"]) == \
            ("1", "1", "1"), e1
        assert e0["MASTER_ADDR"] == e1["MASTER_ADDR"] == "127.0.0.1", (e0, e1)
        assert e0["MASTER_PORT"] == e1["MASTER_PORT"] and int(e0["MASTER_PORT"]) > 0, (e0, e1)
        assert e0["DROVER_CHECKPOINT_DIR"] == os.path.join(run, "checkpoints"), e0
        assert e0["DROVER_JOB"] == str(j) and e0["DROVER_REPORT"].startswith("ipc://"), e0
        log = open(os.path.join(c.tmp, "coordinator.log"), errors="replace").read()
        m = re.search(r"restarting \(restart 1 of 2\) after: rank 1 \(agent a1\): "
                      r"its program exited with code 3 after step 5; last output: rank 1 gives up",
                      log)
        assert m, log[-3000:]
        assert st["step"] == 30, st  # its reports reached the coordinator
        steps = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))
                 if '"type":"step"' in l]
        assert steps and steps[-1]["step"] == 30 and abs(steps[-1]["loss"] - 1 / 30) < 1e-6, \
            steps[-3:]  # rank 0's reports, as step records
        rank_log = open(os.path.join(run, "logs", "rank-1.log"), errors="replace").read()
        assert re.search(r"^\d\d:\d\d:\d\d\.\d{3} \[rank 1\] hello from rank 1 of 2, restart 1$",
                         rank_log, re.M), rank_log[-2000:]
        # drover logs: both ranks, prefixed by rank and agent, from the coordinator.
        r = c.drover_cli("logs", str(j))
        assert r.returncode == 0, r.stderr
        for rank, agent in ((0, "a0"), (1, "a1")):
            assert re.search(r"^rank %d %s \| \d\d:\d\d:\d\d\.\d{3} hello from rank %d of 2, "
                             r"restart 1$" % (rank, agent, rank), r.stdout, re.M), r.stdout[-2000:]
        assert "rank 1 a1 | " in r.stdout and "rank 1 gives up" in r.stdout, r.stdout[-2000:]
        one = c.drover_cli("logs", str(j), "--rank", "1")
        assert one.returncode == 0 and one.stdout and \
            all(l.startswith("rank 1 ") for l in one.stdout.splitlines()), one.stdout[-1000:]
        bad = c.drover_cli("logs", "999")
        assert bad.returncode == 1 and "999" in bad.stderr, (bad.stdout, bad.stderr)
        print("environment, reports, logs: ok; %s; drover logs: %d lines"
              % (m.group(0), len(r.stdout.splitlines())))


def test_killed_and_hung_ranks(drover):
    with cluster(drover, env=ENV) as c:
        setup(c)
        j, run = submit(c, job_spec(c, "killed", 2, 400, 0.05, "none", "max_restarts: 2\n"))
        wait_for(lambda: job(c, j)["step"] >= 10, 60, "reports")
        t0 = time.time()
        os.kill(wait_for(lambda: program_pid(run, 1), 10, "rank 1's program"), signal.SIGKILL)
        pat = re.compile(r"restarting \(restart 1 of 2\) after: rank 1 \(agent a1\): "
                         r"its program was killed by signal 9 after step \d+")
        clog = os.path.join(c.tmp, "coordinator.log")
        why = wait_for(lambda: (lambda m: m and m.group(0))(
            pat.search(open(clog, errors="replace").read())), 30, "the restart")
        took = time.time() - t0
        # A program never outlives its worker: SIGKILL of rank 0's worker takes it along.
        wait_for(lambda: job(c, j)["state"] == "running" and program_pid(run, 0), 60,
                 "the restarted job to run")
        prog = program_pid(run, 0)
        os.kill(worker_pid(run, 0), signal.SIGKILL)
        wait_for(lambda: not os.path.exists("/proc/%d" % prog) or
                 open("/proc/%d/stat" % prog).read().rsplit(")", 1)[1].split()[0] == "Z", 10,
                 "the program to die with its worker")
        c.drover_cli("cancel", str(j))
        wait_for(lambda: finished(c, j), 30, "the cancel")
        wait_for(lambda: program_pid(run, 0) is None and program_pid(run, 1) is None, 20,
                 "drover cancel to leave no program behind")
        j, run = submit(c, job_spec(c, "hung", 2, 400, 0.05, "none",
                                    "max_restarts: 0\nhang_timeout: 2\n"))
        wait_for(lambda: job(c, j)["step"] >= 10, 60, "reports")
        os.kill(wait_for(lambda: program_pid(run, 0), 10, "rank 0's program"), signal.SIGSTOP)
        st = wait_for(lambda: finished(c, j), 60, "the hung job to fail")
        assert st["state"] == "failed", st
        assert re.search(r"rank 0 \(agent a0\): its program stopped reporting after "
                         r"step \d+ for \d+ s \(hang_timeout 2 s\): killed", st["reason"]), st
        wait_for(lambda: program_pid(run, 0) is None and program_pid(run, 1) is None, 20,
                 "every rank's program to be stopped")
        print("SIGKILL of rank 1: restarting %.1f s later (%s); SIGSTOP of rank 0: %s"
              % (took, why, st["reason"]))


def test_preempted_agent_stops_program_uncounted(drover):
    with cluster(drover, env=ENV) as c:
        setup(c, agents=3)
        spec = job_spec(c, "spot", 2, 300, 0.03, "none", "max_restarts: 0\nmin_nodes: 1\n")
        j, run = submit(c, spec)
        wait_for(lambda: job(c, j)["step"] >= 10, 60, "reports")
        ranks = job(c, j)["ranks"]
        victim = ranks[1]["agent"]
        c.agents[victim].send_signal(signal.SIGTERM)  # a preemption notice
        st = wait_for(lambda: finished(c, j), 180, "the job to end")
        assert st["state"] == "succeeded", st  # max_restarts 0: a counted restart would fail
        logs = "".join(open(os.path.join(run, "logs", f), errors="replace").read()
                       for f in os.listdir(os.path.join(run, "logs")))
        assert "asked to stop at step" in logs, logs[-2000:]
        log = open(os.path.join(c.tmp, "coordinator.log"), errors="replace").read()
        assert "restart 0 of 0, not counted" in log, log[-3000:]
        print("SIGTERM to agent %s: programs stopped when asked, restarted uncounted, job done"
              % victim)


def test_bad_commands_and_silent_programs(drover):
    with cluster(drover, env=ENV) as c:
        setup(c)
        j, _ = submit(c, job_spec(c, "nocmd", 1, 1, 0, command=["no-such-program-xyz"]))
        st = wait_for(lambda: finished(c, j), 60, "the job to fail")
        assert st["state"] == "failed", st
        assert "command no-such-program-xyz: not found on PATH" in st["reason"], st
        r = c.request("submit", {"spec": job_spec(c, "nodir", 1, 1, 0,
                                                  workdir=os.path.join(c.tmp, "nope"))})
        if r[1] == "submitted":  # refused by the agent, or by the worker
            st = wait_for(lambda: finished(c, r[2]["job"]), 60, "the job to fail")
            assert st["state"] == "failed" and "nope" in st["reason"], st
        else:
            assert "nope" in r[2]["message"], r
        j, run = submit(c, job_spec(c, "quiet", 2, 10, 0.05, "silent"))
        st = wait_for(lambda: finished(c, j), 60, "the silent job")
        assert st["state"] == "succeeded", st
        print("no such command: '%s'" % st["reason"] if st["reason"] else "bad commands: ok")


if __name__ == "__main__":
    main([test_environment_reports_logs_and_restart, test_killed_and_hung_ranks,
          test_preempted_agent_stops_program_uncounted, test_bad_commands_and_silent_programs])
