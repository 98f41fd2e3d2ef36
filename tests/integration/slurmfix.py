"""A real Slurm cluster on loopback for the integration tests (standard library only).

SlurmCluster(tmp, nodes=4, cloud_nodes=0, cpus=2) runs its own munged, one slurmctld and
one `slurmd -N nodeK` per static node, all on 127.0.0.1, with every file (munge key and
socket, slurm.conf, cgroup.conf, state, spool, logs, pid files) under tmp. Cloud nodes
(nodeC1..) start powered down: slurmctld's ResumeProgram (written into tmp) starts their
slurmd when a job needs them and its SuspendProgram stops it after SuspendTime.

    with SlurmCluster(tmp, nodes=3) as c:
        subprocess.run(["sbatch", ...], env=dict(os.environ, **c.env))
        c.squeue()  # [{"id": "1234", "name": ..., "state": "RUNNING", "node": "node1"}]

close() (also from __exit__ when the test failed) cancels every job, stops every daemon it
started and checks /proc that nothing of this cluster is left: no process whose command
line, working directory or environment names tmp (jobs, slurmstepd, the cloud nodes'
slurmd), and none of the processes it started; it raises if something is. Processes of
any other Slurm or munge are never looked at (they do not name tmp).

gres="gpu:2" gives every node 2 gpus for --gres (device files /dev/tty0.. stand in for
them). Slurm 22.05: a job on a CLOUD node stays CONFIGURING after the node's slurmd has
registered until slurmctld's 30 s periodic check (PERIODIC_TIMEOUT), so submit to RUNNING
takes about 30 s; slurmd in its own daemon mode (no -D) loses its log, so the
ResumeProgram runs `slurmd -D -b` in a session of its own.

Needs root (slurmd runs jobs as their submitter and uses cgroups): SlurmCluster.available()
says why not, where it cannot run. Jobs are tracked by proctrack/cgroup (cgroup v1 freezer
or cgroup v2): with proctrack/linuxproc a child that ignores SIGTERM outlived scancel.
"""
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ports import ephemeral_range  # noqa: E402

SBIN = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
PATH = ":".join(["/usr/local/sbin", "/usr/local/bin"] + SBIN)


def _which(name):
    for d in SBIN + ["/usr/local/sbin", "/usr/local/bin"]:
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    return None


def free_ports(n):
    """n distinct free loopback ports below the ephemeral range (see ports.py)."""
    lo, hi = ephemeral_range()
    first, last = (10000, lo - n - 1) if lo - n - 1 >= 12000 else (hi + 1, 65530 - n)
    for _ in range(200):
        base = random.randint(first, last)
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", p))
                socks.append(s)
            return list(range(base, base + n))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no %d free ports" % n)


def cgroup_mode():
    """'v1' (freezer mounted), 'v2' (unified hierarchy) or None: what proctrack/cgroup
    can use on this machine."""
    try:
        mounts = open("/proc/mounts").read().split("\n")
    except OSError:
        return None
    for line in mounts:
        f = line.split()
        if len(f) >= 3 and f[1] == "/sys/fs/cgroup" and f[2] == "cgroup2":
            return "v2"
    for line in mounts:
        f = line.split()
        if len(f) >= 4 and f[2] == "cgroup" and "freezer" in f[3].split(","):
            return "v1" if f[1] == "/sys/fs/cgroup/freezer" else None
    return None


