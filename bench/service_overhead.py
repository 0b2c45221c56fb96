"""Service overhead and utilization: a study through Caviar's REST API against a bare ``Tuner.fit``.

64 trials of ``busy_work`` (fixed CPU work: 20 reports x 0.1 s = 2 s a trial, 1 CPU each) on a
Ray head of 2 CPUs, run each way on the same head, in rotation, ``--repeats`` times:

  bare    a bare Tuner.fit script with Tune's defaults: the same trainable, tune.uniform over x and y,
          num_samples=64, max_concurrent_trials=2 (a new trial process per trial, CSV, JSON and
          TensorBoard loggers)
  bare+   the same script as a skilled user tunes it: reuse_actors=True and only the JSON logger
          (TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1, JsonLoggerCallback): what Caviar's runner sets
  caviar  POST /v1/studies (random sampler, no early stopping, 2 concurrent) until it reads completed

``--workload mnist1d``: the same comparison on a real MNIST-1D study: ``mlp_bn_softmax``, ``--reports``
epochs a trial (about 0.1 s each here), a grid of learning rates x weight decays (the same
``--trials`` configurations both ways: Caviar's grid sampler, Tune's ``grid_search``), no early stopping.
Utilization is not reported for it (its busy time is not fixed).

Reports wall-clock (median and spread), the ratios caviar/bare+ (the honest one; goal <= 1.05) and
caviar/bare, utilization = busy trial-seconds / (slots x wall) (goal >= 0.95), where Caviar's time
goes, from the store's timestamps: submit -> driver running (dispatcher tick + Ray job start +
driver imports), driver running -> first trial, the trials, gaps between a slot's trials (actor
reuse, sampler, store), last trial -> study completed; and how many trial processes each way used
(the ``pid`` of each trial's results in Tune's result.json).

--smoke asserts: no failed trial; Caviar and bare+ reuse their trial processes (reuse_actors): at
most max_concurrent_trials distinct trial PIDs for more trials than that; Caviar's submit -> first
trial running under 2 s (the warm driver; a cold start takes 3.6-7 s here).

    python -m bench.service_overhead            # 64 trials x 2 s, 3 repeats (each method first once)
    python -m bench.service_overhead --smoke     # CI: 4 short trials, once
    python -m bench.service_overhead --workload mnist1d --methods bare+,caviar
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench._common import (
    Checks,
    cluster,
    json_path,
    parser,
    submit_and_wait,
    table,
    tune_json_logger_only,
    wait_quiet,
    warm_driver_up,
    write_json,
)
from service.client import Client
from service.local import LocalHead, wait_until

SLOTS = 2  # the head's CPUs = max_concurrent_trials


def trial_pids(experiment: Path) -> set[int]:
    """The PIDs that ran an experiment's trials, from each trial's result.json (one result a line)."""
    pids = set()
    for path in experiment.glob("*/result.json"):
        for line in path.read_text().splitlines():
            if line.strip():
                pids.add(int(json.loads(line)["pid"]))
    return pids


def grid_axes(trials: int) -> tuple[list[float], list[float]]:
    """The MNIST-1D workload's configurations: ``a`` learning rates x ``b`` weight decays, a * b = trials."""
    a = max(d for d in range(1, int(trials**0.5) + 1) if trials % d == 0)
    b = trials // a
    lrs = [round(1e-3 * 100 ** (i / max(1, b - 1)), 6) for i in range(b)]  # 1e-3 .. 1e-1, log-spaced
    decays = [0.0] + [round(1e-5 * 1000 ** (i / max(1, a - 2)), 7) for i in range(a - 1)]  # 0, then 1e-5 .. 1e-2
    return lrs, decays[:a]


