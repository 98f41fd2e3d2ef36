"""Where jobs may write and what they may read, attacked with real processes. Each attack
fails, and the coordinator, the agents and a victim's job carry on:

- names and run directories: a job name with "../", a run_dir with "..", "." or empty
  components, a run directory that would be cut at 1023 bytes, one inside another job's
  run directory: all refused, the victim's run directory unchanged; a checkpoint of
  another job's lineage planted among the victim's is never loaded by its resume;
- symbolic links: a run directory made in advance, full of links to a file outside, is
  refused as another job's; spec.yaml and metrics.jsonl links are never written through;
- data paths: a file outside the agent's allowed directories (or a link to one) is
  refused with the same words whether it exists or not, a non-IDX file's bytes never
  appear in the reason, a FIFO fails its job at once;
- a fresh state directory: its job 1 does not land in an old job 1's run directory;
- permissions: state directory 0700, database 0600, run directories 0750, files 0640
  whatever the caller's umask;
- an agent running as root runs its workers as nobody (uid 65534), never as root.
"""
import hashlib
import json
import os
import shutil
import stat
import struct
import subprocess
import time

import zmq

from harness import cluster, main, pack, read_metrics, worker_pid

FAST = {"DROVER_HEARTBEAT_MS": "200", "DROVER_PEER_TIMEOUT_MS": "3000",
        "DROVER_RECONNECT_MS": "300"}

SPEC = """
name: %(name)s
target: attached
nodes: 1
model: {type: mlp, hidden: [16]}
data:
%(data)s
train:
  epochs: %(epochs)d
  global_batch: 32
  checkpoint_every: 8
  keep_checkpoints: 2
  optimizer: {type: sgd, lr: 0.05}
run_dir: %(run_dir)s
"""  # 512 samples: 16 steps an epoch

SYNTH = ("  format: synthetic\n"
         "  synthetic: {train_samples: 512, test_samples: 128, features: 16, classes: 4, seed: 3}")

SECRET = b"TOPSECRET-0123456789"


def spec(name, run_dir, data=SYNTH, epochs=2):
    return SPEC % {"name": json.dumps(name), "run_dir": json.dumps(run_dir), "data": data,
                   "epochs": epochs}


def idx_data(images, labels):
    return ("  format: idx\n  train: {images: %s, labels: %s}\n  test: {images: %s, labels: %s}"
            % tuple(json.dumps(p) for p in (images, labels, images, labels)))


def write_idx(path, n=64):
    """A small IDX pair: n images of 4x4 and their labels (path-images, path-labels)."""
    img, lab = path + "-images.idx", path + "-labels.idx"
    with open(img, "wb") as f:
        f.write(struct.pack(">IIII", 0x803, n, 4, 4) + bytes((i * 7) % 256 for i in range(16 * n)))
    with open(lab, "wb") as f:
        f.write(struct.pack(">II", 0x801, n) + bytes(i % 4 for i in range(n)))
    return img, lab


def tree(path):
    """Every file under path with its sha256, and every directory: what a victim has."""
    out = {}
    for root, dirs, files in os.walk(path):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), path) + "/"] = None
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, path)] = hashlib.sha256(fh.read()).hexdigest()
    return out


