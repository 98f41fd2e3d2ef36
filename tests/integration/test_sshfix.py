"""The sshd fixture (sshfix.py) for real: both loopback hosts answer on one port, only the
client key gets in and BatchMode never prompts, a process detached through ssh outlives
its session and is killed by pid through another, and close() leaves nothing running, an
exception in the with block included. Exits 77 (skipped) where sshd cannot run."""
import os
import shutil
import subprocess
import sys
import tempfile
import time

from sshfix import SshServer, proc_table, unavailable

HOSTS = ("127.0.0.2", "127.0.0.3")
DETACH = "setsid -f sh -c 'echo $$ > %s; exec sleep 300' </dev/null >/dev/null 2>&1"


def server():
    tmp = tempfile.mkdtemp(prefix="drover-ssh-")
    return tmp, SshServer(tmp, hosts=HOSTS)


def alive(pid):
    p = proc_table().get(pid)
    return p is not None and p["state"] not in ("Z", "X")


def wait_pid(path):
    """The pid a detached command wrote to `path` (within 10 s: did it run at all)."""
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            with open(path) as f:
                text = f.read()
            if text.endswith("\n"):
                return int(text)
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError("nothing wrote " + path)


def sessions(s):
    """sshd processes under the listener (one or two per open connection)."""
    t = proc_table()
    return [pid for pid, p in t.items() if p["ppid"] == s.proc.pid and p["state"] != "Z"]


def test_both_hosts(drover):
    tmp, s = server()
    with s:
        for h in HOSTS:
            r = subprocess.run(s.ssh_args(h) + ["echo", "hi"], capture_output=True,
                               text=True, timeout=30, stdin=subprocess.DEVNULL)
            assert r.returncode == 0 and r.stdout == "hi\n", (h, r, s.log_text())
            # SSH_CONNECTION: client-ip client-port server-ip server-port
            r = s.run(h, "echo $SSH_CONNECTION; id -u")
            conn, uid = r.stdout.split("\n")[:2]
            assert r.returncode == 0 and conn.split()[2:] == [h, str(s.port)], (h, r)
            assert uid == str(os.getuid()), r
        # the pinned host key is what lets StrictHostKeyChecking=yes through: an empty
        # known_hosts is refused without a prompt.
        empty = os.path.join(tmp, "empty_known_hosts")
        open(empty, "w").close()
        args = [a if not a.startswith("UserKnownHostsFile=") else "UserKnownHostsFile=" + empty
                for a in s.ssh_args(HOSTS[0])]
        r = subprocess.run(args + ["true"], capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == 255 and "Host key verification failed" in r.stderr, r
    assert not s.killed, s.killed
    shutil.rmtree(tmp)


def test_key_only(drover):
    tmp, s = server()
    with s:
        h = HOSTS[1]
        base = s.ssh_args(h)
        # another key: refused, and the only method offered is publickey
        wrong = os.path.join(tmp, "wrong_key")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", wrong], check=True)
        args = list(base)
        args[args.index(s.key)] = wrong
        r = subprocess.run(args + ["true"], capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == 255 and "Permission denied (publickey)" in r.stderr, r
        # no key at all: fails at once (the bound is "did not hang", not a timing)
        args = base[:-1] + ["-o", "PubkeyAuthentication=no", base[-1]]
        r = subprocess.run(args + ["true"], capture_output=True, text=True, timeout=20,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == 255 and "Permission denied (publickey)" in r.stderr, r
        # BatchMode never prompts: with the right key behind a passphrase and an askpass
        # that would answer it, ssh without BatchMode asks (and gets in), ssh with it
        # does not ask and is refused.
        locked = os.path.join(tmp, "locked_key")
        shutil.copy(s.key, locked)
        subprocess.run(["ssh-keygen", "-q", "-p", "-P", "", "-N", "secret", "-f", locked],
                       check=True, capture_output=True)
        asked = os.path.join(tmp, "asked")
        askpass = os.path.join(tmp, "askpass.sh")
        with open(askpass, "w") as f:
            f.write("#!/bin/sh\necho \"$*\" >> %s\necho secret\n" % asked)
        os.chmod(askpass, 0o755)
        env = dict(os.environ, SSH_ASKPASS=askpass, SSH_ASKPASS_REQUIRE="force", DISPLAY=":0")
        args = list(base)
        args[args.index(s.key)] = locked
        batch = args.index("BatchMode=yes")
        for mode, want in (("no", 0), ("yes", 255)):
            args[batch] = "BatchMode=" + mode
            r = subprocess.run(args + ["echo", "in"], capture_output=True, text=True,
                               timeout=30, env=env, stdin=subprocess.DEVNULL)
            assert r.returncode == want, (mode, r)
            assert os.path.exists(asked) == (mode == "no"), (mode, r)
            if os.path.exists(asked):
                os.unlink(asked)
    assert not s.killed, s.killed
    shutil.rmtree(tmp)


def test_detached(drover):
    tmp, s = server()
    with s:
        a, b = HOSTS
        pidfile = os.path.join(tmp, "sleep.pid")
        r = s.run(a, DETACH % pidfile, timeout=20)  # returns: nothing holds the session
        assert r.returncode == 0, (r, s.log_text())
        pid = wait_pid(pidfile)
        # the session is over (its sshd processes gone), the detached sleep is not
        deadline = time.time() + 10
        while sessions(s) and time.time() < deadline:
            time.sleep(0.05)
        assert not sessions(s), sessions(s)
        assert alive(pid) and proc_table()[pid]["cmdline"] == b"sleep\x00300\x00", pid
        # kill it by pid from the other host
        r = s.run(b, "kill %d" % pid)
        assert r.returncode == 0, r
        deadline = time.time() + 10
        while alive(pid) and time.time() < deadline:
            time.sleep(0.05)
        assert not alive(pid), pid
        # one more, left running: close() stops it
        pidfile2 = os.path.join(tmp, "sleep2.pid")
        assert s.run(b, DETACH % pidfile2, timeout=20).returncode == 0
        pid2 = wait_pid(pidfile2)
        assert alive(pid2), pid2
        sshd = s.proc.pid
    assert not alive(pid2) and not alive(sshd), (pid2, sshd)
    assert [k for k in s.killed if k.startswith("%d " % pid2)], s.killed
    assert not s.leftovers()
    shutil.rmtree(tmp)


def test_close_on_failure(drover):
    tmp = tempfile.mkdtemp(prefix="drover-ssh-")
    pidfile = os.path.join(tmp, "sleep.pid")
    pid = None
    try:
        with SshServer(tmp, hosts=HOSTS) as s:
            assert s.run(HOSTS[0], DETACH % pidfile, timeout=20).returncode == 0
            pid = wait_pid(pidfile)
            # a session still open when the test fails: it is stopped too
            hold = subprocess.Popen(s.ssh_args(HOSTS[1]) + ["sleep", "300"],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            deadline = time.time() + 10
            while not sessions(s) and time.time() < deadline:
                time.sleep(0.05)
            assert sessions(s)
            raise KeyError("the test failed")
    except KeyError:
        pass
    hold.wait(timeout=10)
    assert pid is not None and not alive(pid), pid
    assert not s.leftovers(), s.leftovers()
    shutil.rmtree(tmp)


if __name__ == "__main__":
    why = unavailable(HOSTS)
    if why:
        print("sshd cannot run here (%s): skipped" % why)
        sys.exit(77)
    from harness import main
    main([test_both_hosts, test_key_only, test_detached, test_close_on_failure])
