"""Several workers per node, with real agents and workers on loopback.

- 2 agents x 2 workers (workers_per_node: 2) train the Fashion-MNIST example in a world of
  4: its loss curve matches 1 worker's within it_train's tolerance, and the ranks are
  node-major (each agent's log names the assignments it ran).
- SIGKILL one worker of a node: the world re-forms without it (the node's other worker
  stays) and the job completes.
- 3 nodes x 2 workers: a drained node takes both its workers out at the next commit, a
  node that joins brings two, a node SIGKILLed loses both; the job completes.
- Device assignment, with GPUs that are not there (DROVER_FAKE_GPUS, the settings table's
  test hook, listed in reverse PCI order): each worker gets its own GPU(s) in PCI bus id
  order by local rank, named by UUID in its CUDA_VISIBLE_DEVICES, its share of the cores,
  the right local_rank and the node-major rank; a job no node could hold is refused at
  submission with the numbers.
"""
import json
import os
import re
import signal

from harness import cluster, main, read_metrics, wait_for, worker_pid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "examples", "fashion-mnist.yaml")
DATA = "/usr/share/datasets/fashion-mnist"
ENV = {"DROVER_HEARTBEAT_MS": "200", "DROVER_PEER_TIMEOUT_MS": "3000",
       "DROVER_COOLDOWN_MS": "60000", "DROVER_RING_TIMEOUT_MS": "5000"}
DIRS = ("--allow-dir", DATA, "--allow-dir", "/tmp")  # the data, and the cluster's runs


def job(c, j):
    return c.request("status", {"job": j})[2]["jobs"][0]


def submit_cli(c, *args):
    r = c.drover_cli("submit", EXAMPLE, "--json", "--target", "attached", "--set",
                     "run_dir=" + c.runs, *args)
    lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
    assert r.returncode == 0 and lines, (r.stdout, r.stderr[-3000:])
    return json.loads(lines[-1])


def assigned(c, agent, job_id):
    """(rank, world, local rank) of each worker agent `agent` started for job_id, from its log."""
    pat = re.compile(r"job %d rank (\d+)/(\d+) \(local rank (\d+)\): worker pid" % job_id)
    return sorted(tuple(int(x) for x in m.groups()) for m in pat.finditer(c.log("agent-%s.log" % agent)))


def test_two_nodes_of_two_workers_match_one_worker(drover):
    with cluster(drover, env=ENV) as c:
        c.start_coordinator()
        c.start_agent("a0", args=DIRS)
        c.start_agent("a1", args=DIRS)
        c.wait_agents(2)
        short = ("--set", "train.max_steps=50", "--set", "train.epochs=1")
        four = submit_cli(c, "--nodes", "2", "--set", "workers_per_node=2", *short)
        assert four["status"] == "succeeded", four
        one = submit_cli(c, "--nodes", "1", "--set", "workers_per_node=1", *short)
        assert one["status"] == "succeeded", one
        # Node-major: a0 (first by id) ran ranks 0 and 1, a1 ranks 2 and 3.
        assert assigned(c, "a0", four["job"]) == [(0, 4, 0), (1, 4, 1)], c.log("agent-a0.log")
        assert assigned(c, "a1", four["job"]) == [(2, 4, 0), (3, 4, 1)], c.log("agent-a1.log")
        curves = [[x["loss"] for x in read_metrics(r["run_dir"]) if x["type"] == "step"]
                  for r in (four, one)]
        assert len(curves[0]) == 50 and len(curves[1]) == 50, [len(x) for x in curves]
        worst = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(*curves))
        print("2 agents x 2 workers vs 1 worker, 50 steps: max relative loss difference %.3g"
              % worst)
        assert worst < 1e-4, (worst, curves)
        assert curves[0][-1] < curves[0][0] * 0.7, curves[0]  # and it is learning


