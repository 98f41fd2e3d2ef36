#!/usr/bin/env python3
"""Fashion-MNIST with PyTorch DDP on the CPU (gloo): a program drover runs as a command job.

It runs the same under torchrun and under drover (both give it RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT; init_process_group reads them, env://):

    torchrun --nproc_per_node 2 train.py --epochs 2
    drover submit job.yaml

An MLP 784-256-128-10 (ReLU), SGD lr 0.1 momentum 0.9, a global batch of 128 split evenly
across the ranks: each epoch's order is one permutation of the training set drawn from a
fixed seed and the epoch, global batch i is its i-th slice of 128 and rank r takes the
r-th part of that (the last, incomplete batch is dropped). The order thus depends on the
step alone, and a run resumed at step s sees what an unbroken one would.

Checkpoints: rank 0 saves model, optimizer, epoch and step into drover.checkpoint_dir()
(DROVER_CHECKPOINT_DIR, else ./checkpoints) at each epoch's end, at --max-steps, and when
drover.should_stop() says so (a preemption notice or SIGTERM; the ranks agree on it by an
all-reduce each step, so they all leave at the same step, then exit 0). Each file is
written to a temporary name, fsynced and renamed (os.replace), so none is ever half
there. At start every rank loads the newest checkpoint that loads and goes on from it.

Progress goes to drover.report() every --report-every steps (the module rate-limits it);
without the drover module (not on PYTHONPATH) a stub stands in. At the end the test set
is evaluated (split across the ranks, counts summed), rank 0 prints
`test_accuracy=0.xxxx` and writes {"test_accuracy": ...} to
<DROVER_RUN_DIR or .>/result.json.
"""
import argparse
import gzip
import json
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

try:
    import drover
except ImportError:
    class drover:  # noqa: N801: the stub stands in for the module
        """Without drover: no reports, no stop requests, ./checkpoints."""
        @staticmethod
        def report(step, **kw):
            return False

        @staticmethod
        def should_stop():
            return False

        @staticmethod
        def checkpoint_dir():
            os.makedirs("checkpoints", exist_ok=True)
            return "checkpoints"

DATA = "/usr/share/datasets/fashion-mnist"
GLOBAL_BATCH = 128
SEED = 42
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST's training pixels, scaled to [0, 1]
KEEP = 2  # checkpoints kept


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-steps", type=int, default=0,
                   help="stop after this many global steps (0: run every epoch)")
    p.add_argument("--report-every", type=int, default=10, help="steps between reports")
    p.add_argument("--data", default=DATA, help="directory of the four IDX .gz files")
    return p.parse_args()


def log(*a):
    if dist.get_rank() == 0:
        print(*a, flush=True)


# --- data -----------------------------------------------------------------------------

def read_idx(path):
    """An IDX file (gzip) as a numpy array: magic 0x00000800 | type | ndim, then the
    dims as big-endian u32, then the data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError("%s: not an IDX file of uint8" % path)
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError("%s: %d bytes of data for dims %s" % (path, data.size, dims))
    return data.reshape(tuple(dims))


def load(data_dir, split):
    """(images (N, 784) float32 normalized, labels (N,) int64) of 'train' or 't10k'."""
    x = read_idx(os.path.join(data_dir, "%s-images-idx3-ubyte.gz" % split))
    y = read_idx(os.path.join(data_dir, "%s-labels-idx1-ubyte.gz" % split))
    x = torch.from_numpy(x.reshape(len(x), -1).astype(np.float32) / 255.0)
    return (x - MEAN) / STD, torch.from_numpy(y.astype(np.int64))


def epoch_order(n, epoch):
    """The epoch's permutation of the n training samples (the same on every rank)."""
    g = torch.Generator().manual_seed(SEED * 1000003 + epoch)
    return torch.randperm(n, generator=g)


def batch_indices(order, i, rank, world):
    """This rank's part of global batch i of an epoch's order."""
    per = GLOBAL_BATCH // world
    start = i * GLOBAL_BATCH + rank * per
    return order[start:start + per]


# --- checkpoints ------------------------------------------------------------------------

def checkpoints(d):
    """Checkpoint files of d, newest (highest step) first."""
    found = []
    for name in os.listdir(d):
        if name.startswith("ckpt-") and name.endswith(".pt"):
            try:
                found.append((int(name[5:-3]), os.path.join(d, name)))
            except ValueError:
                pass
    return [p for _, p in sorted(found, reverse=True)]


