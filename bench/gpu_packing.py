"""Trials packed on one GPU: 1, 2, 4 and 8 concurrent `cnn_bn_softmax` trials on MNIST-1D, trials per minute.

What Ray does with ``resources_per_trial: {gpu: 1/k}`` is start k trial processes that share the
device; this benchmark starts the same trial processes (``python -m trainables``, the code path a
Ray trial runs, with the same model, data and engine) k at a time on one GPU and times them, so it
runs where Ray itself cannot be installed (the lent GPU machine has no package index, and Ray's
wheel is larger than what can be carried there).

    python -m bench.gpu_packing                 # on a machine with a GPU (without one: skipped, exit 0)
    python -m bench.gpu_packing --smoke          # CI: CPU, tiny, proves the code path still works

Reports, per level k: wall time for k trials started together, trials/min, the ratio to k=1,
mean samples/s per trial and the test accuracy each reached (so packing is not buying speed with
wrong results). Goal (issue 5): k=4 gives at least 3x the trials/min of k=1.

--smoke asserts: every trial trained at a positive samples/s and reached a finite test accuracy.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from bench._common import Checks, json_path, parser, table, write_json


def run_level(k: int, epochs: int, device: str, threads: int, config: dict[str, Any]) -> dict[str, Any]:
    cfg = json.dumps({**config, "device": device, "num_threads": threads})
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "trainables", "cnn_bn_softmax", "--dataset", "mnist1d", "--epochs", str(epochs), "--config", cfg]
    t0 = time.perf_counter()
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(k)]
    outs = [p.communicate() for p in procs]
    wall = time.perf_counter() - t0
    speeds, accs = [], []
    for p, (out, err) in zip(procs, outs, strict=True):
        if p.returncode != 0:
            raise SystemExit(f"a trial failed (k={k}): {err[-2000:]}")
        rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        speeds.append(statistics.mean(r["samples_per_s"] for r in rows if "samples_per_s" in r))
        accs.append(float(rows[-1]["test_accuracy"]))
    return {"k": k, "wall_s": wall, "trials_per_min": 60 * k / wall, "samples_per_s_per_trial": statistics.mean(speeds),
            "samples_per_s_min": min(speeds), "test_accuracy_min": min(accs), "test_accuracy_max": max(accs)}


def aggregate(k: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A level over its runs: the mean wall-clock (and the fastest run's), every run's, the mean speed."""
    walls = [r["wall_s"] for r in runs]
    return {"k": k, "wall_s": statistics.mean(walls), "wall_s_fastest": min(walls), "wall_s_all": [round(w, 2) for w in walls],
            "trials_per_min": 60 * k / statistics.mean(walls),
            "samples_per_s_per_trial": statistics.mean(r["samples_per_s_per_trial"] for r in runs),
            "samples_per_s_min": min(r["samples_per_s_min"] for r in runs),
            "test_accuracy_min": min(r["test_accuracy_min"] for r in runs), "test_accuracy_max": max(r["test_accuracy_max"] for r in runs)}


def speedups(results: list[dict[str, Any]]) -> None:
    """Throughput against one trial per GPU, from the mean runs and from the fastest runs."""
    base, fastest = results[0], results[0]["wall_s_fastest"]
    for r in results:
        r["speedup_vs_1"] = r["k"] * base["wall_s"] / r["wall_s"]
        r["speedup_vs_1_fastest_runs"] = r["k"] * fastest / r["wall_s_fastest"]


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, "CPU, 1 epoch, levels 1,2, one repeat", "gpu_packing.json")
    ap.add_argument("--levels", default="1,2,4,8")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2, help="runs per level; their mean is reported, and the fastest")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per trial (default: cores / largest level)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.levels, args.epochs, args.repeats, args.device = "1,2", 1, 1, "cpu"
    levels = [int(x) for x in args.levels.split(",")]
    threads = args.threads or max(1, (os.cpu_count() or 1) // max(levels))
    config = {"channels": 32, "batch_size": 32, "lr": 0.01}
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print(f"gpu_packing: skipped: no CUDA device here (torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); "
                  "run it on a machine with a GPU, or --smoke / --device cpu for the code path")
            return 0
        print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; {os.cpu_count()} CPUs; {threads} threads per trial")
    run_level(1, 1, args.device, threads, config)  # warm the file cache and the MNIST-1D cache
    results = []
    for k in levels:
        runs = [run_level(k, args.epochs, args.device, threads, config) for _ in range(args.repeats)]
        results.append(aggregate(k, runs))
    speedups(results)
    print(table(["k", "wall s (mean)", "runs", "trials/min", "x k=1 (means)", "x k=1 (fastest runs)", "samples/s/trial", "test acc"],
                [[r["k"], f"{r['wall_s']:.1f}", r["wall_s_all"], f"{r['trials_per_min']:.1f}", f"{r['speedup_vs_1']:.2f}",
                  f"{r['speedup_vs_1_fastest_runs']:.2f}",
                  f"{r['samples_per_s_per_trial']:.0f}", f"{r['test_accuracy_min']:.3f}-{r['test_accuracy_max']:.3f}"] for r in results]))
    checks = Checks("gpu_packing")
    for r in results:
        checks.check(r["samples_per_s_min"] > 0 and math.isfinite(r["samples_per_s_per_trial"])
                     and math.isfinite(r["test_accuracy_min"]) and math.isfinite(r["test_accuracy_max"]),
                     f"k={r['k']}: every trial trained (min {r['samples_per_s_min']:.0f} samples/s) and reached a finite test accuracy")
    write_json(json_path(args, "gpu_packing"), {"device": args.device, "epochs": args.epochs, "threads": threads, "config": config,
                                                 "results": results, "checks": checks.as_dict()})
    return checks.exit_code()


if __name__ == "__main__":
    sys.exit(main())
