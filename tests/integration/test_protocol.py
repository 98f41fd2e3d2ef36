"""A live coordinator sent malformed frames, msgpack bombs, oversized frames and wrong job
specs answers each with an error (or drops the frame), and then runs a job normally. The
client here speaks the protocol with pyzmq and msgpack only, as docs/protocol.md says."""
import os
import struct
import time

import msgpack
import zmq

from harness import Cluster, cluster, main, pack, unpack

MAX = 65536  # DROVER_MAX_MSG_BYTES for this test

GOOD_SPEC = """
name: tiny
target: attached
nodes: 2
model: {type: mlp, hidden: [32], activation: gelu}
data:
  format: synthetic
  synthetic: {train_samples: 4000, test_samples: 1000, features: 20, classes: 4, seed: 3}
train:
  epochs: 3
  global_batch: 64
  seed: 1
  optimizer: {type: adamw, lr: 0.01, weight_decay: 0.01}
  lr_schedule: {type: cosine, warmup_steps: 10}
run_dir: %s
"""


def raw_client(c):
    s = c.client_socket()
    return s


def expect_error(c, frame, needle):
    s = raw_client(c)
    try:
        s.send(frame)
        assert s.poll(5000), "no reply to a bad frame (%r...)" % frame[:16]
        reply = unpack(s.recv())
        assert reply[0] == 1 and reply[1] == "error", reply
        assert needle in reply[2]["message"], (needle, reply)
        return reply[2]
    finally:
        s.close()


def test_bad_input_then_a_job(drover):
    with cluster(drover, env={"DROVER_MAX_MSG_BYTES": str(MAX)}) as c:
        c.start_coordinator()
        # Malformed frames on the client socket each get an error reply.
        expect_error(c, b"\xc1garbage", "malformed msgpack")
        expect_error(c, b"not msgpack at all", "")
        expect_error(c, msgpack.packb([2, "status", {}]), "unsupported protocol version 2")
        expect_error(c, msgpack.packb([1, "frobnicate", {}]), "unknown message type")
        expect_error(c, msgpack.packb([1, "cancel", {}]), "missing field 'job'")
        expect_error(c, msgpack.packb([1, "cancel", {"job": "x"}]), "field 'job' must be an integer")
        expect_error(c, msgpack.packb({"a": 1}), "[version, type, body]")
        expect_error(c, msgpack.packb([1, "status", [1, 2]]), "body must be a map")
        # msgpack bombs: counts and lengths far beyond the frame, and deep nesting.
        expect_error(c, b"\xdd\xff\xff\xff\xff\x01", "count larger than the bytes left")
        expect_error(c, b"\x93\x01\xa6submit\xdf\x7f\xff\xff\xff", "count larger than the bytes left")
        expect_error(c, b"\x93\x01\xdb\x7f\xff\xff\xff", "length larger than the bytes left")
        expect_error(c, b"\x91" * 200 + b"\x01", "nesting deeper than the limit")
        # A request clients may not send.
        expect_error(c, msgpack.packb([1, "ok", {}]), "not a request clients may send")
        # Wrong job specs: an error naming the key.
        expect_error(c, pack("submit", {"spec": "name: [unclosed"}), "")
        expect_error(c, pack("submit", {"spec": GOOD_SPEC.replace("epochs: 3", "epochz: 3") % c.runs}), "epochz")
        expect_error(c, pack("submit", {"spec": GOOD_SPEC.replace("epochs: 3", "epochs: many") % c.runs}), "epochs")
        expect_error(c, pack("submit", {"spec": GOOD_SPEC.replace("  global_batch: 64\n", "") % c.runs}), "global_batch")
        expect_error(c, pack("submit", {"spec": GOOD_SPEC.replace("activation: gelu", "activation: swish") % c.runs}), "activation")
        expect_error(c, pack("submit", {"spec": GOOD_SPEC % "relative/runs"}), "run_dir: must be an absolute path")
        # An oversized frame is dropped (libzmq closes that connection); no crash.
        s = raw_client(c)
        s.send(b"\x00" * (MAX + 1))
        assert not s.poll(1000), "an oversized frame was answered"
        s.close()
        # The agent/worker socket drops garbage silently and survives.
        a = c.agent_port_socket()
        for frame in (b"\xc1", b"\xdd\xff\xff\xff\xff", b"\x91" * 100, msgpack.packb([1, "hello", {"cpus": "x"}]),
                      msgpack.packb([1, "progress", {"job": 99, "generation": 1}]), b"\x00" * (MAX + 10)):
            a.send(frame)
        a.close()
        time.sleep(0.5)
        assert c.coord.poll() is None, "coordinator died:\n" + c.log("coordinator.log")

        # Then a job runs normally, submitted and followed with the protocol alone.
        c.start_agent("a1")
        c.start_agent("a2")
        c.wait_agents(2)
        sub = c.subscribe()
        reply = c.request("submit", {"spec": GOOD_SPEC % c.runs})
        assert reply[1] == "submitted", reply
        job = reply[2]["job"]
        final, events = c.follow(sub, job, timeout=180)
        assert final["state"] == "succeeded", (final, c.all_logs())
        kinds = {e[1] for e in events}
        assert {"ev_state", "ev_progress", "ev_eval"} <= kinds, kinds
        prog = [e[2] for e in events if e[1] == "ev_progress"]
        assert prog[-1]["step"] == prog[-1]["steps_total"] == 3 * 63, prog[-1]
        assert prog[-1]["slowest_rank"] in (0, 1) and prog[-1]["samples_per_s"] > 0
        print("synthetic job: test accuracy %.4f" % final["test_accuracy"])
        assert final["test_accuracy"] > 0.6, final
        st = c.request("status", {"job": job})[2]["jobs"][0]
        assert st["state"] == "succeeded" and st["nodes"] == 2, st
        # Agents are busy until their workers have exited, then idle again.
        deadline = time.time() + 10
        while time.time() < deadline:
            agents = c.request("agents", {})[2]["agents"]
            if all(a["state"] == "idle" for a in agents):
                break
            time.sleep(0.1)
        assert sorted(a["agent_id"] for a in agents) == ["a1", "a2"]
        assert all(a["state"] == "idle" and a["job"] == 0 for a in agents), agents
        assert c.coord.poll() is None


if __name__ == "__main__":
    main([test_bad_input_then_a_job])