def run_bare(head: LocalHead, trials: int, reports: int, seconds: float, storage: Path, *, tuned: bool = False,
             workload: str = "busy") -> dict[str, Any]:
    """``tuned``: reuse_actors=True and only the JSON logger (bare+); otherwise Tune's defaults."""
    import ray
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from trainables import get_trainable

    if not ray.is_initialized():
        ray.init(address=head.gcs_address, logging_level="ERROR", log_to_driver=False)
    if workload == "mnist1d":
        lrs, decays = grid_axes(trials)
        spec = get_trainable("mlp_bn_softmax")
        space: dict[str, Any] = {"epochs": reports, "dataset": {"name": "mnist1d"},
                                 "lr": tune.grid_search(lrs), "weight_decay": tune.grid_search(decays)}
        samples = 1
    else:
        spec = get_trainable("busy_work")
        space = {"epochs": reports, "seconds_per_epoch": seconds, "x": tune.uniform(0, 1), "y": tune.uniform(0, 1)}
        samples = trials
    with tune_json_logger_only(tuned):  # bare+: CSV and TensorBoard off, JSON kept (below)
        t0 = time.time()
        grid = tune.Tuner(
            tune.with_resources(spec.load_train(), {"cpu": 1}),
            param_space=space,
            tune_config=tune.TuneConfig(metric="val_accuracy", mode="max", num_samples=samples, max_concurrent_trials=SLOTS,
                                        reuse_actors=tuned),
            run_config=tune.RunConfig(name="bare", storage_path=str(storage), verbose=0,
                                      callbacks=[JsonLoggerCallback()] if tuned else None),
        ).fit()
        wall = time.time() - t0
    return {"wall_s": wall, "trials": len(grid), "failed_trials": len(grid.errors),
            "trial_processes": len(trial_pids(storage / "bare"))}


def _ts(value: str | None) -> float:
    return datetime.fromisoformat(value).timestamp() if value else float("nan")


def run_caviar(client: Client, data_dir: Path, trials: int, reports: int, seconds: float, workload: str = "busy") -> dict[str, Any]:
    definition: dict[str, Any] = {
        "name": "overhead", "trainable": "busy_work", "dataset": {"name": "digits"},
        "search_space": {"x": {"type": "float", "low": 0, "high": 1}, "y": {"type": "float", "low": 0, "high": 1}},
        "fixed": {"epochs": reports, "seconds_per_epoch": seconds},
        "sampler": {"type": "random", "seed": 0}, "scheduler": {"type": "none"},
        "budget": {"num_trials": trials, "max_concurrent_trials": SLOTS},
    }
    if workload == "mnist1d":
        lrs, decays = grid_axes(trials)
        definition.update({
            "name": "overhead-mnist1d", "trainable": "mlp_bn_softmax", "dataset": {"name": "mnist1d"}, "fixed": {"epochs": reports},
            "search_space": {"lr": {"type": "categorical", "choices": lrs}, "weight_decay": {"type": "categorical", "choices": decays}},
            "sampler": {"type": "grid"},
        })
    sid, s, t0, wall = submit_and_wait(client, definition, poll_s=0.1)
    rows = client.trials(sid)
    starts = sorted(_ts(t["started_at"]) for t in rows)
    ends = sorted(_ts(t["finished_at"]) for t in rows)
    # a slot's next trial starts after one ends: pair the k-th end with the (k+SLOTS)-th start
    gaps = [starts[k + SLOTS] - ends[k] for k in range(len(rows) - SLOTS)]
    return {
        "wall_s": wall,
        "trials": len(rows),
        "failed_trials": sum(1 for t in rows if t["state"] != "completed"),
        "trial_processes": len(trial_pids(data_dir / "ray_results" / sid)),
        "submit_to_driver_s": _ts(s["started_at"]) - t0,
        "driver_to_first_trial_s": starts[0] - _ts(s["started_at"]),
        "trials_s": ends[-1] - starts[0],
        "last_trial_to_completed_s": _ts(s["finished_at"]) - ends[-1],
        "completed_to_client_s": t0 + wall - _ts(s["finished_at"]),
        "gap_between_trials_ms": 1000 * statistics.median(gaps) if gaps else float("nan"),
        "trial_duration_s": statistics.median(e - b for b, e in zip(starts, ends, strict=True)),
    }