def test_killed_worker_of_a_node_reforms(drover):
    with cluster(drover, env=ENV) as c:
        c.start_coordinator()
        slow = {"DROVER_FAULT_SLOW_MS": "10"}
        c.start_agent("a0", env=slow, args=DIRS)
        c.start_agent("a1", env=slow, args=DIRS)
        c.wait_agents(2)
        spec = open(EXAMPLE).read().replace("target: local", "target: attached")
        spec = spec.replace("run_dir: runs", "run_dir: " + c.runs)
        spec += ("workers_per_node: 2\nmin_nodes: 1\n")
        spec = spec.replace("epochs: 5", "epochs: 1\n  max_steps: 300\n  commit_every: 20")
        r = c.request("submit", {"spec": spec})
        assert r[1] == "submitted", r
        j = r[2]["job"]
        run = r[2]["run_dir"]
        wait_for(lambda: job(c, j)["step"] >= 40, 120, "job %d to pass step 40" % j)
        ranks = job(c, j)["ranks"]
        assert [(x["rank"], x["agent"], x["local_rank"]) for x in ranks] == \
            [(0, "a0", 0), (1, "a0", 1), (2, "a1", 0), (3, "a1", 1)], ranks
        pid = worker_pid(run, 3)
        assert pid, "no worker of rank 3"
        os.kill(pid, signal.SIGKILL)
        st = wait_for(lambda: (lambda s: s["state"] != "running" and s)(job(c, j)), 180,
                      "job %d to end" % j)
        assert st["state"] == "succeeded", st
        log = c.log("coordinator.log")
        m = re.search(r"re-formed with 3 worker\(s\) \(0 new\) after: rank 3 \(agent a1, [^)]*\) "
                      r"was killed by signal 9", log)
        assert m, log
        # The node's other worker stayed: a1 started no worker after the first two.
        assert assigned(c, "a1", j) == [(2, 4, 0), (3, 4, 1)], c.log("agent-a1.log")
        steps = [x for x in read_metrics(run) if x["type"] == "step"]
        print("SIGKILL of rank 3 (agent a1's local rank 1): %s; %d steps logged, accuracy %.4f"
              % (m.group(0), len(steps), st["test_accuracy"]))
        assert steps[-1]["step"] == 300, steps[-1]


NODES_SPEC = """
name: nodes
target: attached
nodes: 3
workers_per_node: 2
min_nodes: 1
model: {type: mlp, hidden: [32]}
data:
  format: synthetic
  synthetic: {train_samples: 24000, test_samples: 1000, features: 16, classes: 4, seed: 4}
train: {epochs: 5, global_batch: 60, seed: 3, commit_every: 20, optimizer: {type: sgd, lr: 0.05}}
run_dir: %s
"""  # 400 steps an epoch; with DROVER_FAULT_SLOW_MS=10 at least 20 s in all


def reforms(run_dir):
    """(world, steps redone) of each re-formation in run_dir's metrics, in order."""
    m = read_metrics(run_dir)
    out = []
    for i, x in enumerate(m):
        if x["type"] == "reform":
            before = [y["step"] for y in m[:i] if y["type"] == "step"]
            out.append((x["world"], max(before) - x["step"]))
    return out


def test_nodes_drained_joined_and_lost(drover):
    """3 nodes x 2 workers: a node drained (SIGTERM to its agent) takes both its workers out
    at the next commit; a node that joins brings 2 (world 6 again, max_nodes 3 x 2); a node
    SIGKILLed loses both; the job completes."""
    with cluster(drover, env=ENV) as c:
        c.start_coordinator()
        slow = {"DROVER_FAULT_SLOW_MS": "10"}
        for a in ("a1", "a2", "a3"):
            c.start_agent(a, env=slow)
        c.wait_agents(3)
        r = c.request("submit", {"spec": NODES_SPEC % c.runs})
        assert r[1] == "submitted", r
        j, run = r[2]["job"], r[2]["run_dir"]

        def at(step):
            wait_for(lambda: job(c, j)["step"] >= step, 120, "job %d to pass step %d" % (j, step))

        def world(n):
            wait_for(lambda: len(job(c, j).get("ranks") or []) == n and job(c, j)["state"] ==
                     "running", 60, "job %d to run %d workers" % (j, n))

        at(60)
        c.agents["a2"].send_signal(signal.SIGTERM)  # drained: its 2 ranks leave together
        world(4)
        assert c.agents["a2"].wait(timeout=30) == 0
        at(job(c, j)["step"] + 40)
        c.start_agent("a4", env=slow)  # joins: the job grows by a node of 2 workers
        world(6)
        ranks = job(c, j)["ranks"]
        assert [(x["agent"], x["local_rank"]) for x in ranks[4:]] == [("a4", 0), ("a4", 1)], ranks
        at(job(c, j)["step"] + 40)
        os.kill(c.agents["a3"].pid, signal.SIGKILL)  # lost: its 2 workers die with it
        st = wait_for(lambda: (lambda s: s["state"] != "running" and s)(job(c, j)), 300,
                      "job %d to end" % j)
        assert st["state"] == "succeeded", st
        got = reforms(run)
        assert [w for w, _ in got] == [4, 6, 4], got
        assert got[0][1] == 0 and got[1][1] == 0, got  # planned: no step redone
        assert got[2][1] <= 20, got  # a failure: back to the last commit at most
        print("3 x 2 workers: drained -> %d, joined -> %d, node SIGKILLed -> %d (%d step(s) "
              "redone); accuracy %.4f" % (got[0][0], got[1][0], got[2][0], got[2][1],
                                          st["test_accuracy"]))


