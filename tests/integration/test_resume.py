"""Checkpoints and resuming, with real processes: a job cancelled after a checkpoint and
resumed with `drover submit --resume` ends with parameters bitwise identical to an
uninterrupted run; so does a job whose coordinator was SIGKILLed and restarted; a corrupt
newest checkpoint is detected and the one before it used; with every checkpoint damaged, the
failure is named after rank 0's refusal, not a peer's broken ring."""
import glob
import json
import os
import signal
import subprocess
import time

from harness import Cluster, cluster, main, read_metrics, read_safetensors, unpack

FAST = {"DROVER_HEARTBEAT_MS": "200", "DROVER_PEER_TIMEOUT_MS": "3000",
        "DROVER_RECONNECT_MS": "300"}

SPEC = """
name: %s
target: %s
nodes: 2
model: {type: mlp, hidden: [64, 32]}
data:
  format: synthetic
  synthetic: {train_samples: %d, test_samples: 1000, features: 32, classes: 4, seed: 9}
train:
  epochs: 3
  global_batch: 64
  seed: 5
  checkpoint_every: 40
  keep_checkpoints: 2
  optimizer: {type: adamw, lr: 0.003, weight_decay: 0.01}
  lr_schedule: {type: cosine, warmup_steps: 20}
run_dir: %s
"""  # train_samples / 64 steps per epoch, 3 epochs


def make_spec(name, target, runs, samples=16000):
    return SPEC % (name, target, samples, runs)


def model(run_dir):
    return read_safetensors(os.path.join(run_dir, "model.safetensors"))[1]


def steps_on_disk(run_dir):
    return sorted(int(os.path.basename(d)[5:]) for d in glob.glob(run_dir + "/checkpoints/step-*"))


