"""End to end on CPU: `drover submit` on the local target trains Fashion-MNIST on two
real agents to >= 0.87 test accuracy in 5 epochs; the run directory is complete; the job
survives in `drover status` after a coordinator restart; and 1 vs 2 agents with the same
global batch and seed give the same loss curve."""
import json
import os
import subprocess

from harness import Cluster, cluster, main, read_metrics, read_safetensors

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "examples", "fashion-mnist.yaml")
DATA = "/usr/share/datasets/fashion-mnist"


def submit(c, *args):
    r = c.drover_cli("submit", EXAMPLE, "--json", "--set", "run_dir=" + c.runs, *args)
    if r.returncode != 0:
        print(r.stdout, r.stderr)
    lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
    assert lines, "no JSON from submit: %r %r" % (r.stdout, r.stderr[-3000:])
    return r, json.loads(lines[-1])


TORCH_CHECK = r"""
import gzip, sys
import numpy as np, torch
from safetensors.torch import load_file
t = load_file(sys.argv[1])
d = "%s/"
x = np.frombuffer(gzip.open(d + "t10k-images-idx3-ubyte.gz").read()[16:], np.uint8)
y = np.frombuffer(gzip.open(d + "t10k-labels-idx1-ubyte.gz").read()[8:], np.uint8)
h = torch.from_numpy(x.reshape(-1, 784).astype(np.float32) / 255)
n = len([k for k in t if k.endswith(".weight")])
for i in range(n):
    h = h @ t["layers.%%d.weight" %% i].T + t["layers.%%d.bias" %% i]
    if i < n - 1:
        h = torch.relu(h)
print((h.argmax(1).numpy() == y).mean())
""" % DATA


def check_with_torch(path, accuracy):
    """Loads the model with safetensors.torch.load_file and evaluates it in PyTorch, when a
    Python with both is named by $DROVER_TORCH_PYTHON (neither is a Debian package pair
    drover depends on); the format itself is checked by read_safetensors either way."""
    py = os.environ.get("DROVER_TORCH_PYTHON")
    if not py:
        print("safetensors.torch check skipped: set DROVER_TORCH_PYTHON to a python with "
              "torch and safetensors")
        return
    out = subprocess.run([py, "-c", TORCH_CHECK, path], capture_output=True, text=True, check=True)
    acc = float(out.stdout.strip())
    print("safetensors.torch.load_file + PyTorch forward: accuracy %.4f" % acc)
    assert abs(acc - accuracy) < 2e-3, (acc, accuracy)


def test_fashion_mnist_two_local_agents(drover):
    with cluster(drover) as c:
        r, res = submit(c, "--target", "local", "--nodes", "2")
        assert r.returncode == 0, r.stderr[-4000:]
        assert res["status"] == "succeeded", res
        print("fashion-mnist 2 agents: test_accuracy %.4f test_loss %.4f samples/s %.0f"
              % (res["test_accuracy"], res["test_loss"], res["samples_per_s"]))
        assert res["test_accuracy"] >= 0.87, res
        assert set(res) >= {"job", "status", "test_accuracy", "test_loss", "run_dir", "samples_per_s"}
        run = res["run_dir"]
        for f in ("spec.yaml", "metrics.jsonl", "model.safetensors"):
            assert os.path.isfile(os.path.join(run, f)), f
        m = read_metrics(run)
        evals = [x for x in m if x["type"] == "eval"]
        steps = [x for x in m if x["type"] == "step"]
        assert len(evals) == 5, evals
        assert len(steps) == 5 * 469, len(steps)  # ceil(60000 / 128) steps per epoch
        assert abs(evals[-1]["test_accuracy"] - res["test_accuracy"]) < 1e-6
        header, tensors = read_safetensors(os.path.join(run, "model.safetensors"))
        shapes = {k: v[0] for k, v in tensors.items()}
        assert shapes == {"layers.0.weight": [256, 784], "layers.0.bias": [256],
                          "layers.1.weight": [128, 256], "layers.1.bias": [128],
                          "layers.2.weight": [10, 128], "layers.2.bias": [10]}, shapes
        check_with_torch(os.path.join(run, "model.safetensors"), res["test_accuracy"])
        # The local coordinator stopped with submit; a new one on the same state
        # directory still knows the job.
        c.start_coordinator()
        st = c.drover_cli("status", "--json")
        jobs = json.loads(st.stdout)
        assert jobs and jobs[0]["job"] == res["job"] and jobs[0]["status"] == "succeeded", jobs
        assert abs(jobs[0]["test_accuracy"] - res["test_accuracy"]) < 1e-9
        plain = c.drover_cli("status")
        assert "fashion-mnist" in plain.stdout and "succeeded" in plain.stdout, plain.stdout


def test_loss_curve_independent_of_world_size(drover):
    with cluster(drover) as c:
        curves = {}
        for nodes in (1, 2):
            r, res = submit(c, "--target", "local", "--nodes", str(nodes),
                            "--set", "train.max_steps=50", "--set", "train.epochs=1")
            assert r.returncode == 0 and res["status"] == "succeeded", (res, r.stderr[-3000:])
            curves[nodes] = [x["loss"] for x in read_metrics(res["run_dir"]) if x["type"] == "step"]
        assert len(curves[1]) == 50 and len(curves[2]) == 50
        worst = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(curves[1], curves[2]))
        print("max relative loss difference over 50 steps, 1 vs 2 agents: %.3g" % worst)
        assert worst < 1e-4, (worst, curves)
        assert curves[1][-1] < curves[1][0] * 0.7, curves[1]  # and it is learning


if __name__ == "__main__":
    main([test_fashion_mnist_two_local_agents, test_loss_curve_independent_of_world_size])
