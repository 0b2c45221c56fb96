"""What multi-fidelity TPE (``mf_tpe``) costs per suggestion as a study grows, against Caviar's ``tpe``
(issue 14: "the sampler at 5,000 trials", <= 100 ms per suggestion).

``mf_tpe`` reads the study through ``search_spaces._optuna.HighestRung``: on every suggestion it
finds the highest rung enough trials reached and copies each trial judged there. This measures that
on studies shaped as the runner leaves them: ``seven_key`` configurations, each trial's value
reported at ASHA's rungs (grace 2, reduction factor 3, 30 epochs: epochs 2, 6, 18 and the last) up to
the rung it stopped at (about half stop at 2, 2.5% reach the end; ASHA with factor 3: two thirds
and 3.7%), values from bench.sampler_store_cost's simulated accuracy. For each size, both samplers
(as ``make_sampler`` builds them) get the same finished trials, then suggest --suggestions times in
turn; the median time of a suggestion (ask and sampling) is reported. No training, in memory.

    python -m bench.mf_tpe_cost                        # 1,000 and 5,000 trials
    python -m bench.mf_tpe_cost --sizes 200 --suggestions 5 --smoke
"""

from __future__ import annotations

import random
import statistics
import sys
import time
import warnings
from typing import Any

import optuna

from bench._common import Checks, json_path, parser, table, write_json
from bench.sampler_store_cost import simulate
from search_spaces import make_sampler, resolve_space, suggest

optuna.logging.set_verbosity(optuna.logging.WARNING)
RUNGS = (2, 6, 18, 30)
GOAL_MS = 100.0


def finished_trials(n: int, seed: int) -> list[optuna.trial.FrozenTrial]:
    """``n`` finished trials as the runner leaves them in Optuna: rung values, stopped ones PRUNED."""
    space = resolve_space(["seven_key"])
    rng = random.Random(seed)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed))
    for number in range(n):
        trial = study.ask()
        params = suggest(trial, space)
        curve = simulate(params, seed * 1_000_003 + number, RUNGS[-1])
        depth = 1 + sum(1 for _ in range(len(RUNGS) - 1) if rng.random() < 1 / 3) if number % 3 else 1  # ASHA-shaped
        depth = min(depth, len(RUNGS))
        for step in RUNGS[:depth]:
            trial.report(curve[step - 1]["val_accuracy"], step)
        value = curve[RUNGS[depth - 1] - 1]["val_accuracy"]
        study.tell(trial, value if depth == len(RUNGS) else None,
                   state=optuna.trial.TrialState.COMPLETE if depth == len(RUNGS) else optuna.trial.TrialState.PRUNED)
    return study.get_trials(deepcopy=False)


def time_suggestions(kind: str, trials: list[optuna.trial.FrozenTrial], suggestions: int, seed: int) -> list[float]:
    space = resolve_space(["seven_key"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(direction="maximize", sampler=make_sampler(kind, space, seed, max_grid_points=10))
    study.add_trials(trials)
    out = []
    for _ in range(suggestions):
        t0 = time.perf_counter()
        trial = study.ask()
        suggest(trial, space)
        out.append(1000 * (time.perf_counter() - t0))
        study.tell(trial, None, state=optuna.trial.TrialState.PRUNED)  # as if ASHA stopped it before a rung
    return out


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, "200 trials, 5 suggestions", "mf_tpe_cost.json")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000])
    ap.add_argument("--suggestions", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.smoke:
        args.sizes, args.suggestions = [200], 5
    results: dict[str, Any] = {"rungs": RUNGS, "suggestions": args.suggestions, "sizes": {}}
    rows = []
    for n in args.sizes:
        trials = finished_trials(n, args.seed)
        per = {kind: time_suggestions(kind, trials, args.suggestions, args.seed) for kind in ("tpe", "mf_tpe")}
        results["sizes"][str(n)] = {k: {"median_ms": statistics.median(v), "max_ms": max(v), "ms": v} for k, v in per.items()}
        r = results["sizes"][str(n)]
        rows.append([n, f"{r['tpe']['median_ms']:.1f}", f"{r['mf_tpe']['median_ms']:.1f}",
                     f"{r['mf_tpe']['median_ms'] / r['tpe']['median_ms']:.2f}x"])
        print(f"{n} trials: tpe {r['tpe']['median_ms']:.1f} ms, mf_tpe {r['mf_tpe']['median_ms']:.1f} ms per suggestion", flush=True)
    print(table(["trials", "tpe ms", "mf_tpe ms", "mf_tpe / tpe"], rows))
    checks = Checks("mf_tpe_cost")
    largest = results["sizes"][str(max(args.sizes))]
    checks.check(largest["mf_tpe"]["median_ms"] <= GOAL_MS or args.smoke,
                 f"mf_tpe at {max(args.sizes)} trials: {largest['mf_tpe']['median_ms']:.1f} ms per suggestion (goal <= {GOAL_MS:g})")
    write_json(json_path(args, "mf_tpe_cost"), results)
    return checks.exit_code()


if __name__ == "__main__":
    sys.exit(main())
