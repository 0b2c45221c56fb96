"""TPE with a bounded history against TPE with the whole history: what the bound costs in search quality,
and what it saves per suggestion (issue 14, "the sampler at 5,000 trials").

Caviar's TPE (``search_spaces.FastTPESampler`` as ``make_sampler("tpe")`` builds it: multivariate,
group, constant liar) models at most ``max_history`` finished trials: the ``keep_best`` best and the
most recent others (``search_spaces.RecentAndBest``). Both arms here are that sampler, seeded alike;
one has the bound, the other reads every trial. Each runs one study of --trials trials, one at a
time, on cheap objectives (no training), for each seed:

  hartmann6  - the Hartmann 6-D function on [0, 1]^6, minimized (global minimum -3.32237): a
               standard test of black-box optimizers, multimodal
  seven_key  - the ``seven_key`` preset (learning rate, batch size, width, depth, dropout, weight
               decay, optimizer) with bench.sampler_store_cost's simulated accuracy after 10 epochs,
               maximized (smooth, with noise)

Reported per arm and objective: the best value at the end (median over seeds, and how many seeds each
arm was ahead), the mean value of the trials suggested after the bound took effect (how well the
sampler concentrates where it is good), and the median time of a suggestion over the last 100 trials.
The bound scales: the full run uses the product's own (1,000 / 100) with 3,000 trials; --limit
makes it smaller (250 at least: below that TPE's "below" group, min(n / 10, 25), would shrink too)
to see its effect at a size more seeds can afford.

    python -m bench.tpe_history                          # 1,000 / 100, 3,000 trials, 5 seeds (long)
    python -m bench.tpe_history --limit 250 --trials 800 --seeds 10 --json docs/bench/tpe_history_250.json
    python -m bench.tpe_history --smoke                  # limit 250, 280 trials, 1 seed: the invariants
"""

from __future__ import annotations

import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna

from bench._common import Checks, json_path, parser, table, write_json
from bench.sampler_store_cost import simulate
from search_spaces import FastTPESampler, define_by_run, resolve_space

optuna.logging.set_verbosity(optuna.logging.WARNING)

# Hartmann 6-D (Dixon and Szegő 1978)
_A = np.array([[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14], [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]])
_P = 1e-4 * np.array([[1312, 1696, 5569, 124, 8283, 5886], [2329, 4135, 8307, 3736, 1004, 9991],
                      [2348, 1451, 3522, 2883, 3047, 6650], [4047, 8828, 8732, 5743, 1091, 381]])
_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])
HARTMANN6_MIN = -3.32237


def hartmann6(x: np.ndarray) -> float:
    return float(-np.sum(_ALPHA * np.exp(-np.sum(_A * (x - _P) ** 2, axis=1))))


def _hartmann_trial(trial: optuna.Trial) -> float:
    return hartmann6(np.array([trial.suggest_float(f"x{i}", 0.0, 1.0) for i in range(6)]))


def _seven_key(seed: int) -> Callable[[optuna.Trial], float]:
    space = resolve_space(["seven_key"])
    fn = define_by_run(space)

    def objective(trial: optuna.Trial) -> float:
        fn(trial)
        return float(simulate(trial.params, seed * 1_000_003 + trial.number, 10)[-1]["val_accuracy"])

    return objective


OBJECTIVES: dict[str, tuple[str, Callable[[int], Callable[[optuna.Trial], float]]]] = {
    "hartmann6": ("minimize", lambda seed: _hartmann_trial),
    "seven_key": ("maximize", _seven_key),
}


