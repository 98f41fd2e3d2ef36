"""A managed target through the ssh launcher, against a real sshd on 127.0.0.2 and
127.0.0.3 (sshfix.py): a 2-node job on the cold target starts one agent on each host
over ssh (setsid, key-only, known host pinned), trains to completion, and idle_timeout
later both are stopped over ssh; nothing is left running on the hosts. Exits 77 where
sshd cannot run (no openssh-server, not root)."""
import os
import sys
import time

from harness import cluster, main, wait_for
import sshfix
import test_targets as tt

TARGETS = """
targets:
  - name: lab
    launcher: ssh
    max_nodes: 2
    idle_timeout: 3
    launch_timeout: 30
    agent_args: [--host, 127.0.0.1, --allow-dir, /tmp]
    ssh:
      hosts: [127.0.0.2, 127.0.0.3]
      port: %d
      user: root
      identity: %s
      known_hosts: %s
      options: [-o, IdentitiesOnly=yes]
"""


def test_ssh_target_scales_up_trains_and_down(drover):
    with cluster(drover, env=tt.ENV) as c:
        with sshfix.SshServer(c.tmp) as s:
            path = os.path.join(c.tmp, "targets.yaml")
            with open(path, "w") as f:
                f.write(TARGETS % (s.port, s.key, s.known_hosts))
            c.coord = c._spawn(["coordinator", "--bind", c.endpoint, "--state-dir", c.state,
                                "--targets", path], "coordinator.log")
            wait_for(lambda: tt.try_request(c), 15, "the coordinator")
            t0 = time.time()
            r = tt.submit(c, "remote", "lab", 2)
            assert r[1] == "submitted", r
            j = r[2]["job"]
            first = None
            while first is None and time.time() - t0 < 90:
                if tt.job(c, j)["step"] > 0:
                    first = time.time() - t0
                time.sleep(0.05)
            st = wait_for(lambda: tt.finished(c, j), 120, "the job to end")
            assert st["state"] == "succeeded", st
            procs = [open("/proc/%d/environ" % p, "rb").read() for p in tt.agent_procs(c)]
            hosts = sorted(e.split(b"SSH_CONNECTION=")[1].split(b"\0")[0].split()[2].decode()
                           for e in procs if b"SSH_CONNECTION=" in e)
            t_end = time.time() - t0
            wait_for(lambda: (lambda x: x["idle"] + x["busy"] + x["starting"] + x["stopping"] == 0
                              and x)(tt.target(c, "lab")), 30, "the target to scale down")
            wait_for(lambda: not tt.agent_procs(c), 20, "the remote agents to exit")
            t_down = time.time() - t0
            t = tt.target(c, "lab")
            assert t["launched"] == 2 and t["failed"] == 0, t
            with open(os.path.join(c.tmp, "coordinator.log"), errors="replace") as f:
                log = f.read()
            assert "scale_up lab-0: launched on 127.0.0.2" in log, log[-3000:]
            assert "scale_up lab-1: launched on 127.0.0.3" in log, log[-3000:]
            print("ssh target: agents on %s; submit -> first step %.2f s, job done at %.1f s, "
                  "scaled to 0 at %.1f s (idle_timeout 3 s)" % (hosts, first, t_end, t_down))
            assert hosts == ["127.0.0.2", "127.0.0.3"], hosts
            c.stop_coordinator()
        assert not s.killed, s.killed  # nothing left for the fixture: the nodes were stopped


if __name__ == "__main__":
    why = sshfix.unavailable()
    if why:
        print("skipped: sshd cannot run here: " + why)
        sys.exit(77)
    main([test_ssh_target_scales_up_trains_and_down])
