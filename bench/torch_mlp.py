#!/usr/bin/env python3
"""PyTorch reference for `drover bench train`: the time of one MLP training step on a GPU.

The model is a stack of Linear layers for consecutive --sizes, with ReLU (or tanh-GELU)
between them, trained on cross-entropy with SGD (momentum 0.9) or AdamW. The data is one
synthetic batch generated on the GPU before timing, so the figure is the step alone:
zero_grad, forward, loss, backward, optimizer step, in eager mode (no torch.compile, no
CUDA graphs).

Precision:
  fp32  TF32 off for matmuls and cuDNN
  tf32  TF32 on
  bf16  fp32 master weights, forward and loss under torch.autocast(bfloat16)

Timing: --warmup steps, then --repeats runs of --steps steps, each run timed with CUDA
events; ms/step is the median over runs (min and max reported too). TFLOP/s counts
6 * params * batch per step.

Usage:
  python3 bench/torch_mlp.py --sizes 784,1024,1024,10 --batch 256 --precision fp32 [--json]

Exit status 2 when torch is missing or no CUDA device is present.
"""
import argparse
import json
import statistics
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="PyTorch MLP training-step benchmark")
    p.add_argument("--sizes", required=True,
                   help="layer widths, comma-separated, input first (e.g. 784,1024,1024,10)")
    p.add_argument("--batch", type=int, required=True, help="samples per step")
    p.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="fp32")
    p.add_argument("--steps", type=int, default=100, help="steps per timed run")
    p.add_argument("--repeats", type=int, default=5, help="timed runs")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps before the runs")
    p.add_argument("--activation", choices=("relu", "gelu"), default="relu")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--json", action="store_true", help="one JSON object on one line")
    a = p.parse_args(argv)
    try:
        a.size_list = [int(s) for s in a.sizes.split(",")]
    except ValueError:
        p.error("--sizes: comma-separated integers expected, got %r" % a.sizes)
    if len(a.size_list) < 2 or min(a.size_list) < 1:
        p.error("--sizes: at least two positive widths expected")
    for name in ("batch", "steps", "repeats"):
        if getattr(a, name) < 1:
            p.error("--%s must be at least 1" % name)
    if a.warmup < 0:
        p.error("--warmup must not be negative")
    return a


def build_model(torch, sizes, activation):
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            if activation == "gelu":
                layers.append(torch.nn.GELU(approximate="tanh"))
            else:
                layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def main(argv=None):
    a = parse_args(argv)
    try:
        import torch
    except ImportError as e:
        print("torch_mlp: PyTorch is not installed (%s)" % e, file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("torch_mlp: no CUDA device available to PyTorch", file=sys.stderr)
        return 2

    tf32 = a.precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    use_autocast = a.precision == "bf16"

    torch.manual_seed(0)
    dev = torch.device("cuda")
    model = build_model(torch, a.size_list, a.activation).to(dev)
    if a.optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=a.lr)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9)
    params = sum(p.numel() for p in model.parameters())

    x = torch.randn(a.batch, a.size_list[0], device=dev)
    y = torch.randint(0, a.size_list[-1], (a.batch,), device=dev)

    def step():
        opt.zero_grad(set_to_none=True)
        if use_autocast:
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(x), y)
        else:
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    for _ in range(a.warmup):
        step()
    torch.cuda.synchronize()

    per_step = []
    for _ in range(a.repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(a.steps):
            step()
        end.record()
        torch.cuda.synchronize()
        per_step.append(start.elapsed_time(end) / a.steps)

    ms = statistics.median(per_step)
    result = {
        "impl": "pytorch",
        "sizes": ",".join(str(s) for s in a.size_list),
        "batch": a.batch,
        "precision": a.precision,
        "ms_per_step": round(ms, 4),
        "ms_min": round(min(per_step), 4),
        "ms_max": round(max(per_step), 4),
        "samples_per_s": round(a.batch / (ms / 1000.0), 1),
        "tflops": round(6.0 * params * a.batch / (ms / 1000.0) / 1e12, 3),
        "params": params,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(),
    }
    if a.json:
        print(json.dumps(result, separators=(",", ":")))
    else:
        print("pytorch %s batch %d %s: %.3f ms/step (min %.3f, max %.3f), %.0f samples/s, "
              "%.1f TFLOP/s, %d params, torch %s on %s"
              % (result["sizes"], a.batch, a.precision, ms, result["ms_min"], result["ms_max"],
                 result["samples_per_s"], result["tflops"], params, result["torch"],
                 result["device"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