BREAKDOWN = ("submit_to_driver_s", "driver_to_first_trial_s", "trials_s", "last_trial_to_completed_s", "completed_to_client_s",
             "gap_between_trials_ms", "trial_duration_s")


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, "4 short trials, once", "service_overhead.json")
    ap.add_argument("--trials", type=int, default=64)
    ap.add_argument("--reports", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=0.1, help="busy seconds per report")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--methods", default="bare,bare+,caviar", help="which of bare, bare+, caviar to run (comma-separated)")
    ap.add_argument("--workload", default="busy", choices=["busy", "mnist1d"],
                    help="busy: busy_work, fixed CPU work; mnist1d: mlp_bn_softmax on MNIST-1D, a grid of lr x weight_decay")
    args = ap.parse_args(argv)
    if args.smoke:
        args.trials, args.reports, args.seconds, args.repeats = 4, 3, 0.05, 1
    out = json_path(args, "service_overhead")
    work = Path(tempfile.mkdtemp(prefix="caviar-overhead-"))
    busy = args.trials * args.reports * args.seconds if args.workload == "busy" else float("nan")
    methods = tuple(m for m in ("bare", "bare+", "caviar") if m in args.methods.split(","))
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    with cluster(work, num_cpus=SLOTS) as (head, server):
        assert server is not None
        if args.workload == "mnist1d":  # generated once into the data directory, before anything is timed
            from trainables.datasets import Mnist1dSpec, load_dataset

            load_dataset(Mnist1dSpec(name="mnist1d"))
        with server.client() as client:
            for i in range(args.repeats):
                for method in methods[i % len(methods):] + methods[:i % len(methods)]:  # each method first in turn
                    # Caviar's warm driver starts while no study runs: it is up before any run is timed,
                    # so its start-up takes CPU from none of them
                    wait_until(lambda: warm_driver_up(head), 120, "Caviar's warm driver", interval=0.2)
                    wait_quiet()  # and its trial processes have imported PyTorch (settings.warm_trials)
                    if method == "caviar":
                        r = run_caviar(client, server.data_dir, args.trials, args.reports, args.seconds, args.workload)
                    else:
                        r = run_bare(head, args.trials, args.reports, args.seconds, work / f"{method}{i}", tuned=method == "bare+",
                                     workload=args.workload)
                    r["utilization"] = busy / (SLOTS * r["wall_s"])
                    results[method].append(r)
                    print(f"repeat {i} {method:>6}: wall {r['wall_s']:.1f} s, utilization {r['utilization']:.3f}, "
                          f"{r['trial_processes']} trial processes for {r['trials']} trials", flush=True)
    med = {m: statistics.median(r["wall_s"] for r in rs) for m, rs in results.items()}
    ratio = med["caviar"] / med["bare+"] if "bare+" in med and "caviar" in med else float("nan")
    ratio_defaults = med["caviar"] / med["bare"] if "bare" in med and "caviar" in med else float("nan")
    if args.workload == "busy":
        print(f"\n{args.trials} trials x {args.reports} reports x {args.seconds} s on {SLOTS} slots: {busy:.0f} busy trial-seconds, "
              f"ideal wall {busy / SLOTS:.0f} s")
    else:
        print(f"\n{args.trials} MNIST-1D MLP trials x {args.reports} epochs on {SLOTS} slots (a grid of {' x '.join(map(str, map(len, grid_axes(args.trials))))})")
    rows = []
    for m, rs in results.items():
        walls, utils = [r["wall_s"] for r in rs], [r["utilization"] for r in rs]
        rows.append([m, f"{statistics.median(walls):.1f} [{min(walls):.1f}-{max(walls):.1f}]", f"{statistics.median(utils):.3f}",
                     max(r["trial_processes"] for r in rs), sum(r["failed_trials"] for r in rs)])
    print(table(["method", "wall s (range)", "utilization", "trial processes", "failed trials"], rows))
    print(f"caviar / bare+ wall-clock: {ratio:.3f} (goal <= 1.05); caviar / bare (Tune's defaults): {ratio_defaults:.3f}\n")
    if results.get("caviar"):
        print(table(["where Caviar's time goes (median over repeats)", ""],
                    [[k, f"{statistics.median(r[k] for r in results['caviar']):.3f}"] for k in BREAKDOWN], left=1))

    checks = Checks("service_overhead")
    for m, rs in results.items():
        checks.check(all(r["failed_trials"] == 0 and r["trials"] == args.trials for r in rs),
                     f"{m}: every run finished its {args.trials} trials, none failed")
    if results.get("caviar"):  # loose: with the warm driver and its trial processes about 0.7 s, without them 1.5 s, cold 3.6 s
        start = statistics.median(r["submit_to_driver_s"] + r["driver_to_first_trial_s"] for r in results["caviar"])
        checks.check(start < 2.0, f"caviar: submit -> first trial running in {start:.2f} s (< 2 s: the warm driver took the study)")
    if args.trials > SLOTS:
        for m in (m for m in ("caviar", "bare+") if results.get(m)):
            procs = max(r["trial_processes"] for r in results[m])
            checks.check(0 < procs <= SLOTS, f"{m} reuses trial processes: {procs} distinct trial PIDs for {args.trials} trials "
                                             f"(at most max_concurrent_trials = {SLOTS})")
    write_json(out, {"args": {k: str(v) for k, v in vars(args).items()}, "results": results, "ratio": ratio,
                     "ratio_tune_defaults": ratio_defaults, "checks": checks.as_dict()})
    return checks.exit_code()


if __name__ == "__main__":
    sys.exit(main())