# ResumeProgram/SuspendProgram. slurmctld runs them with no PATH, fds 0-2 closed and all
# signals blocked (a slurmd started with them blocked never dies of SIGTERM), so this
# reopens 0-2, unblocks and resets every signal and sets PATH and SLURM_CONF before it
# runs anything. argv[1] is a Slurm hostlist ("nodeC[1-2]").
POWER_SCRIPT = r'''#!/usr/bin/python3
import os, signal, subprocess, sys, time
ACTION, CONF, TMP, PATH = %(action)r, %(conf)r, %(tmp)r, %(path)r
null = os.open("/dev/null", os.O_RDWR)
log = os.open(os.path.join(TMP, "power.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
os.dup2(null, 0); os.dup2(log, 1); os.dup2(log, 2)
if null > 2: os.close(null)
if log > 2: os.close(log)
sys.stdout = os.fdopen(1, "w", buffering=1); sys.stderr = sys.stdout
signal.pthread_sigmask(signal.SIG_SETMASK, [])
for s in range(1, signal.NSIG):
    if s in (signal.SIGKILL, signal.SIGSTOP):
        continue
    try:
        signal.signal(s, signal.SIG_DFL)
    except (OSError, ValueError, RuntimeError):
        pass
os.environ["PATH"] = PATH
os.environ["SLURM_CONF"] = CONF
hosts = subprocess.run(["scontrol", "show", "hostnames", sys.argv[1]], capture_output=True,
                       text=True).stdout.split()
print(time.strftime("%%H:%%M:%%S"), ACTION, hosts, flush=True)
for h in hosts:
    pidfile = os.path.join(TMP, "slurmd-%%s.pid" %% h)
    if ACTION == "resume":
        # -b: report that the node booted. -D in a session of its own, not slurmd's
        # own daemon mode: that one loses its log file.
        out = open(os.path.join(TMP, "slurmd-%%s.out" %% h), "ab")
        p = subprocess.Popen(["slurmd", "-D", "-b", "-f", CONF, "-N", h], stdin=0,
                             stdout=out, stderr=out, start_new_session=True, cwd=TMP)
        print("started slurmd -N", h, "pid", p.pid, flush=True)
    else:
        try:
            pid = int(open(pidfile).read().split()[0])
            os.kill(pid, signal.SIGTERM)
            print("stopped slurmd", h, pid, flush=True)
        except (OSError, ValueError, IndexError) as e:
            print("no slurmd for", h, e, flush=True)
'''


