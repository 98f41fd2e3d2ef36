"""A real sshd on loopback for the integration tests (Python 3 standard library only).

    with SshServer(tmp) as s:            # listens on 127.0.0.2 and 127.0.0.3, one port
        s.run("127.0.0.2", "echo hi")    # CompletedProcess: ssh_args(host) + [command]
        subprocess.run(s.ssh_args("127.0.0.3") + ["kill", "123"])

Everything lives under `tmp`: a host key and a client key (ed25519, no passphrase), an
sshd_config that names only files under tmp (nothing in /etc/ssh is read or written), the
authorized_keys file, a known_hosts file pinning the host key for each host:port, sshd's
pid file and its log (LogLevel VERBOSE, -E). Only public-key logins are accepted (root
included: PermitRootLogin prohibit-password); no PAM, no DNS, no ~/.ssh/rc.

close() (and leaving the with block, also on an exception) stops sshd and every process
started through it: sshd's own descendants, anything whose environment carries this
server's SSH_CONNECTION (what a session's commands inherit, setsid -f or not) and anything
whose command line names tmp. It then scans /proc once more and raises if any is left.
"""
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time

from ports import ephemeral_range

SSHD = "/usr/sbin/sshd"


def unavailable(hosts=("127.0.0.2", "127.0.0.3")):
    """Why an SshServer on `hosts` cannot run here (a sentence), or None when it can."""
    for tool in (SSHD, shutil.which("ssh"), shutil.which("ssh-keygen")):
        if not tool or not os.access(tool, os.X_OK):
            return "no %s" % (tool or "ssh/ssh-keygen")
    if os.geteuid() != 0:
        # sshd as another user can only log that user in, and cannot use /run/sshd.
        return "not root"
    for h in hosts:
        try:
            with socket.socket() as s:
                s.bind((h, 0))
        except OSError as e:
            return "cannot bind %s: %s" % (h, e)
    return None


def _free_port(hosts):
    """A port below the ephemeral range that binds on every host (else above it)."""
    import random
    lo, hi = ephemeral_range()
    first, last = (10000, lo - 1) if lo - 1 >= 12000 else (hi + 1, 65530)
    for _ in range(200):
        port = random.randint(first, last)
        socks = []
        try:
            for h in hosts:
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                socks.append(s)
                s.bind((h, port))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("sshfix: no free port on %s" % ", ".join(hosts))