FAKE_SPEC = """
name: %s
target: attached
nodes: 2
%s
model: {type: mlp, hidden: [16]}
data:
  format: synthetic
  synthetic: {train_samples: 4000, test_samples: 200, features: 8, classes: 3, seed: 3}
train: {epochs: 1000, global_batch: 64, backend: cpu, optimizer: {type: sgd, lr: 0.05}}
run_dir: %s
"""


def environ(pid):
    with open("/proc/%d/environ" % pid, "rb") as f:
        return dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)


def test_fake_gpus_are_dealt_by_pci_bus_id(drover):
    with cluster(drover, env=ENV) as c:
        c.start_coordinator()
        fake = {"DROVER_FAKE_GPUS": "4", "DROVER_FAULT_SLOW_MS": "20"}
        c.start_agent("b0", threads="4", env=fake)
        c.start_agent("b1", threads="4", env=fake)
        agents = c.wait_agents(2)
        for a in agents:  # listed in PCI bus id order, the reverse of their index
            devs = a["devices"]
            assert [d["pci_bus_id"] for d in devs] == \
                ["0000:01:00.0", "0000:02:00.0", "0000:03:00.0", "0000:04:00.0"], devs
            assert [d["index"] for d in devs] == [3, 2, 1, 0], devs
        # Too much for any node: refused at submission, with the numbers.
        r = c.request("submit", {"spec": FAKE_SPEC % (
            "huge", "workers_per_node: 3\nresources: {gpus_per_worker: 2}", c.runs)})
        assert r[1] == "error" and r[2]["code"] == "invalid", r
        assert r[2]["message"] == ("resources: needs 6 GPUs per node (3 workers_per_node); the "
                                   "largest agent of target attached has 4"), r
        for name, extra, per_worker in (("one-each", "", 1),
                                        ("two-each", "resources: {gpus_per_worker: 2}", 2)):
            r = c.request("submit", {"spec": FAKE_SPEC % (name, extra, c.runs)})
            assert r[1] == "submitted", r
            j, run = r[2]["job"], r[2]["run_dir"]
            wpn = 4 // per_worker  # workers_per_node left out: one per gpus_per_worker GPUs
            world = 2 * wpn
            ranks = wait_for(lambda: (lambda s: s["state"] == "running" and s.get("ranks")
                                      and len(s["ranks"]) == world and s["ranks"])(job(c, j)),
                             60, "job %s to run on %d workers" % (name, world))
            buses = ["0000:01:00.0", "0000:02:00.0", "0000:03:00.0", "0000:04:00.0"]
            uuids = ["GPU-fake-3", "GPU-fake-2", "GPU-fake-1", "GPU-fake-0"]
            for x in ranks:
                node, lr = divmod(x["rank"], wpn)
                assert x["agent"] == "b%d" % node and x["local_rank"] == lr, x
                assert x["gpu"] == buses[lr * per_worker], x
                pid = wait_for(lambda: worker_pid(run, x["rank"]), 20, "rank %d" % x["rank"])
                env = environ(pid)
                want = ",".join(uuids[lr * per_worker:(lr + 1) * per_worker]).encode()
                assert env.get(b"CUDA_VISIBLE_DEVICES") == want, (x, env.get(b"CUDA_VISIBLE_DEVICES"))
                assert env.get(b"CUDA_DEVICE_ORDER") == b"PCI_BUS_ID", x
                # The agent's 4 threads (its OPENBLAS_NUM_THREADS) shared by its workers.
                assert env.get(b"OPENBLAS_NUM_THREADS") == str(4 // wpn).encode(), x
            print("%s: %d workers, ranks node-major, GPUs by PCI bus id: %s" % (
                name, world, ", ".join("%d:%s/%d:%s" % (x["rank"], x["agent"], x["local_rank"],
                                                        x["gpu"]) for x in ranks)))
            r = c.drover_cli("cancel", str(j))
            assert r.returncode == 0, r.stderr
            wait_for(lambda: all(a["state"] == "idle" for a in c.request("agents", {})[2]["agents"]),
                     30, "agents to be idle after cancelling %s" % name)


if __name__ == "__main__":
    main([test_two_nodes_of_two_workers_match_one_worker, test_killed_worker_of_a_node_reforms,
          test_nodes_drained_joined_and_lost, test_fake_gpus_are_dealt_by_pci_bus_id])
