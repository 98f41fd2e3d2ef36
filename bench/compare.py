#!/usr/bin/env python3
"""drover against PyTorch: the time of one MLP training step, on the same GPU, in one run.

Usage:
  python3 bench/compare.py --drover build-gpu/cli/drover [--quick] [--out bench-results.json]
                           [--configs small,mid,large] [--precisions fp32,bf16]

For each configuration and precision it runs `DROVER bench train ... --json` and
bench/torch_mlp.py with the same sizes, batch, precision, steps and repeats (the same
python as this script), alternating which goes first from one pair to the next so that
drift in the GPU's speed hits both. Then, once each, `drover bench train` on real
Fashion-MNIST batches (the share of step time spent waiting for data) and
`drover bench overlap` (all-reduce hidden behind backward).

Every command has a timeout (--timeout, 120 s), and --budget caps the whole run so that a
caller's own timeout never loses the table; a failure becomes an error row and the rest still runs. All
raw result objects go to --out as a JSON list; the comparison table is printed last, on
stdout (progress goes to stderr). Exit status 0 when anything ran, goals met or not;
1 when nothing did. Stdlib only.
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TORCH_MLP = os.path.join(HERE, "torch_mlp.py")

# name -> (sizes, global batch, steps, repeats)
CONFIGS = {
    "small": ("784,1024,1024,10", 256, 100, 5),
    "mid": ("784,4096,4096,10", 1024, 100, 5),
    "large": ("1024,8192,8192,8192,1024", 4096, 20, 5),
}
PRECISIONS = ("fp32", "tf32", "bf16")

FASHION = ("784,4096,4096,10", 1024, "fp32", 100, 3)  # sizes, batch, precision, steps, repeats
OVERLAP_BUCKET_MB = 64
DATA_WAIT_GOAL_PCT = 5.0


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def last_line(text):
    lines = [l.strip() for l in (text or "").splitlines() if l.strip()]
    return lines[-1] if lines else ""


def as_text(b):
    if b is None:
        return ""
    return b.decode("utf-8", "replace") if isinstance(b, bytes) else b


def run_json(cmd, timeout):
    """Runs cmd; returns (object from the last stdout line, None) or (None, error text)."""
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        err = last_line(as_text(e.stderr))
        return None, "timed out after %d s%s" % (timeout, ": " + err if err else "")
    except OSError as e:
        return None, "cannot run %s: %s" % (cmd[0], e.strerror or e)
    secs = time.monotonic() - t0
    out, err = as_text(p.stdout), last_line(as_text(p.stderr))
    if p.returncode != 0:
        return None, "exit %d%s" % (p.returncode, ": " + err if err else "")
    # The last line that is a JSON object (a library may log to stdout after it).
    objs = [l.strip() for l in out.splitlines() if l.strip().startswith("{")]
    line = objs[-1] if objs else ""
    try:
        obj = json.loads(line)
    except ValueError:
        return None, "no JSON on the last stdout line%s" % (": " + err if err else "")
    if not isinstance(obj, dict):
        return None, "last stdout line is not a JSON object"
    obj["wall_s"] = round(secs, 2)
    return obj, None


DEADLINE = None  # time.monotonic() after which nothing more starts (--budget)


def measure(kind, cmd, timeout, extra):
    log("  %-8s %s" % (kind, " ".join(cmd)))
    if DEADLINE is not None:
        left = int(DEADLINE - time.monotonic())
        timeout = min(timeout, left)
    if timeout < 1:
        obj, err = None, "skipped: --budget spent"
    else:
        obj, err = run_json(cmd, timeout)
    row = dict(extra)
    row["kind"] = kind
    row["cmd"] = cmd
    if err is not None:
        row["error"] = err
        log("    error: %s" % err)
    else:
        row.update(obj)
    return row


def num(row, key):
    if row is None or "error" in row:
        return None
    v = row.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def goal(config, precision, ratio, drover_tflops):
    """(description, met) for a config/precision pair, or None when no goal is set."""
    if config == "small":
        return "ratio <= 0.4", None if ratio is None else ratio <= 0.4
    if config == "mid":
        return "ratio <= 0.9", None if ratio is None else ratio <= 0.9
    if config == "large" and precision == "bf16":
        return ">= 500 TFLOP/s", None if drover_tflops is None else drover_tflops >= 500
    if config == "large" and precision == "fp32":
        return "ratio <= 1.0", None if ratio is None else ratio <= 1.0
    return None


def goal_cell(g, failed):
    if g is None:
        return "-"
    desc, met = g
    if met is None:
        return "NOT met (%s failed): %s" % (failed or "run", desc)
    return ("met: " if met else "NOT met: ") + desc


def fmt(v, digits):
    return "-" if v is None else "%.*f" % (digits, v)


def print_table(rows):
    head = ["config", "precision", "drover ms", "torch ms", "ratio", "drover TFLOP/s",
            "torch TFLOP/s", "goal"]
    right = {2, 3, 4, 5, 6}
    w = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]

    def line(r):
        cells = [str(c).rjust(w[i]) if i in right else str(c).ljust(w[i]) for i, c in enumerate(r)]
        return "| " + " | ".join(cells) + " |"

    print(line(head))
    print("|" + "|".join(("-" * (w[i] + 1) + ":") if i in right else ("-" * (w[i] + 2))
                         for i in range(len(head))) + "|")
    for r in rows:
        print(line(r))


def parse_list(text, allowed, what):
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        sys.exit("compare: --%s: unknown %s (choose from %s)"
                 % (what, ", ".join(bad) or "(empty)", ", ".join(allowed)))
    return items


def main(argv=None):
    p = argparse.ArgumentParser(description="drover vs PyTorch training-step benchmark")
    p.add_argument("--drover", default="build-gpu/cli/drover", help="the drover binary")
    p.add_argument("--quick", action="store_true", help="half the steps, 3 repeats")
    p.add_argument("--out", default="bench-results.json", help="raw JSON rows go here")
    p.add_argument("--configs", default="small,mid,large")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--timeout", type=int, default=120, help="seconds per command")
    p.add_argument("--budget", type=int, default=0,
                   help="seconds for everything (0: no limit); commands that would start "
                        "later become error rows, so the table still prints")
    a = p.parse_args(argv)
    global DEADLINE
    if a.budget > 0:
        DEADLINE = time.monotonic() + a.budget
    configs = parse_list(a.configs, tuple(CONFIGS), "configs")
    precisions = parse_list(a.precisions, PRECISIONS, "precisions")
    drover = a.drover

    raw, table, notes = [], [], []
    pair = 0
    for config in configs:
        sizes, batch, steps, repeats = CONFIGS[config]
        if a.quick:
            steps, repeats = max(1, steps // 2), 3
        for precision in precisions:
            common = ["--sizes", sizes, "--batch", str(batch), "--precision", precision,
                      "--steps", str(steps), "--repeats", str(repeats), "--json"]
            runs = {
                # --backend cuda: a GPU that does not answer is an error, never a CPU figure
                "drover": [drover, "bench", "train", "--backend", "cuda"] + common,
                "pytorch": [sys.executable, TORCH_MLP] + common,
            }
            order = ("drover", "pytorch") if pair % 2 == 0 else ("pytorch", "drover")
            pair += 1
            log("%s %s (%s, batch %d, %d steps x %d)" % (config, precision, sizes, batch,
                                                          steps, repeats))
            got = {}
            for kind in order:
                got[kind] = measure(kind, runs[kind], a.timeout,
                                    {"config": config, "precision": precision})
                raw.append(got[kind])
            d, t = got["drover"], got["pytorch"]
            d_ms, t_ms = num(d, "ms_per_step"), num(t, "ms_per_step")
            d_tf, t_tf = num(d, "tflops"), num(t, "tflops")
            ratio = d_ms / t_ms if d_ms is not None and t_ms else None
            failed = " and ".join(k for k in ("drover", "pytorch") if "error" in got[k])
            for k in ("drover", "pytorch"):
                if "error" in got[k]:
                    notes.append("%s %s, %s: %s" % (config, precision, k, got[k]["error"]))
            table.append([config, precision, fmt(d_ms, 3), fmt(t_ms, 3), fmt(ratio, 2),
                          fmt(d_tf, 1), fmt(t_tf, 1),
                          goal_cell(goal(config, precision, ratio, d_tf), failed)])

    # Real data: how much of the step time the loader leaves the GPU waiting.
    sizes, batch, precision, steps, repeats = FASHION
    log("fashion data (%s, batch %d, %s)" % (sizes, batch, precision))
    row = measure("fashion", [drover, "bench", "train", "--backend", "cuda", "--sizes", sizes,
                              "--batch", str(batch),
                              "--precision", precision, "--data", "fashion", "--steps",
                              str(steps), "--repeats", str(repeats), "--json"],
                  a.timeout, {"config": "mid+fashion", "precision": precision})
    raw.append(row)
    wait = num(row, "data_wait_pct")
    desc = "data wait < %g %%" % DATA_WAIT_GOAL_PCT
    if "error" in row:
        notes.append("mid+fashion %s, drover: %s" % (precision, row["error"]))
        cell = "NOT met (drover failed): " + desc
    elif wait is None:
        cell = "NOT met (no data_wait_pct): " + desc
    else:
        cell = ("met: " if wait < DATA_WAIT_GOAL_PCT else "NOT met: ") + \
            "data wait %.1f %% < %g %%" % (wait, DATA_WAIT_GOAL_PCT)
    table.append(["mid+fashion", precision, fmt(num(row, "ms_per_step"), 3), "-", "-",
                  fmt(num(row, "tflops"), 1), "-", cell])

    # Gradient all-reduce hidden behind backward.
    log("overlap (bucket %d MB)" % OVERLAP_BUCKET_MB)
    row = measure("overlap", [drover, "bench", "overlap", "--bucket-mb", str(OVERLAP_BUCKET_MB),
                              "--json"], a.timeout, {"config": "overlap"})
    raw.append(row)
    if "error" in row:
        notes.append("overlap, drover: %s" % row["error"])
        cell = "error"
    else:
        cell = "info: %s ms serial -> %s ms overlapped, %s %% hidden" % (
            fmt(num(row, "serial_ms"), 2), fmt(num(row, "overlapped_ms"), 2),
            fmt(num(row, "hidden_pct"), 1))
    table.append(["overlap %dMB" % OVERLAP_BUCKET_MB, "-", fmt(num(row, "overlapped_ms"), 3),
                  "-", "-", "-", "-", cell])

    try:
        with open(a.out, "w") as f:
            f.write("[\n" + ",\n".join(json.dumps(r) for r in raw) + "\n]\n")
    except OSError as e:
        log("compare: cannot write %s: %s" % (a.out, e))

    device = next((r.get("device") for r in raw if r.get("device")), None)
    torch_v = next((r.get("torch") for r in raw if r.get("torch")), None)
    graphs = next((r.get("graphs") for r in raw if r.get("kind") == "drover"
                   and "graphs" in r), None)
    print("# drover vs PyTorch %s, ms per training step (median), on %s%s%s"
          % (torch_v or "(not run)", device or "(device unknown)",
             "" if graphs is None else ", drover CUDA graphs %s" % ("on" if graphs else "off"),
             ", --quick" if a.quick else ""))
    for n in notes:
        print("# error: " + n)
    print_table(table)
    sys.stdout.flush()
    return 0 if any("error" not in r for r in raw) else 1


if __name__ == "__main__":
    sys.exit(main())