def run_arm(objective: str, seed: int, trials: int, limit: int | None, keep_best: int) -> dict[str, Any]:
    direction, make = OBJECTIVES[objective]
    fn = make(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = FastTPESampler(seed=seed, multivariate=True, group=True, constant_liar=True, max_history=limit, keep_best=keep_best)
    study = optuna.create_study(direction=direction, sampler=sampler)
    values, ask_ms = [], []
    for _ in range(trials):
        t0 = time.perf_counter()
        trial = study.ask()
        value = fn(trial)  # the suggestions happen in the define-by-run calls: timed with the ask
        ask_ms.append(1000 * (time.perf_counter() - t0))
        study.tell(trial, value)
        values.append(value)
    sign = 1.0 if direction == "maximize" else -1.0
    best = max(values, key=lambda v: sign * v)
    return {"best": best, "values": values, "ask_ms_last_100": statistics.median(ask_ms[-100:]),
            "ask_ms_total_s": round(sum(ask_ms) / 1000, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, "limit 250, 280 trials, 1 seed", "tpe_history.json")
    ap.add_argument("--limit", type=int, default=1000, help="max_history of the bounded arm (the product's: 1,000)")
    ap.add_argument("--keep-best", type=int, default=0, help="keep_best of the bounded arm (default: max(25, limit / 10))")
    ap.add_argument("--trials", type=int, default=3000)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--objectives", nargs="+", choices=sorted(OBJECTIVES), default=sorted(OBJECTIVES))
    args = ap.parse_args(argv)
    if args.smoke:
        args.limit, args.trials, args.seeds = 250, 280, 1
    keep_best = args.keep_best or max(25, args.limit // 10)
    print(f"tpe_history: bounded ({args.limit} trials, best {keep_best}) against the whole history, {args.trials} trials, "
          f"seeds 0-{args.seeds - 1}, objectives {', '.join(args.objectives)}", flush=True)
    results: dict[str, Any] = {}
    all_runs: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
    rows = []
    for objective in args.objectives:
        direction = OBJECTIVES[objective][0]
        sign = 1.0 if direction == "maximize" else -1.0
        arms: dict[str, list[dict[str, Any]]] = {"bounded": [], "whole": []}
        for seed in range(args.seeds):
            for arm, limit in (("bounded", args.limit), ("whole", None)):  # the same seed side by side
                r = run_arm(objective, seed, args.trials, limit, keep_best)
                arms[arm].append(r)
                print(f"  {objective} seed {seed} {arm:<7} best {r['best']:.5f}  ask {r['ask_ms_last_100']:.1f} ms (last 100)  "
                      f"asks {r['ask_ms_total_s']:.1f} s", flush=True)
        after = slice(args.limit, None)  # the trials suggested once the bound had taken effect
        summary: dict[str, Any] = {"direction": direction, "seeds": args.seeds}
        for arm, runs in arms.items():
            summary[arm] = {
                "best_median": statistics.median(r["best"] for r in runs),
                "best_per_seed": [r["best"] for r in runs],
                "mean_value_after_limit_median": statistics.median(statistics.fmean(r["values"][after]) for r in runs),
                "ask_ms_last_100_median": statistics.median(r["ask_ms_last_100"] for r in runs),
                "ask_s_total_median": statistics.median(r["ask_ms_total_s"] for r in runs),
            }
        diffs = [sign * (b["best"] - w["best"]) for b, w in zip(arms["bounded"], arms["whole"], strict=True)]
        summary["bounded_ahead"] = sum(d > 1e-12 for d in diffs)
        summary["whole_ahead"] = sum(d < -1e-12 for d in diffs)
        summary["speedup_last_100"] = round(summary["whole"]["ask_ms_last_100_median"] / summary["bounded"]["ask_ms_last_100_median"], 2)
        results[objective] = summary
        all_runs[objective] = (arms["bounded"], arms["whole"])
        for arm in ("bounded", "whole"):
            s = summary[arm]
            rows.append([objective, arm, f"{s['best_median']:.5f}", f"{s['mean_value_after_limit_median']:.4f}",
                         f"{s['ask_ms_last_100_median']:.1f}", f"{s['ask_s_total_median']:.1f}",
                         summary[f"{arm}_ahead"]])
    print()
    print(table(["objective", "TPE history", "best (median)", f"mean value after {args.limit}", "ms/ask (last 100)", "asks s", "seeds ahead"], rows))
    checks = Checks("tpe_history")
    for objective, s in results.items():
        same = all(b["values"][:args.limit + 1] == w["values"][:args.limit + 1] for b, w in zip(*all_runs[objective], strict=True))
        checks.check(same, f"{objective}: up to its limit the bounded arm suggests what the whole history does (same seeds, same values)")
        finite = all(math.isfinite(v) for arm in ("bounded", "whole") for v in s[arm]["best_per_seed"])
        checks.check(finite, f"{objective}: every run found a finite best")
    write_json(json_path(args, "tpe_history"), {"config": {k: v for k, v in vars(args).items() if k != "json"}, "keep_best": keep_best,
                                                "results": results, "checks": checks.as_dict()})
    return checks.exit_code()


if __name__ == "__main__":
    sys.exit(main())