class Site:
    """A cluster whose agent allows <tmp>/ok only; <tmp>/secret lies outside it and holds a
    file that stands for anyone's (a root-owned file, another user's data)."""

    def __init__(self, c, agents=("a1",), agent_args=()):
        self.c = c
        self.ok = os.path.join(c.tmp, "ok")
        self.runs = os.path.join(self.ok, "runs")
        self.data = os.path.join(self.ok, "data")
        self.secret_dir = os.path.join(c.tmp, "secret")
        for d in (self.ok, self.data, self.secret_dir):
            os.makedirs(d, mode=0o755)
        self.secret = os.path.join(self.secret_dir, "secret.idx")
        with open(self.secret, "wb") as f:
            f.write(SECRET)
        self.images, self.labels = write_idx(os.path.join(self.data, "good"))
        c.start_coordinator()
        for a in agents:
            c.start_agent(a, args=["--allow-dir", self.ok] + list(agent_args))
        c.wait_agents(len(agents))
        self.sub = c.subscribe()

    def submit(self, text, **extra):
        return self.c.request("submit", dict({"spec": text}, **extra))

    def run(self, text, timeout=60, **extra):
        """Submits text and follows the job to its end: (job, final ev_state body)."""
        r = self.submit(text, **extra)
        assert r[1] == "submitted", r
        final, _ = self.c.follow(self.sub, r[2]["job"], timeout)
        return r[2]["job"], final

    def fails(self, text, *words):
        job, final = self.run(text)
        assert final["state"] == "failed", final
        for w in words:
            assert w in final["reason"], (w, final["reason"])
        return final["reason"]

    def refused(self, text, *words):
        r = self.submit(text)
        assert r[1] == "error", r
        for w in words:
            assert w in r[2]["message"], (w, r[2]["message"])
        return r[2]["message"]

    def victim(self, name="victim"):
        """A job that must still run: it succeeds; returns (job, run directory)."""
        job, final = self.run(spec(name, self.runs))
        assert final["state"] == "succeeded", (final, self.c.all_logs())
        return job, self.c.run_dir(job)

    def carry_on(self):
        """The coordinator answers, every agent is registered and idle, and a new job runs."""
        deadline = time.time() + 15
        while True:
            agents = self.c.request("agents", {})[2]["agents"]
            if all(a["state"] == "idle" for a in agents) or time.time() > deadline:
                break
            time.sleep(0.1)
        assert agents and all(a["state"] == "idle" for a in agents), agents
        self.victim("after-%d" % int(time.time() * 1000 % 1e6))


# --- (a) names, run directories, lineages -------------------------------------------------

