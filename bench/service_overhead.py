"""Service overhead and utilization: a study through Caviar's REST API against a bare ``Tuner.fit``.

64 trials of ``busy_work`` (fixed CPU work: 20 reports x 0.1 s = 2 s a trial, 1 CPU each) on a
Ray head of 2 CPUs, run both ways on the same head, alternating, ``--repeats`` times:

  bare    a bare Tuner.fit script: the same trainable, tune.uniform over x and y, num_samples=64,
          max_concurrent_trials=2, Tune's defaults otherwise (a new trial process per trial)
  caviar  POST /v1/studies (random sampler, no early stopping, 2 concurrent) until it reads completed

Reports wall-clock (median and spread), the ratio caviar/bare (goal <= 1.10), utilization =
busy trial-seconds / (slots x wall) (goal >= 0.90), and where Caviar's time goes, from the store's
timestamps: submit -> driver running (dispatcher tick + Ray job start + driver imports), driver
running -> first trial, the trials, gaps between a slot's trials (actor reuse, sampler, store),
last trial -> study completed.

    python -m bench.service_overhead            # 64 trials x 2 s, 2 repeats
    python -m bench.service_overhead --smoke     # CI: 4 short trials, once
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench._cluster import CaviarServer, LocalHead


def run_bare(head: LocalHead, trials: int, reports: int, seconds: float, storage: Path) -> dict[str, Any]:
    import ray
    from ray import tune

    from trainables import get_trainable

    if not ray.is_initialized():
        ray.init(address=head.gcs_address, logging_level="ERROR", log_to_driver=False)
    spec = get_trainable("busy_work")
    t0 = time.time()
    grid = tune.Tuner(
        tune.with_resources(spec.train, {"cpu": 1}),
        param_space={"epochs": reports, "seconds_per_epoch": seconds, "x": tune.uniform(0, 1), "y": tune.uniform(0, 1)},
        tune_config=tune.TuneConfig(metric="val_accuracy", mode="max", num_samples=trials, max_concurrent_trials=2),
        run_config=tune.RunConfig(storage_path=str(storage), verbose=0),
    ).fit()
    wall = time.time() - t0
    assert len(grid) == trials and not grid.errors, grid.errors
    return {"wall_s": wall}


def _ts(value: str | None) -> float:
    return datetime.fromisoformat(value).timestamp() if value else float("nan")


def run_caviar(server: CaviarServer, trials: int, reports: int, seconds: float) -> dict[str, Any]:
    definition = {
        "name": "overhead", "trainable": "busy_work", "dataset": {"name": "digits"},
        "search_space": {"x": {"type": "float", "low": 0, "high": 1}, "y": {"type": "float", "low": 0, "high": 1}},
        "fixed": {"epochs": reports, "seconds_per_epoch": seconds},
        "sampler": {"type": "random", "seed": 0}, "scheduler": {"type": "none"},
        "budget": {"num_trials": trials, "max_concurrent_trials": 2},
    }
    sid, s, t0, wall = server.submit_and_wait(definition, poll_s=0.1)
    rows = httpx.get(f"{server.url}/v1/studies/{sid}/trials", timeout=60).json()
    assert len(rows) == trials and all(t["state"] == "completed" for t in rows), [t["state"] for t in rows]
    starts = sorted(_ts(t["started_at"]) for t in rows)
    ends = sorted(_ts(t["finished_at"]) for t in rows)
    # a slot's next trial starts after one ends: pair the k-th end with the (k+2)-th start
    gaps = [starts[k + 2] - ends[k] for k in range(len(rows) - 2)]
    return {
        "wall_s": wall,
        "submit_to_driver_s": _ts(s["started_at"]) - t0,
        "driver_to_first_trial_s": starts[0] - _ts(s["started_at"]),
        "trials_s": ends[-1] - starts[0],
        "last_trial_to_completed_s": _ts(s["finished_at"]) - ends[-1],
        "completed_to_client_s": t0 + wall - _ts(s["finished_at"]),
        "gap_between_trials_ms": 1000 * statistics.median(gaps) if gaps else float("nan"),
        "trial_duration_s": statistics.median(e - b for b, e in zip(sorted(_ts(t["started_at"]) for t in rows), sorted(_ts(t["finished_at"]) for t in rows), strict=True)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=64)
    ap.add_argument("--reports", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=0.1, help="busy seconds per report")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    if args.smoke:
        args.trials, args.reports, args.seconds, args.repeats = 4, 3, 0.05, 1
    work = Path(tempfile.mkdtemp(prefix="caviar-overhead-"))
    os.environ["CAVIAR_DATA_DIR"] = str(work / "data")
    head = LocalHead(work, num_cpus=2)
    server = CaviarServer(work / "data", head)
    busy = args.trials * args.reports * args.seconds
    results: dict[str, list[dict[str, Any]]] = {"bare": [], "caviar": []}
    try:
        for i in range(args.repeats):
            for method in ("bare", "caviar") if i % 2 == 0 else ("caviar", "bare"):
                if method == "bare":
                    r = run_bare(head, args.trials, args.reports, args.seconds, work / f"bare{i}")
                else:
                    r = run_caviar(server, args.trials, args.reports, args.seconds)
                r["utilization"] = busy / (2 * r["wall_s"])
                results[method].append(r)
                print(f"repeat {i} {method:>6}: wall {r['wall_s']:.1f} s, utilization {r['utilization']:.3f}", flush=True)
    finally:
        import ray

        ray.shutdown()
        server.stop()
        head.stop()
    med = {m: statistics.median(r["wall_s"] for r in rs) for m, rs in results.items()}
    ratio = med["caviar"] / med["bare"]
    print(f"\n{args.trials} trials x {args.reports} reports x {args.seconds} s on 2 slots: {busy:.0f} busy trial-seconds, ideal wall {busy / 2:.0f} s")
    for m, rs in results.items():
        walls = [r["wall_s"] for r in rs]
        utils = [r["utilization"] for r in rs]
        print(f"  {m:>6}: wall {statistics.median(walls):.1f} s [{min(walls):.1f}-{max(walls):.1f}], utilization {statistics.median(utils):.3f}")
    print(f"  caviar / bare wall-clock: {ratio:.3f} (goal <= 1.10)")
    keys = ["submit_to_driver_s", "driver_to_first_trial_s", "trials_s", "last_trial_to_completed_s", "completed_to_client_s",
            "gap_between_trials_ms", "trial_duration_s"]
    print("  where Caviar's time goes (median over repeats):")
    for k in keys:
        print(f"    {k:<28} {statistics.median(r[k] for r in results['caviar']):.3f}")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "results": results, "ratio": ratio}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