class SlurmCluster:
    """munged + slurmctld + slurmd's on 127.0.0.1, all under tmp (see the module doc)."""

    PARTITION = "drover"

    @staticmethod
    def available():
        """None when a cluster can run here, else why not (for a test's skip)."""
        if os.geteuid() != 0:
            return "the Slurm fixture needs root (slurmd runs jobs as their submitters)"
        for b in ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol"):
            if not _which(b):
                return "%s not installed (scripts/install-deps.sh: slurm-wlm munge)" % b
        return None

    def __init__(self, tmp, nodes=4, cloud_nodes=0, cpus=2, gres=None):
        why = self.available()
        if why:
            raise RuntimeError(why)
        self.tmp = os.path.abspath(tmp)
        os.makedirs(self.tmp, exist_ok=True)
        # slurmd runs jobs as their submitter; munged refuses world-writable directories.
        os.chmod(self.tmp, 0o755)
        self.static = ["node%d" % (i + 1) for i in range(nodes)]
        self.cloud = ["nodeC%d" % (i + 1) for i in range(cloud_nodes)]
        self.cpus = cpus
        self.gres = gres  # e.g. "gpu:2": every node has 2 (device-less) gpus for --gres
        self.conf = os.path.join(self.tmp, "slurm.conf")
        self.munge_socket = os.path.join(self.tmp, "munge", "munge.socket")
        self.env = {"SLURM_CONF": self.conf}
        self.procs = {}  # name -> Popen
        self.started_pids = set()
        self.cgroups = cgroup_mode()
        self.proctrack = "proctrack/cgroup" if self.cgroups else "proctrack/linuxproc"
        self._closed = False
        try:
            self._start()
        except BaseException:
            self.close(check=False)
            raise

    # -- context manager --------------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        # When the test failed, its exception matters more than a cleanup complaint.
        self.close(check=et is None)
        return False

    # -- commands ---------------------------------------------------------------------
    def full_env(self):
        env = dict(os.environ)
        env["PATH"] = env.get("PATH", "") + ":" + PATH
        env.update(self.env)
        return env

    def run(self, *cmd, check=True, timeout=60):
        """Runs a Slurm command against this cluster; returns its CompletedProcess."""
        if len(cmd) == 1 and isinstance(cmd[0], (list, tuple)):
            cmd = cmd[0]
        r = subprocess.run(list(cmd), env=self.full_env(), capture_output=True, text=True,
                           timeout=timeout, cwd=self.tmp)
        if check and r.returncode != 0:
            raise RuntimeError("%s: exit %d: %s%s" % (" ".join(cmd), r.returncode, r.stdout,
                                                      r.stderr))
        return r

    def sbatch(self, *args):
        """sbatch --parsable ARGS; the job id."""
        out = self.run("sbatch", "--parsable", *args).stdout.strip()
        return out.split(";")[0]

    def squeue(self):
        """Jobs of this cluster: [{"id", "name", "state", "node"}] (node: the node list,
        or the pending reason)."""
        r = self.run("squeue", "--noheader", "--all", "--format=%i|%j|%T|%N|%r")
        jobs = []
        for line in r.stdout.splitlines():
            f = line.split("|")
            if len(f) >= 5:
                jobs.append({"id": f[0], "name": f[1], "state": f[2], "node": f[3],
                             "reason": f[4]})
        return jobs

    def sinfo(self):
        """{node: state} as sinfo prints it (idle, alloc, idle~, down*, ...)."""
        r = self.run("sinfo", "--noheader", "--all", "--Node", "--format=%N|%T")
        out = {}
        for line in r.stdout.splitlines():
            f = line.split("|")
            if len(f) == 2:
                out[f[0]] = f[1]
        return out

    def node_state(self, node):
        """The node's full State= from scontrol (e.g. IDLE+CLOUD+POWERED_DOWN)."""
        r = self.run("scontrol", "show", "node", node, check=False)
        for tok in r.stdout.split():
            if tok.startswith("State="):
                return tok[6:]
        return ""

    def wait_idle(self, nodes=None, timeout=60):
        """Waits until every node of `nodes` (default: the static ones) is idle."""
        nodes = list(nodes or self.static)
        deadline = time.time() + timeout
        last = {}
        while time.time() < deadline:
            try:
                last = self.sinfo()
            except (RuntimeError, subprocess.TimeoutExpired):
                last = {}
            if all(last.get(n) == "idle" for n in nodes):
                return last
            time.sleep(0.3)
        raise RuntimeError("nodes %s not idle within %d s: %r\n%s" % (
            nodes, timeout, last, self.logs_tail()))

    def wait_job(self, job, states, timeout=60):
        """Waits until job is in one of states ("RUNNING", ...; "GONE": not in squeue)."""
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            jobs = {j["id"]: j for j in self.squeue()}
            last = jobs.get(job)
            if (last["state"] if last else "GONE") in states:
                return last
            time.sleep(0.2)
        raise RuntimeError("job %s not %s within %d s: %r\n%s" % (job, states, timeout, last,
                                                                  self.logs_tail()))

    def logs_tail(self, n=15):
        out = []
        for name in sorted(os.listdir(self.tmp)):
            if name.endswith(".log"):
                try:
                    lines = open(os.path.join(self.tmp, name), errors="replace").readlines()
                except OSError:
                    continue
                out.append("--- %s\n%s" % (name, "".join(lines[-n:])))
        return "\n".join(out)

    # -- start ------------------------------------------------------------------------
    def _spawn(self, name, args):
        log = open(os.path.join(self.tmp, name + ".out"), "ab")
        p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                             env=self.full_env(), cwd=self.tmp, start_new_session=True)
        log.close()
        self.procs[name] = p
        self.started_pids.add(p.pid)
        return p

    def _start(self):
        for d in ["munge", "state"] + ["spool/" + n for n in self.static + self.cloud]:
            os.makedirs(os.path.join(self.tmp, d), exist_ok=True)
        # munged: its socket directory must be searchable by all, writable by none.
        os.chmod(os.path.join(self.tmp, "munge"), 0o755)
        self._start_munge()
        n = len(self.static) + len(self.cloud)
        ports = free_ports(n + 1)
        self.ctld_port, node_ports = ports[0], ports[1:]
        self.ports = dict(zip(self.static + self.cloud, node_ports))
        self._write_conf()
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-f", self.conf])
        # Node registration needs slurmctld listening; slurmd retries anyway.
        self._wait_port(self.ctld_port, "slurmctld")
        for node in self.static:
            self._spawn("slurmd-" + node, [_which("slurmd"), "-D", "-f", self.conf, "-N", node])
        self.wait_idle(timeout=60)

    def _start_munge(self):
        key = os.path.join(self.tmp, "munge", "munge.key")
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o400)
        m = os.path.join(self.tmp, "munge")
        self._spawn("munged", [_which("munged"), "-F", "--socket", self.munge_socket,
                               "--key-file", key, "--pid-file", os.path.join(m, "munged.pid"),
                               "--log-file", os.path.join(self.tmp, "munged.log"),
                               "--seed-file", os.path.join(m, "munged.seed"),
                               "--num-threads", "2"])
        deadline = time.time() + 20
        while not os.path.exists(self.munge_socket):
            if self.procs["munged"].poll() is not None or time.time() > deadline:
                raise RuntimeError("munged did not start:\n" + self.logs_tail())
            time.sleep(0.05)

    def _wait_port(self, port, what, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.procs[what].poll() is not None:
                raise RuntimeError("%s exited %s:\n%s" % (what, self.procs[what].returncode,
                                                          self.logs_tail()))
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("%s not listening on %d:\n%s" % (what, port, self.logs_tail()))

    def _write_conf(self):
        t = self.tmp
        lines = [
            "ClusterName=drv%06d" % random.randint(0, 999999),
            "SlurmctldHost=localhost(127.0.0.1)",
            "SlurmctldPort=%d" % self.ctld_port,
            "SlurmdPort=%d" % self.ports[(self.static + self.cloud)[0]],
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            "AuthInfo=socket=%s" % self.munge_socket,
            "StateSaveLocation=%s/state" % t,
            "SlurmdSpoolDir=%s/spool/%%n" % t,
            "SlurmctldPidFile=%s/slurmctld.pid" % t,
            "SlurmdPidFile=%s/slurmd-%%n.pid" % t,
            "SlurmctldLogFile=%s/slurmctld.log" % t,
            "SlurmdLogFile=%s/slurmd-%%n.log" % t,
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            # Jobs' cgroups are slurm_<node>/uid_<uid>/job_<id>: two clusters at once have
            # the same node names, and ids from a random start keep their jobs apart.
            "FirstJobId=%d" % random.randint(1000, 50000000),
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "ProctrackType=%s" % self.proctrack,
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "MpiDefault=none",
            "MailProg=/bin/true",
            "SwitchType=switch/none",
            # Nodes may claim more CPUs than this machine has.
            "SlurmdParameters=config_overrides",
            "ReturnToService=2",
            "SlurmctldTimeout=10",
            "SlurmdTimeout=10",
            "MessageTimeout=5",
            "KillWait=2",
            "UnkillableStepTimeout=20",
            "InactiveLimit=0",
            "MinJobAge=2",
            "Waittime=0",
            "TreeWidth=%d" % max(2, len(self.static) + len(self.cloud)),
            "PrivateData=cloud",
            "GresTypes=%s" % self.gres.split(":")[0] if self.gres else "",
        ]
        if self.cloud:
            lines += [
                "ResumeProgram=%s" % self._power_script("resume"),
                "SuspendProgram=%s" % self._power_script("suspend"),
                "SuspendTime=5",
                "SuspendTimeout=5",
                "ResumeTimeout=60",
                "SuspendExcNodes=%s" % ",".join(self.static) if self.static else "",
                "SlurmctldParameters=idle_on_node_suspend,cloud_dns",
            ]
        for node in self.static + self.cloud:
            lines.append("NodeName=%s NodeHostname=localhost NodeAddr=127.0.0.1 Port=%d "
                         "CPUs=%d RealMemory=1000%s%s%s" % (
                             node, self.ports[node], self.cpus,
                             " Gres=" + self.gres if self.gres else "",
                             " State=CLOUD Feature=cloud" if node in self.cloud else "",
                             "" if node in self.cloud else " State=UNKNOWN"))
        lines.append("PartitionName=%s Nodes=%s Default=YES MaxTime=INFINITE State=UP" % (
            self.PARTITION, ",".join(self.static + self.cloud)))
        with open(self.conf, "w") as f:
            f.write("\n".join(l for l in lines if l) + "\n")
        if self.gres:
            # slurmd counts a gpu only with a device file: /dev/tty<i> stand in for them
            # (nothing opens them: no task/cgroup device constraint). Index i, so jobs see
            # CUDA_VISIBLE_DEVICES=0,1,...
            name, count = self.gres.split(":")[0], int(self.gres.split(":")[-1])
            if not all(os.path.exists("/dev/tty%d" % i) for i in range(count)):
                raise RuntimeError("gres %s: needs /dev/tty0..%d" % (self.gres, count - 1))
            with open(os.path.join(t, "gres.conf"), "w") as f:
                f.write("Name=%s File=/dev/tty[0-%d]\n" % (name, count - 1) if count > 1
                        else "Name=%s File=/dev/tty0\n" % name)
        with open(os.path.join(t, "cgroup.conf"), "w") as f:
            f.write("CgroupPlugin=%s\n" % ("cgroup/v2" if self.cgroups == "v2" else "cgroup/v1"))
            f.write("CgroupMountpoint=/sys/fs/cgroup\nIgnoreSystemd=yes\n"
                    "ConstrainCores=no\nConstrainRAMSpace=no\nConstrainDevices=no\n")

    def _power_script(self, action):
        path = os.path.join(self.tmp, action + ".py")
        with open(path, "w") as f:
            f.write(POWER_SCRIPT % {"action": action, "conf": self.conf, "tmp": self.tmp,
                                    "path": PATH})
        os.chmod(path, 0o755)
        return path

    # -- stop -------------------------------------------------------------------------
    def ours(self):
        """Live processes of this cluster: [(pid, what)]. A process is ours when its
        command line, working directory or environment names tmp, or we started it."""
        mark = self.tmp.encode()  # names tmp: mark + b"/" in it (not /tmp/x in /tmp/xy)
        me = os.getpid()
        found = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == me:
                continue
            try:
                stat = open("/proc/%s/stat" % pid).read()
                if stat.rsplit(")", 1)[1].split()[0] == "Z":
                    continue
                cmd = open("/proc/%s/cmdline" % pid, "rb").read()
            except OSError:
                continue
            hit = int(pid) in self.started_pids or mark + b"/" in cmd
            if not hit:
                try:
                    cwd = os.readlink("/proc/%s/cwd" % pid).encode()
                    hit = cwd == mark or cwd.startswith(mark + b"/")
                except OSError:
                    pass
            if not hit:
                try:
                    hit = (b"SLURM_CONF=" + self.conf.encode() + b"\0") in \
                        open("/proc/%s/environ" % pid, "rb").read()
                except OSError:
                    pass
            if hit:
                found.append((int(pid), cmd.replace(b"\0", b" ").decode(errors="replace")))
        return found

    def close(self, check=True):
        """Stops everything; raises (when check) if a process of this cluster is left."""
        if self._closed:
            return
        self._closed = True
        ctld = self.procs.get("slurmctld")
        if ctld and ctld.poll() is None:
            try:
                self.run("scancel", "--full", "--partition", self.PARTITION, check=False,
                         timeout=15)
                deadline = time.time() + 15
                while time.time() < deadline and self.squeue():
                    time.sleep(0.3)
            except (RuntimeError, subprocess.TimeoutExpired, OSError):
                pass
        # slurmd's (ours by Popen, the cloud ones by pid file), then slurmctld, munged.
        for node in self.static + self.cloud:
            self._kill_pidfile(os.path.join(self.tmp, "slurmd-%s.pid" % node))
        for name in [n for n in self.procs if n.startswith("slurmd-")] + ["slurmctld"]:
            self._stop(name)
        # Anything that survived its daemon (slurmstepd, job processes): TERM, then KILL.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            left = [p for p, _ in self.ours() if p != getattr(self.procs.get("munged"),
                                                                "pid", None)]
            for pid in left:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            deadline = time.time() + 5
            while left and time.time() < deadline:
                time.sleep(0.1)
                left = [p for p, _ in self.ours() if p in left]
        self._stop("munged")
        deadline = time.time() + 10
        left = self.ours()
        while left and time.time() < deadline:
            time.sleep(0.2)
            left = self.ours()
        if left and check:
            raise RuntimeError("Slurm fixture left processes behind: %r" % left)

    def _kill_pidfile(self, path):
        try:
            pid = int(open(path).read().split()[0])
            cmd = open("/proc/%d/cmdline" % pid, "rb").read()
        except (OSError, ValueError, IndexError):
            return
        if self.conf.encode() in cmd:  # only a slurmd of ours
            self.started_pids.add(pid)
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass

    def _stop(self, name):
        p = self.procs.get(name)
        if not p or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)