def test_names_and_run_dirs(drover):
    with cluster(drover, env=FAST) as c:
        s = Site(c)
        vjob, vdir = s.victim()
        before = tree(vdir)
        assert any(k.startswith("checkpoints/step-") for k in before), before
        # Names that are paths, at the coordinator and at the client.
        for name in ["../victim-%d" % vjob, "x/../../victim", "a/b", ".hidden", "..", "n" * 65]:
            s.refused(spec(name, s.runs), "name", "is not a job name")
        path = os.path.join(c.tmp, "evil.yaml")
        with open(path, "w") as f:
            f.write(spec("evil", s.runs))
        r = c.drover_cli("submit", path, "--set", "name=../../victim-%d" % vjob)
        assert r.returncode == 2 and "name" in r.stderr and "not a job name" in r.stderr, r.stderr
        # run_dir: '..', '.', empty components, trailing '/', relative.
        s.refused(spec("evil", s.runs + "/../runs"), "run_dir", "'..'")
        s.refused(spec("evil", vdir + "/.."), "run_dir", "'..'")
        s.refused(spec("evil", s.runs + "/./"), "run_dir", "not a normalised path")
        s.refused(spec("evil", s.runs.replace("/ok/", "/ok//")), "run_dir", "not a normalised")
        s.refused(spec("evil", "runs"), "run_dir", "must be an absolute path")
        # Padding that used to cut <run_dir>/<name>-<id> at 1023 bytes inside the victim's
        # directory: "/." padding is not normalised, real components are too long.
        pad = vdir + "/." * ((1023 - len(vdir)) // 2)
        s.refused(spec("evil", pad), "run_dir", "not a normalised path")
        long_dir = vdir
        while len(long_dir) < 1023 - 201:
            long_dir += "/" + "p" * 200
        long_dir += "/" + "p" * (1023 - len(long_dir) - 1)
        assert len(long_dir) == 1023
        s.refused(spec("evil", long_dir), "run_dir", "at most 1023")
        # A run directory inside the victim's.
        s.fails(spec("evil", vdir), "inside another job's run directory")
        assert tree(vdir) == before
        # A checkpoint of another job, newer and intact, planted among the victim's: the
        # victim's resume loads its own newest, never the other's (which has more steps
        # than the victim's spec runs: loaded, it would fail the job).
        ejob, final = s.run(spec("evil", s.runs, epochs=3))
        assert final["state"] == "succeeded", final
        edir = c.run_dir(ejob)
        newest = sorted(d for d in os.listdir(edir + "/checkpoints") if d.startswith("step-"))[-1]
        planted = os.path.join(vdir, "checkpoints", newest)
        shutil.copytree(os.path.join(edir, "checkpoints", newest), planted)
        # As the victim's own files are: the agent's one user may be both jobs' (a service
        # account, or nobody under a root agent).
        st = os.lstat(vdir)
        for root, dirs, files in os.walk(planted):
            for n in [root] + [os.path.join(root, f) for f in files]:
                os.chown(n, st.st_uid, st.st_gid)
        own = max(int(k[len("checkpoints/step-"):].rstrip("/")) for k in before
                  if k.startswith("checkpoints/step-") and k.endswith("/"))
        rjob, final = s.run("", resume=vjob)
        assert final["state"] == "succeeded", (final, c.all_logs())
        rdir = c.run_dir(rjob)
        resumed = [x["step"] for x in read_metrics(rdir) if x["type"] == "resume"]
        assert resumed == [own], (resumed, own)
        log = open(os.path.join(rdir, "logs", "rank-0.log")).read()
        assert newest + ": manifest.json: of another job's lineage" in log, log[-3000:]
        assert own < int(newest[5:]), (own, newest)
        print("names, run_dirs, padding, nesting refused; resume skipped the planted "
              "checkpoint and resumed from its own step %d" % own)
        s.carry_on()


# --- (b) symbolic links ----------------------------------------------------------------------

def test_symlinks(drover):
    with cluster(drover, env=FAST) as c:
        s = Site(c)
        precious = os.path.join(s.secret_dir, "precious")
        with open(precious, "wb") as f:
            f.write(b"precious\n")
        os.chmod(precious, 0o644)
        vjob, vdir = s.victim()
        # The next job's run directory made in advance, every file a link to `precious`.
        trap = os.path.join(s.runs, "evil-%d" % (vjob + 1))
        os.makedirs(os.path.join(trap, "logs"))
        for f in ("spec.yaml", "metrics.jsonl", "model.safetensors", "logs/rank-0.log"):
            os.symlink(precious, os.path.join(trap, f))
        os.symlink(s.secret_dir, os.path.join(trap, "checkpoints"))
        secret_before = tree(s.secret_dir)
        reason = s.fails(spec("evil", s.runs), "run directory %s belongs to another job" % trap)
        assert tree(s.secret_dir) == secret_before
        assert os.path.islink(os.path.join(trap, "spec.yaml"))  # nothing touched
        print("a prepared run directory: %s" % reason)
        # A worker given a run directory with links in it (the agent's claim is bypassed):
        # spec.yaml is replaced, never written through; metrics.jsonl is refused.
        direct = os.path.join(s.runs, "direct")
        os.makedirs(direct)
        os.symlink(precious, os.path.join(direct, "spec.yaml"))
        os.symlink(precious, os.path.join(direct, "metrics.jsonl"))
        assign = pack("assign", {"job": 999999, "generation": 1, "rank": 0, "world": 1,
                                 "local_rank": 0, "device": -1,
                                 "spec": spec("direct", s.runs), "run_dir": direct,
                                 "coordinator": c.endpoint, "lineage": "ab" * 16,
                                 # keys of its own, as a coordinator gives them
                                 "secret": zmq.curve_keypair()[1].decode(),
                                 "coordinator_key": c.server_key()})
        r = subprocess.run([c.drover, "worker", "--job", "999999", "--rank", "0",
                            "--run-dir", direct], input=assign, capture_output=True,
                           env=c.env, timeout=60)
        err = r.stderr.decode(errors="replace") + r.stdout.decode(errors="replace")
        assert r.returncode == 1, (r.returncode, err)
        assert "metrics.jsonl: is a symbolic link (refused)" in err, err
        assert tree(s.secret_dir) == secret_before
        assert not os.path.islink(os.path.join(direct, "spec.yaml"))
        assert 'name: "direct"' in open(os.path.join(direct, "spec.yaml")).read()
        assert open(precious, "rb").read() == b"precious\n"
        s.carry_on()


# --- (c) data paths --------------------------------------------------------------------------

def test_data_paths(drover):
    with cluster(drover, env=FAST) as c:
        s = Site(c)
        outside = {"exists": s.secret, "missing": os.path.join(s.secret_dir, "missing.idx")}
        link = os.path.join(s.data, "link.idx")
        os.symlink(s.secret, link)
        reasons = {}
        for kind, path in sorted(outside.items()) + [("link", link)]:
            r = s.fails(spec("evil", s.runs, idx_data(path, s.labels)), "data.train.images",
                        path, "outside the directories this agent allows", s.ok)
            assert SECRET.decode() not in r and SECRET[:4].hex() not in r, r
            reasons[kind] = r.replace(path, "PATH")
        # Whether the outside file exists cannot be told from the reason.
        assert reasons["exists"] == reasons["missing"] == reasons["link"], reasons
        print("outside the allowed directories: %s" % reasons["exists"])
        # Inside them, a file that is no IDX file: its size, none of its bytes.
        text = os.path.join(s.data, "text.idx")
        with open(text, "wb") as f:
            f.write(b"hello " + SECRET)
        r = s.fails(spec("evil", s.runs, idx_data(text, s.labels)), "not an IDX images file",
                    "the file has %d bytes" % (6 + len(SECRET)))
        assert "hell" not in r and "68656c6c" not in r and SECRET[:4].hex() not in r, r
        assert SECRET.decode() not in r, r
        # A FIFO as data: refused at once, no worker left waiting on it.
        fifo = os.path.join(s.data, "fifo.idx")
        os.mkfifo(fifo)
        t0 = time.time()
        r = s.fails(spec("evil", s.runs, idx_data(fifo, s.labels)), "not a regular file")
        assert time.time() - t0 < 30, "a FIFO held the worker %.0f s" % (time.time() - t0)
        print("FIFO: %s" % r)
        # And good data under the allowed directory still trains.
        job, final = s.run(spec("victim", s.runs, idx_data(s.images, s.labels), epochs=1))
        assert final["state"] == "succeeded", (final, c.all_logs())
        s.carry_on()


# --- (d) a fresh state directory ---------------------------------------------------------------

def test_fresh_state_dir(drover):
    with cluster(drover, env=FAST) as c:
        s = Site(c)
        job, old = s.victim("same")
        before = tree(old)
        c.stop_coordinator()
        # A new coordinator on a new state directory: its ids start at 1 again. It keeps
        # the cluster's keys (copied), so the running agent, which pins the coordinator's
        # key, reconnects to it.
        shutil.copytree(os.path.join(c.state, "keys"), os.path.join(c.tmp, "state2", "keys"))
        c.state = os.path.join(c.tmp, "state2")
        c.env["DROVER_STATE_DIR"] = c.state
        c.start_coordinator()
        c.wait_agents(1)
        s.sub = c.subscribe()
        r = s.submit(spec("same", s.runs))
        assert r[1] == "submitted" and r[2]["job"] == job and r[2]["run_dir"] == old, r
        final, _ = c.follow(s.sub, job, 60)
        assert final["state"] == "failed", final
        assert "run directory %s belongs to another job" % old in final["reason"], final
        assert tree(old) == before
        print("fresh state dir, job %d again: %s" % (job, final["reason"]))
        s.carry_on()


# --- (e) permissions -----------------------------------------------------------------------

def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_permissions(drover):
    old = os.umask(0o022)  # what drover makes must not depend on its caller's umask
    try:
        with cluster(drover, env=FAST) as c:
            s = Site(c)
            job, run = s.victim()
            assert mode(c.state) == 0o700, oct(mode(c.state))
            for f in os.listdir(c.state):
                p = os.path.join(c.state, f)
                if f.startswith("drover.db") or f == "coordinator.lock":
                    assert mode(p) == 0o600, (f, oct(mode(p)))
            for root, dirs, files in os.walk(run):
                for d in dirs:
                    assert mode(os.path.join(root, d)) == 0o750, (root, d, oct(mode(os.path.join(root, d))))
                for f in files:
                    assert mode(os.path.join(root, f)) == 0o640, (root, f, oct(mode(os.path.join(root, f))))
            assert mode(run) == 0o750, oct(mode(run))
            seen = sorted(os.path.relpath(os.path.join(r, f), run)
                          for r, _, fs in os.walk(run) for f in fs)
            assert {"spec.yaml", "metrics.jsonl", "model.safetensors", "lineage",
                    "logs/rank-0.log"} <= set(seen), seen
            assert any(f.startswith("checkpoints/step-") for f in seen), seen
            print("modes: state 0700, database 0600, run directory 0750, its %d files 0640"
                  % len(seen))
            s.carry_on()
    finally:
        os.umask(old)


# --- (f) workers as another user -------------------------------------------------------------

def test_root_agent_runs_workers_as_nobody(drover):
    if os.geteuid() != 0:
        print("SKIP test_root_agent_runs_workers_as_nobody: needs root (the agent must be "
              "root to run its workers as another user)")
        return
    with cluster(drover, env=FAST) as c:
        s = Site(c)
        text = spec("long", s.runs, epochs=2000)
        r = s.submit(text)
        job = r[2]["job"]
        run = r[2]["run_dir"]
        deadline = time.time() + 30
        while time.time() < deadline and (
                c.request("status", {"job": job})[2]["jobs"][0].get("ckpt_step", 0) < 8
                or not worker_pid(run, 0)):
            time.sleep(0.1)
        pid = worker_pid(run, 0)
        assert pid, c.all_logs()
        status = open("/proc/%d/status" % pid).read()
        uids = [l.split()[1:] for l in status.splitlines() if l.startswith(("Uid:", "Gid:"))]
        assert uids == [["65534"] * 4, ["65534"] * 4], uids
        groups = [l for l in status.splitlines() if l.startswith("Groups:")][0].split()[1:]
        assert "0" not in groups, groups
        assert c.request("cancel", {"job": job})[1] == "ok"
        c.follow(s.sub, job, 30)
        owned = {}
        for root, dirs, files in os.walk(run):
            for n in dirs + files:
                p = os.path.join(root, n)
                owned[os.path.relpath(p, run)] = os.lstat(p).st_uid
        assert os.lstat(run).st_uid == 65534
        for f in ("spec.yaml", "metrics.jsonl", "logs", "logs/rank-0.log", "checkpoints"):
            assert owned.get(f) == 65534, (f, owned)
        assert any(k.startswith("checkpoints/step-") and v == 65534 for k, v in owned.items())
        print("worker pid %d runs as uid/gid 65534; its run directory and files are nobody's"
              % pid)
        s.carry_on()
    # An agent told to run workers as root refuses every job, and goes on serving.
    with cluster(drover, env=FAST) as c:
        s = Site(c, agent_args=("--run-as", "root"))
        reason = s.fails(spec("rooted", s.runs), "no user to run the worker as", "root")
        print("--run-as root: %s" % reason)
        agents = c.request("agents", {})[2]["agents"]
        assert len(agents) == 1, agents


if __name__ == "__main__":
    main([test_names_and_run_dirs, test_symlinks, test_data_paths, test_fresh_state_dir,
          test_permissions, test_root_agent_runs_workers_as_nobody])