# -- /proc ---------------------------------------------------------------------------------
def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def proc_table():
    """pid -> dict(ppid, state, start, cmdline, environ) for every process now."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        stat = _read("/proc/%s/stat" % name)
        if not stat:
            continue
        fields = stat.rsplit(b")", 1)[1].split()
        table[int(name)] = {
            "state": fields[0].decode(), "ppid": int(fields[1]), "start": int(fields[19]),
            "cmdline": _read("/proc/%s/cmdline" % name),
            "environ": _read("/proc/%s/environ" % name),
        }
    return table


def _describe(pid, p):
    cmd = p["cmdline"].replace(b"\0", b" ").decode(errors="replace").strip()
    return "%d (%s): %s" % (pid, p["state"], cmd or "?")


# -- the server ----------------------------------------------------------------------------
class SshServer:
    """sshd listening on each of `hosts` (loopback addresses) on one port; see the top."""

    def __init__(self, tmp, hosts=("127.0.0.2", "127.0.0.3"), user=None):
        why = unavailable(hosts)
        if why:
            raise RuntimeError("sshfix: cannot run sshd: " + why)
        self.tmp = os.path.abspath(tmp)
        self.hosts = tuple(hosts)
        self.user = user or pwd.getpwuid(os.geteuid()).pw_name
        self.dir = os.path.join(self.tmp, "sshd")
        self.log = os.path.join(self.dir, "sshd.log")
        self.key = os.path.join(self.dir, "client_key")
        self.known_hosts = os.path.join(self.dir, "known_hosts")
        self.port = None
        self.proc = None
        # what close() stopped that had been started through sshd: "pid (state): cmdline"
        self.killed = []
        self._seen = set()  # (pid, start) of every process found to be ours
        self._closed = False
        os.makedirs(self.dir, exist_ok=True)
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # -- setup ---------------------------------------------------------------------------
    def _keygen(self, path, comment):
        if not os.path.exists(path):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                            "-f", path], check=True, stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=30)
        with open(path + ".pub") as f:
            return f.read().strip()

    def _config(self, hostkey, authorized):
        lines = ["ListenAddress %s:%d" % (h, self.port) for h in self.hosts] + [
            "HostKey " + hostkey,
            "AuthorizedKeysFile " + authorized,
            "PidFile " + os.path.join(self.dir, "sshd.pid"),
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitEmptyPasswords no",
            "PermitRootLogin prohibit-password",
            "UsePAM no",
            # The default (yes) refuses an authorized_keys file under /tmp (mode 1777).
            "StrictModes no",
            "UseDNS no",
            "LogLevel VERBOSE",
            "PermitUserRC no",
            "PermitUserEnvironment no",
            "PrintMotd no",
            "PrintLastLog no",
            "X11Forwarding no",
            "AllowAgentForwarding no",
            "AllowUsers " + self.user,
            "MaxStartups 100",
            "MaxSessions 100",
            "LoginGraceTime 30",
        ]
        cfg = os.path.join(self.dir, "sshd_config")
        with open(cfg, "w") as f:
            f.write("\n".join(lines) + "\n")
        return cfg

    def _start(self):
        # Privilege separation's empty directory (the one system path sshd insists on).
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        hostkey = os.path.join(self.dir, "host_key")
        host_pub = self._keygen(hostkey, "sshfix-host")
        client_pub = self._keygen(self.key, "sshfix-client")
        authorized = os.path.join(self.dir, "authorized_keys")
        with open(authorized, "w") as f:
            f.write(client_pub + "\n")
        os.chmod(authorized, 0o600)
        self.port = _free_port(self.hosts)
        with open(self.known_hosts, "w") as f:
            for h in self.hosts:
                f.write("[%s]:%d %s\n" % (h, self.port, host_pub))
        cfg = self._config(hostkey, authorized)
        t = subprocess.run([SSHD, "-t", "-f", cfg], capture_output=True, text=True, timeout=30)
        if t.returncode != 0:
            raise RuntimeError("sshfix: sshd -t refused %s: %s" % (cfg, t.stderr.strip()))
        self.proc = subprocess.Popen([SSHD, "-D", "-f", cfg, "-E", self.log],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 15
        waiting = list(self.hosts)
        while waiting:
            if self.proc.poll() is not None:
                raise RuntimeError("sshfix: sshd exited with %d:\n%s"
                                   % (self.proc.returncode, self.log_text()))
            if time.time() > deadline:
                raise RuntimeError("sshfix: sshd does not answer on %s:%d:\n%s"
                                   % (waiting[0], self.port, self.log_text()))
            if self._banner(waiting[0]):
                waiting.pop(0)
            else:
                time.sleep(0.05)

    def _banner(self, host):
        """Whether host:port accepts a connection and greets with an SSH banner."""
        try:
            with socket.create_connection((host, self.port), timeout=2) as s:
                return s.recv(64).startswith(b"SSH-2.0-")
        except OSError:
            return False

    # -- use -----------------------------------------------------------------------------
    def ssh_args(self, host):
        """The argv prefix of a non-interactive ssh to `host` as the user, with the key."""
        return ["ssh", "-p", str(self.port), "-i", self.key,
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", "UserKnownHostsFile=" + self.known_hosts,
                "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=5",
                "%s@%s" % (self.user, host)]

    def run(self, host, command, timeout=30, **kw):
        """ssh_args(host) + [command]: the CompletedProcess (text, output captured)."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run(self.ssh_args(host) + [command], capture_output=True,
                              text=True, timeout=timeout, **kw)

    def log_text(self):
        return _read(self.log).decode(errors="replace")

    # -- cleanup -------------------------------------------------------------------------
    def _session(self, p):
        """Whether p's environment is a session's of this server: SSH_CONNECTION is
        "client-ip client-port server-ip server-port"."""
        for var in p["environ"].split(b"\0"):
            if var.startswith(b"SSH_CONNECTION="):
                f = var[len(b"SSH_CONNECTION="):].decode(errors="replace").split()
                return len(f) == 4 and f[2] in self.hosts and f[3] == str(self.port)
        return False

    def leftovers(self, table=None):
        """pid -> process of everything of this server's alive now (zombies aside)."""
        table = table if table is not None else proc_table()
        mine, me = set(), os.getpid()
        while me in table and me not in mine:  # never ourselves nor our ancestors
            mine.add(me)
            me = table[me]["ppid"]
        ours = set()
        if self.proc is not None and self.proc.pid in table:
            ours.add(self.proc.pid)
        tmp = self.tmp.encode()
        for pid, p in table.items():
            if (pid, p["start"]) in self._seen or tmp in p["cmdline"] or self._session(p):
                ours.add(pid)
        # ... and their descendants (an sshd session's title hides the rest).
        grew = True
        while grew:
            more = {pid for pid, p in table.items() if p["ppid"] in ours and pid not in ours}
            ours |= more
            grew = bool(more)
        ours -= mine
        for pid in ours:
            self._seen.add((pid, table[pid]["start"]))
        return {pid: table[pid] for pid in ours if table[pid]["state"] not in ("Z", "X")}

    def _listening(self):
        left = []
        for h in self.hosts:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((h, self.port))
            except OSError:
                left.append("%s:%d" % (h, self.port))
            finally:
                s.close()
        return left

    def close(self):
        """Stops sshd and everything started through it; raises if anything is left."""
        if self._closed:
            return
        self._closed = True
        deadline, grace = time.time() + 10, time.time() + 2
        while True:
            left = self.leftovers()
            if not left or time.time() > deadline:
                break
            sig = signal.SIGTERM if time.time() < grace else signal.SIGKILL
            for pid, p in left.items():
                # What was started through it; sshd's own processes of connections
                # that are ending (the client has already returned) are not news.
                started = self.tmp.encode() in p["cmdline"] or self._session(p)
                if started and (self.proc is None or pid != self.proc.pid):
                    desc = _describe(pid, p)
                    if desc not in self.killed:
                        self.killed.append(desc)
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            if self.proc is not None:
                self.proc.poll()
            time.sleep(0.05)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        left = [_describe(pid, p) for pid, p in self.leftovers().items()]
        ports = self._listening() if self.port else []
        if left or ports:
            raise RuntimeError("sshfix: left behind after close: %r, still bound: %r"
                               % (left, ports))