def wait_for_checkpoint(c, job, at_least, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = c.request("status", {"job": job})[2]["jobs"][0]
        if st.get("ckpt_step", 0) >= at_least:
            return st
        time.sleep(0.05)
    raise AssertionError("no checkpoint of job %d reached step %d" % (job, at_least))


def test_cancel_and_resume_is_bitwise_exact(drover):
    with cluster(drover) as c:
        spec = os.path.join(c.tmp, "job.yaml")
        with open(spec, "w") as f:
            f.write(make_spec("exact", "local", c.runs))
        # The uninterrupted run.
        r = c.drover_cli("submit", spec, "--json")
        ref = json.loads(r.stdout.splitlines()[-1])
        assert r.returncode == 0 and ref["status"] == "succeeded", (ref, r.stderr[-3000:])
        # The same job, interrupted (Ctrl-C cancels) after its first checkpoint...
        p = subprocess.Popen([c.drover, "submit", spec, "--json"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=c.env)
        deadline = time.time() + 60
        run = None
        while time.time() < deadline and not run:
            dirs = [d for d in glob.glob(c.runs + "/exact-*") if d != ref["run_dir"]]
            if dirs and steps_on_disk(dirs[0]):
                run = dirs[0]
            time.sleep(0.05)
        assert run, "the second run wrote no checkpoint"
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
        cut = json.loads(out.splitlines()[-1])
        assert cut["status"] == "cancelled", (cut, err[-3000:])
        done_steps = [x["step"] for x in read_metrics(run) if x["type"] == "step"]
        assert done_steps[-1] < 750, "cancelled too late to test anything"
        # ...and resumed from it with the job's own spec.
        r = c.drover_cli("submit", "--resume", str(cut["job"]), "--json")
        res = json.loads(r.stdout.splitlines()[-1])
        assert r.returncode == 0 and res["status"] == "succeeded", (res, r.stderr[-3000:])
        m = read_metrics(res["run_dir"])
        resumed = [x for x in m if x["type"] == "resume"]
        assert resumed and resumed[0]["step"] % 40 == 0 and resumed[0]["step"] > 0, m[:3]
        first = [x["step"] for x in m if x["type"] == "step"][0]
        assert first == resumed[0]["step"] + 1
        print("cancelled at step %d, resumed from step %d" % (done_steps[-1], resumed[0]["step"]))
        a, b = model(ref["run_dir"]), model(res["run_dir"])
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == b[k], "tensor %s differs after resume" % k
        assert res["test_accuracy"] == ref["test_accuracy"], (res, ref)
        # Old checkpoints are pruned to keep_checkpoints; the final step is checkpointed.
        assert len(steps_on_disk(res["run_dir"])) <= 2 and steps_on_disk(res["run_dir"])[-1] == 750


def test_coordinator_killed_mid_job_resumes_from_checkpoint(drover):
    with cluster(drover, env=FAST) as c:
        c.start_coordinator()
        c.start_agent("a1")
        c.start_agent("a2")
        c.wait_agents(2)
        spec = make_spec("restart", "attached", c.runs, samples=64000)  # 3000 steps
        sub = c.subscribe()
        ref_job = c.request("submit", {"spec": spec})[2]["job"]
        ref, _ = c.follow(sub, ref_job, timeout=120)
        assert ref["state"] == "succeeded", ref
        job = c.request("submit", {"spec": spec})[2]["job"]
        st = wait_for_checkpoint(c, job, 80)
        assert st["step"] < 2900, st  # killed mid-job
        c.stop_coordinator(signal.SIGKILL)
        c.start_coordinator()
        sub = c.subscribe()
        final, _ = c.follow(sub, job, timeout=120)
        assert final["state"] == "succeeded", final
        st = c.request("status", {"job": job})[2]["jobs"][0]
        m = read_metrics(st["run_dir"])
        resumed = [x["step"] for x in m if x["type"] == "resume"]
        assert resumed and resumed[0] >= 80, m[-3:]
        print("coordinator killed; job resumed from step %d" % resumed[0])
        a, b = model(ref["run_dir"]), model(st["run_dir"])
        for k in a:
            assert a[k] == b[k], "tensor %s differs after a coordinator restart" % k
        ck = steps_on_disk(st["run_dir"])
        assert len(ck) == len(set(ck))


def test_corrupt_checkpoint_falls_back(drover):
    with cluster(drover, env=FAST) as c:
        c.start_coordinator()
        c.start_agent("a1")
        c.start_agent("a2")
        c.wait_agents(2)
        spec = make_spec("corrupt", "attached", c.runs).replace("keep_checkpoints: 2",
                                                                       "keep_checkpoints: 5")
        sub = c.subscribe()
        job = c.request("submit", {"spec": spec})[2]["job"]
        st = wait_for_checkpoint(c, job, 120)
        assert c.request("cancel", {"job": job})[1] == "ok"
        c.follow(sub, job, timeout=30)
        run = st["run_dir"]
        steps = steps_on_disk(run)
        newest = "%s/checkpoints/step-%010d/model.safetensors" % (run, steps[-1])
        with open(newest, "r+b") as f:
            f.seek(os.path.getsize(newest) // 2)
            byte = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([byte[0] ^ 0x10]))
        job2 = c.request("submit", {"spec": "", "resume": job})[2]["job"]
        final, _ = c.follow(sub, job2, timeout=120)
        assert final["state"] == "succeeded", final
        run2 = c.request("status", {"job": job2})[2]["jobs"][0]["run_dir"]
        resumed = [x["step"] for x in read_metrics(run2) if x["type"] == "resume"]
        assert resumed == [steps[-2]], (resumed, steps)
        log = open(os.path.join(run2, "logs", "rank-0.log")).read()
        assert "CRC32 mismatch" in log, log[-2000:]
        # Resuming a job that is still running, or has no checkpoint, is refused.
        bad = c.request("submit", {"spec": "", "resume": 999})
        assert bad[1] == "error" and "no such job" in bad[2]["message"], bad


def test_every_checkpoint_damaged_names_rank_0s_refusal(drover):
    # Every checkpoint of a job damaged, then resumed on 3 ranks: rank 0 refuses each
    # checkpoint and fails; the other ranks then see their ring break in the same instant.
    # The job's reason is rank 0's own error, whichever report the coordinator reads first
    # (the failure hold), never a peer's broken ring. Three times, as the race is timing.
    with cluster(drover, env=FAST) as c:
        c.start_coordinator()
        for a in ("a1", "a2", "a3"):
            c.start_agent(a)
        c.wait_agents(3)
        spec = make_spec("damaged", "attached", c.runs).replace("nodes: 2", "nodes: 3")
        sub = c.subscribe()
        job = c.request("submit", {"spec": spec})[2]["job"]
        st = wait_for_checkpoint(c, job, 80)
        assert c.request("cancel", {"job": job})[1] == "ok"
        c.follow(sub, job, timeout=30)
        run = st["run_dir"]
        for f in glob.glob("%s/checkpoints/step-*/model.safetensors" % run):
            with open(f, "r+b") as fh:
                fh.seek(os.path.getsize(f) // 2)
                byte = fh.read(1)
                fh.seek(-1, 1)
                fh.write(bytes([byte[0] ^ 0x10]))
        reasons = []
        for _ in range(3):
            job2 = c.request("submit", {"spec": "", "resume": job})[2]["job"]
            final, _ = c.follow(sub, job2, timeout=120)
            assert final["state"] == "failed", final
            reasons.append(c.request("status", {"job": job2})[2]["jobs"][0]["reason"])
        for r in reasons:
            assert "rank 0" in r and "resume" in r and "CRC32 mismatch" in r, reasons
            assert "ring all-reduce" not in r and "Connection reset" not in r, reasons
        print("every checkpoint damaged, resumed 3 times: %s" % reasons[0])


if __name__ == "__main__":
    main([test_cancel_and_resume_is_bitwise_exact,
          test_coordinator_killed_mid_job_resumes_from_checkpoint,
          test_corrupt_checkpoint_falls_back,
          test_every_checkpoint_damaged_names_rank_0s_refusal])