def save(d, model, opt, step, epoch):
    """Rank 0: ckpt-<step>.pt (epoch: the 0-based epoch of the next step), whole or not at
    all; keeps the newest KEEP."""
    path = os.path.join(d, "ckpt-%09d.pt" % step)
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "wb") as f:
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                    "epoch": epoch, "step": step}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    for old in checkpoints(d)[KEEP:]:
        os.unlink(old)
    return path


def resume(d, model, opt):
    """Loads the newest checkpoint that loads; returns its global step (0: none)."""
    for path in checkpoints(d):
        try:
            state = torch.load(path, map_location="cpu")
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            return int(state["step"]), path
        except Exception as e:  # a damaged file: try the one before it
            print("rank %d: cannot load %s: %s" % (dist.get_rank(), path, e), flush=True)
    return 0, None


# --- training ---------------------------------------------------------------------------

def mlp():
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                         nn.Linear(128, 10))


def agree_stop(local):
    """True on every rank if any rank was asked to stop (one all-reduce, MAX)."""
    t = torch.tensor([1 if local else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def evaluate(model, x, y, rank, world):
    """Test accuracy: each rank counts its contiguous part, the counts are summed."""
    model.eval()
    n = len(x)
    lo, hi = n * rank // world, n * (rank + 1) // world
    with torch.no_grad():
        correct = (model(x[lo:hi]).argmax(1) == y[lo:hi]).sum()
    t = torch.tensor([int(correct)], dtype=torch.int64)
    dist.all_reduce(t)
    return t.item() / n


def write_result(acc, step, world):
    d = os.environ.get("DROVER_RUN_DIR") or "."
    path = os.path.join(d, "result.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"test_accuracy": acc, "steps": step, "world_size": world}, f)
        f.write("\n")
    os.replace(tmp, path)


def main():
    args = parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")  # env://: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
    rank, world = dist.get_rank(), dist.get_world_size()
    if GLOBAL_BATCH % world:
        raise SystemExit("the global batch %d does not split over %d ranks"
                         % (GLOBAL_BATCH, world))
    torch.manual_seed(SEED)
    x, y = load(args.data, "train")
    per_epoch = len(x) // GLOBAL_BATCH
    total = args.epochs * per_epoch
    if args.max_steps:
        total = min(total, args.max_steps)

    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ckdir = drover.checkpoint_dir()
    step, path = resume(ckdir, model, opt)
    if path:
        print("rank %d: resuming from epoch %d (step %d) of %s"
              % (rank, step // per_epoch, step, path), flush=True)
    else:
        print("rank %d: no checkpoint in %s, starting at epoch 0" % (rank, ckdir), flush=True)
    ddp = DDP(model)

    stopped, order = False, None
    t0, seen, loss_sum, loss_n = time.time(), 0, 0.0, 0
    ddp.train()
    while step < total:
        epoch, i = divmod(step, per_epoch)
        if order is None or order[0] != epoch:
            order = (epoch, epoch_order(len(x), epoch))
        idx = batch_indices(order[1], i, rank, world)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(ddp(x[idx]), y[idx])
        loss.backward()
        opt.step()
        step += 1
        seen += len(idx)
        loss_sum, loss_n = loss_sum + loss.item(), loss_n + 1
        if step % args.report_every == 0 or step == total:
            drover.report(step=step, loss=loss_sum / loss_n, epoch=epoch,
                          steps_total=total, samples=seen)
            seen = 0
        if step % per_epoch == 0 or step == total:
            if rank == 0:
                save(ckdir, model, opt, step, step // per_epoch)
            log("epoch %d step %d/%d loss %.4f (%.1f s)"
                % (epoch, step, total, loss_sum / loss_n, time.time() - t0))
            loss_sum, loss_n = 0.0, 0
        if agree_stop(drover.should_stop()):
            stopped = True
            if rank == 0 and step % per_epoch and step != total:
                save(ckdir, model, opt, step, epoch)
            log("asked to stop at step %d: checkpoint saved, exiting" % step)
            break

    if not stopped:
        acc = evaluate(model, *load(args.data, "t10k"), rank, world)
        if rank == 0:
            print("test_accuracy=%.4f" % acc, flush=True)
            write_result(acc, step, world)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
