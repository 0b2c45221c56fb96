"""Search efficiency: Caviar against random search, a plain Ray Tune script and Optuna alone.

Workload: ``mlp_bn_softmax`` (or ``--trainable cnn_bn_softmax``) on MNIST-1D, the ``seven_key`` +
``batchnorm`` space (``cnn`` + ``batchnorm`` for the CNN), at most ``--epochs`` epochs a trial, the
same number of configurations for every method, ``--seeds`` seeds each:

  random  (a) random search, no early stopping: Optuna's RandomSampler in one process
  tune    (b) the peer: a plain Ray Tune script as a user writes it: Tuner + OptunaSearch(TPESampler)
              + ASHAScheduler(max_t=epochs, Tune's defaults otherwise), run directly on the same Ray head
  tune+   (b+) the same script as a skilled user tunes it: ASHA with Caviar's settings (time_attr
              epoch, grace 2, reduction factor 3), reuse_actors=True, only the JSON logger: the
              strongest plain baseline (equal settings to Caviar but for the sampler's options)
  caviar  (c) Caviar's defaults (TPE + ASHA), submitted through the REST API of `caviar serve`
  optuna  (d) Optuna alone in one process: TPESampler + SuccessiveHalvingPruner, n_jobs = cores

Per method: the anytime curve (best validation accuracy so far against cumulative trial-epochs, in
the order the epochs were reported), the trial-epochs needed to reach the target (the median over
seeds of random search's final best), wall time, and the held-out test accuracy of the best
configuration. Writes a JSON file (``--json PATH``, default docs/bench/search_efficiency_<trainable><tag>.json)
and the anytime plot (PNG) beside it.

--smoke runs every method but (b) (the same code as (b+), with Tune's defaults) and asserts, of each
Caviar run (its defaults, and mf_tpe with ASHA's window of 2 and TPE's groups off): ASHA stopped at
least one trial early, and no trial failed.

    python -m bench.search_efficiency                                # MLP: 32 configs x 5 seeds
    python -m bench.search_efficiency --trainable cnn_bn_softmax --seeds 3 --configs 16
    python -m bench.search_efficiency --smoke                        # CI: tiny, proves it still works
    python -m bench.search_efficiency --seeds 10 --first-seed 10     # ten more seeds for an earlier run
    python -m bench.search_efficiency --pool A.json B.json --json AB.json  # their seeds summarized together
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench._common import (
    DOCS_BENCH,
    Checks,
    cluster,
    parser,
    submit_and_wait,
    table,
    tune_json_logger_only,
    warm_driver_up,
)
from service.client import Client
from service.local import LocalHead, wait_until

METHODS = ("random", "tune", "tune+", "caviar", "optuna")
LABELS = {
    "random": "(a) random, no early stopping",
    "tune": "(b) plain Ray Tune: Tuner + OptunaSearch(TPE) + ASHA, Tune's defaults",
    "tune+": "(b+) plain Ray Tune tuned: ASHA grace 2 / rf 3, reuse_actors, JSON logger only",
    "caviar": "(c) Caviar REST (TPE + ASHA defaults)",
    "optuna": "(d) Optuna alone: TPE + SuccessiveHalving, n_jobs=cores",
}


def label(method: str) -> str:
    if method.startswith("caviar@"):
        return f"(c') Caviar REST, {method.split('@')[1]}"
    return LABELS[method]


Event = tuple[float, str, int, float]  # (time, trial id, epoch, val_accuracy)


def spaces_for(trainable: str) -> list[str]:
    return ["cnn", "batchnorm"] if trainable.startswith("cnn") else ["seven_key", "batchnorm"]


def constants(trainable: str, epochs: int) -> dict[str, Any]:
    return {"epochs": epochs, "dataset": {"name": "mnist1d"}}


# -- (a) and (d): Optuna in this process -------------------------------------------------------------


class _Recorder:
    """A trainables Reporter that records each epoch and (for (d)) lets Optuna prune."""

    def __init__(self, trial: Any, events: list[Event], lock: threading.Lock, prune: bool) -> None:
        self.trial, self.events, self.lock, self.prune = trial, events, lock, prune

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None = None) -> None:
        import optuna

        value = float(metrics["val_accuracy"])
        with self.lock:
            self.events.append((time.time(), str(self.trial.number), int(metrics["epoch"]), value))
        self.trial.report(value, int(metrics["epoch"]))
        if self.prune and self.trial.should_prune():
            raise optuna.TrialPruned()

    def restore(self) -> dict[str, Any] | None:
        return None

    def num_cpus(self) -> int:
        return 1


def run_optuna(trainable: str, configs: int, epochs: int, seed: int, *, tpe: bool, jobs: int) -> dict[str, Any]:
    import optuna

    from search_spaces import resolve_space, suggest
    from trainables import get_trainable
    from trainables.engine import fit

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = get_trainable(trainable)
    build = spec.load_model_builder()
    space = resolve_space(spaces_for(trainable))
    fixed = constants(trainable, epochs)
    events: list[Event] = []
    lock = threading.Lock()
    finals: dict[int, dict[str, Any]] = {}

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, space)
        cfg = spec.config_model.model_validate({**fixed, **params, "num_threads": 1})
        metrics = fit(cfg, build, _Recorder(trial, events, lock, prune=tpe), test=True)  # type: ignore[arg-type]
        finals[trial.number] = metrics
        return float(metrics["val_accuracy"])

    if tpe:
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
                                    pruner=optuna.pruners.SuccessiveHalvingPruner())
    else:
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed),
                                    pruner=optuna.pruners.NopPruner())
    t0 = time.time()
    study.optimize(objective, n_trials=configs, n_jobs=jobs, catch=(Exception,))
    wall = time.time() - t0
    best = _best_trial(events)
    test = finals.get(int(best), {}).get("test_accuracy") if best is not None else None
    return {"events": events, "wall_s": wall, "t0": t0, "test_accuracy": test}


def _best_trial(events: list[Event]) -> str | None:
    best: dict[str, float] = {}
    for _, trial, _, value in events:
        if math.isfinite(value):
            best[trial] = max(best.get(trial, -1.0), value)
    return max(best, key=lambda t: best[t]) if best else None


# -- (b): a plain Ray Tune script ---------------------------------------------------------------


def run_tune(head: LocalHead, trainable: str, configs: int, epochs: int, seed: int, storage: Path, *, tuned: bool = False) -> dict[str, Any]:
    """(b), or with ``tuned`` (b+): Caviar's ASHA settings, reused trial processes, the JSON logger only."""
    import optuna
    import ray
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from search_spaces import define_by_run, resolve_space
    from trainables import get_trainable
    from trainables.engine import evaluate_checkpoint
    from trainables.report import load_state

    if not ray.is_initialized():
        ray.init(address=head.gcs_address, logging_level="ERROR", log_to_driver=False)
    spec = get_trainable(trainable)
    fixed = constants(trainable, epochs)
    events: list[Event] = []

    class Record(tune.Callback):  # type: ignore[misc]  # instrumentation only: when each epoch was heard of
        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            events.append((time.time(), trial.trial_id, int(result["epoch"]), float(result["val_accuracy"])))

    search = OptunaSearch(space=define_by_run(resolve_space(spaces_for(trainable)), fixed), metric="val_accuracy", mode="max",
                          sampler=optuna.samplers.TPESampler(seed=seed))
    asha = ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=2, reduction_factor=3) if tuned else ASHAScheduler(max_t=epochs)
    tuner = tune.Tuner(
        tune.with_resources(spec.load_train(), {"cpu": 1}),
        tune_config=tune.TuneConfig(metric="val_accuracy", mode="max", search_alg=search, scheduler=asha, num_samples=configs,
                                    max_concurrent_trials=2, reuse_actors=tuned),
        run_config=tune.RunConfig(storage_path=str(storage), callbacks=[Record(), *([JsonLoggerCallback()] if tuned else [])], verbose=0),
    )
    with tune_json_logger_only(tuned):
        t0 = time.time()
        grid = tuner.fit()
        wall = time.time() - t0
    best = _best_trial(events)
    test = None
    for r in (grid[i] for i in range(len(grid))):
        if r.metrics and r.metrics.get("trial_id") == best and r.checkpoint is not None:
            with r.checkpoint.as_directory() as d:
                state = load_state(d)
            cfg = spec.config_model.model_validate({k: v for k, v in r.config.items() if k in spec.config_model.model_fields})
            test = evaluate_checkpoint(cfg, spec.load_model_builder(), state)["test_accuracy"]  # type: ignore[arg-type]
    return {"events": events, "wall_s": wall, "t0": t0, "test_accuracy": test}


# -- (c): Caviar over REST ----------------------------------------------------------------------


TPE_OFF = {"nogroup": "group", "indep": "multivariate", "noliar": "constant_liar"}  # caviar@<part>: that TPE option off


def caviar_variant(method: str) -> dict[str, Any]:
    """``caviar`` is Caviar's defaults. After ``@``, parts joined by ``+``: a sampler's name
    (``caviar@mf_tpe``), ASHA's grace period and reduction factor (``caviar@g1r4``), ASHA's window
    (``caviar@w18``), one of TPE's options off (``nogroup``, ``indep``, ``noliar``): e.g.
    ``caviar@mf_tpe+w18``; ``caviar@nogroup`` samples with Optuna 5's TPESampler defaults, as (b+) does."""
    if "@" not in method:
        return {}
    from search_spaces import SAMPLERS

    variant: dict[str, Any] = {}
    for part in method.split("@", 1)[1].split("+"):
        if part in SAMPLERS:
            variant.setdefault("sampler", {}).update(type=part)
        elif part in TPE_OFF:  # one of TPE's options off; nogroup: Optuna 5's TPESampler defaults
            variant.setdefault("sampler", {}).update({TPE_OFF[part]: False})
        elif m := re.fullmatch(r"g(\d+)r(\d+(?:\.\d+)?)", part):
            variant.setdefault("scheduler", {}).update(grace_period=int(m[1]), reduction_factor=float(m[2]))
        elif m := re.fullmatch(r"w(\d+)", part):
            variant.setdefault("scheduler", {}).update(window=int(m[1]))
        else:
            raise SystemExit(f"--methods: '{part}' in '{method}' is none of a sampler ({', '.join(SAMPLERS)}), "
                             f"g<grace>r<reduction factor> (e.g. g1r4), w<window> (e.g. w18), {', '.join(TPE_OFF)}")
    return variant


def run_caviar(client: Client, trainable: str, configs: int, epochs: int, seed: int,
               variant: dict[str, Any] | None = None) -> dict[str, Any]:
    definition: dict[str, Any] = {
        "name": f"bench-{trainable}-{seed}", "trainable": trainable, "dataset": {"name": "mnist1d"},
        "search_space": spaces_for(trainable), "fixed": {"epochs": epochs},
        "sampler": {"type": "tpe", "seed": seed},
        "budget": {"num_trials": configs, "max_concurrent_trials": 2},
    }
    for key, value in (variant or {}).items():
        definition[key] = {**definition.get(key, {}), **value}
    sid, study, t0, wall = submit_and_wait(client, definition)
    events: list[Event] = []
    trials = client.trials(sid)
    # a configuration whose loss diverged (a learning rate far too high) fails by design; any other failure is a bug
    errors = [t["error"] for t in trials if t["state"] == "failed" and not str(t["error"] or "").startswith("diverged")]
    for t in trials:
        history = client.trial(sid, t["trial_id"])["history"]
        events += [(h["reported_at"], t["trial_id"], int(h["epoch"]), float(h["val_accuracy"] if h["val_accuracy"] is not None else "nan"))
                   for h in history]
    best = client.best(sid, k=1)
    return {"events": events, "wall_s": wall, "t0": t0, "test_accuracy": (best.get("test_metrics") or {}).get("test_accuracy"),
            "study_id": sid, "trial_counts": study["trial_counts"], "errors": errors}


# -- analysis ---------------------------------------------------------------------------------------


def anytime(events: list[Event]) -> list[tuple[int, float]]:
    """(cumulative trial-epochs, best val_accuracy so far), in the order epochs were reported."""
    out, best = [], 0.0
    for i, (_, _, _, value) in enumerate(sorted(events), start=1):
        if math.isfinite(value):
            best = max(best, value)
        out.append((i, best))
    return out


def anytime_wall(events: list[Event], t0: float) -> list[tuple[float, float]]:
    """(seconds since the method started, best val_accuracy so far): the anytime curve against wall-clock."""
    out, best = [], 0.0
    for at, _, _, value in sorted(events):
        if math.isfinite(value):
            best = max(best, value)
        out.append((round(at - t0, 3), best))
    return out


def epochs_to(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((n for n, best in curve if best >= target), None)


def best_at(curve: list[tuple[int, float]] | list[tuple[float, float]], n: float) -> float:
    """Best-so-far at ``n`` on an anytime curve (by trial-epochs, or by seconds for curve_wall)."""
    value = 0.0
    for k, best in curve:
        if k > n:
            break
        value = best
    return value


def summarize(runs: dict[str, list[dict[str, Any]]], fixed_target: float | None = None) -> dict[str, Any]:
    target = fixed_target if fixed_target is not None else (
        statistics.median(r["final_best"] for r in runs["random"]) if runs.get("random") else None)
    # per seed, the budget every method spent at least: best-so-far there is search efficiency at
    # equal trial-epochs; the same with the shortest wall-clock of the seed for equal time
    seeds = sorted({r["seed"] for rs in runs.values() for r in rs})
    common_epochs = {s: min(r["curve"][-1][0] for rs in runs.values() for r in rs if r["seed"] == s and r["curve"]) for s in seeds}
    common_wall = {s: min(r["wall_s"] for rs in runs.values() for r in rs if r["seed"] == s) for s in seeds}
    table: dict[str, Any] = {"target": target, "target_from": "--target" if fixed_target is not None else "median final best of (a)",
                             "common_trial_epochs": common_epochs, "common_wall_s": common_wall, "methods": {}}
    for method, rs in runs.items():
        reach = [epochs_to(r["curve"], target) if target is not None else None for r in rs]
        got = [x for x in reach if x is not None]
        tests = [r["test_accuracy"] for r in rs if r["test_accuracy"] is not None]
        at_epochs = [best_at(r["curve"], common_epochs[r["seed"]]) for r in rs]
        auc = [statistics.mean(best_at(r["curve"], n) for n in range(1, common_epochs[r["seed"]] + 1)) for r in rs]
        at_wall = [best_at(r["curve_wall"], common_wall[r["seed"]]) for r in rs if r.get("curve_wall")]
        table["methods"][method] = {
            "seeds": len(rs),
            # over all seeds, a seed that never reached the target counting as infinitely many
            # trial-epochs: finite only when at least half the seeds reached it
            "epochs_to_target_median_all": _censored_median(reach),
            "trial_epochs_total": _stats([r["curve"][-1][0] if r["curve"] else 0 for r in rs]),
            "final_best": _stats([r["final_best"] for r in rs]),
            "best_at_common_trial_epochs": _stats(at_epochs),
            "auc_to_common_trial_epochs": _stats(auc),
            "best_at_common_wall": _stats(at_wall) if at_wall else None,
            "epochs_to_target": _stats(got) if got else None,
            "reached_target": f"{len(got)}/{len(rs)}",
            "epochs_to_target_all": reach,
            "wall_s": _stats([r["wall_s"] for r in rs]),
            "test_accuracy": _stats(tests) if tests else None,
        }
    if target is not None:
        table["paired"] = {f"{a} vs {b}": paired(runs[a], runs[b], target) for a, b in pairs(list(runs)) if runs[a] and runs[b]}
    table["paired_best"] = {f"{a} vs {b}": paired_best(runs[a], runs[b], common_epochs, common_wall)
                            for a, b in pairs(list(runs)) if runs[a] and runs[b]}
    return table


def _bootstrap_median(diffs: list[float], resamples: int = 10_000) -> list[float]:
    import random

    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choice(diffs) for _ in diffs) for _ in range(resamples))
    return [medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]]


def paired_best(a: list[dict[str, Any]], b: list[dict[str, Any]], common_epochs: dict[int, int],
                common_wall: dict[int, float]) -> dict[str, Any]:
    """Best-so-far of ``a`` minus ``b``'s, seed by seed, at the seed's common trial-epochs and at its
    common wall-clock (positive: ``a`` is ahead), each with its median and a bootstrap 95% interval."""
    by_seed = {r["seed"]: r for r in b}
    out: dict[str, Any] = {}
    for name, curve, at in (("at_equal_trial_epochs", "curve", common_epochs), ("at_equal_wall", "curve_wall", common_wall)):
        diffs = [best_at(r[curve], at[r["seed"]]) - best_at(by_seed[r["seed"]][curve], at[r["seed"]])
                 for r in a if r["seed"] in by_seed and r.get(curve) and by_seed[r["seed"]].get(curve)]
        if diffs:
            out[name] = {"differences": [round(d, 4) for d in diffs], "median": statistics.median(diffs),
                         "mean": statistics.mean(diffs), "ci95_median": _bootstrap_median(diffs),
                         "a_ahead": sum(d > 0 for d in diffs), "ties": sum(d == 0 for d in diffs), "b_ahead": sum(d < 0 for d in diffs)}
    return out


def pairs(methods: list[str]) -> list[tuple[str, str]]:
    """What each Caviar method is compared with, seed by seed: the plain scripts and random search,
    and (for a variant) Caviar's defaults."""
    out = []
    for a in (m for m in methods if m.startswith("caviar")):
        out += [(a, b) for b in ("tune+", "tune", "random") if b in methods]
        if a != "caviar" and "caviar" in methods:
            out.append((a, "caviar"))
    return out


def paired(a: list[dict[str, Any]], b: list[dict[str, Any]], target: float, resamples: int = 10_000) -> dict[str, Any]:
    """Trial-epochs to the target, ``a`` against ``b`` seed by seed: the difference b - a (positive:
    ``a`` needs fewer; a seed that never reaches it counts as infinitely many), its median over
    seeds with a bootstrap 95% interval, and how often ``a`` needs fewer."""
    by_seed = {r["seed"]: r for r in b}
    diffs = []
    for r in a:
        if r["seed"] not in by_seed:
            continue
        ea, eb = epochs_to(r["curve"], target), epochs_to(by_seed[r["seed"]]["curve"], target)
        diffs.append(0.0 if ea is None and eb is None else math.inf if ea is not None and eb is None
                     else -math.inf if ea is None else float(eb - ea))  # type: ignore[operator]
    if not diffs:
        return {}
    return {"seeds": len(diffs), "differences": diffs, "median": statistics.median(diffs),
            "ci95": _bootstrap_median(diffs, resamples),
            "a_fewer": sum(d > 0 for d in diffs), "ties": sum(d == 0 for d in diffs), "b_fewer": sum(d < 0 for d in diffs)}


def _censored_median(xs: list[int | None]) -> float | None:
    if not xs:
        return None
    value = statistics.median([math.inf if x is None else float(x) for x in xs])
    return value if math.isfinite(value) else None


def _stats(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def plot(runs: dict[str, list[dict[str, Any]]], target: float | None, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for method, rs in runs.items():
        longest = max(r["curve"][-1][0] for r in rs if r["curve"])
        grid = list(range(1, longest + 1))
        med = [statistics.median(best_at(r["curve"], n) for r in rs) for n in grid]
        lo = [min(best_at(r["curve"], n) for r in rs) for n in grid]
        hi = [max(best_at(r["curve"], n) for r in rs) for n in grid]
        (line,) = ax.plot(grid, med, label=label(method))
        ax.fill_between(grid, lo, hi, alpha=0.15, color=line.get_color())
    if target is not None:
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:.3f}")
    ax.set_xscale("log")
    ax.set_xlabel("cumulative trial-epochs")
    ax.set_ylabel("best validation accuracy so far")
    ax.set_title(title)
    ax.set_ylim(bottom=max(0.0, min(0.9 * (target or 0.5), 0.5)))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, "6 configs, 3 epochs, 1 seed, the JSON and plot in a temporary directory",
                "search_efficiency_<trainable><tag>.json, the folder set by --out, the PNG beside it")
    ap.add_argument("--trainable", default="mlp_bn_softmax", choices=["mlp_bn_softmax", "cnn_bn_softmax"])
    ap.add_argument("--configs", type=int, default=32, help="configurations per method and seed")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds --first-seed .. --first-seed + --seeds - 1 (more seeds for an earlier run)")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help="comma-separated; caviar@g1r4 is Caviar with ASHA grace period 1, reduction factor 4; caviar@mf_tpe "
                         "with the multi-fidelity TPE sampler; caviar@w18 with ASHA's cutoff over the last 18 at a rung; "
                         "parts join with +, e.g. caviar@mf_tpe+w18")
    ap.add_argument("--out", type=Path, default=DOCS_BENCH, help="where the JSON and the PNG go (unless --json says)")
    ap.add_argument("--tag", default="", help="suffix of the output files' names, e.g. _32configs")
    ap.add_argument("--target", type=float, default=None,
                    help="the validation accuracy to reach (default: the median over seeds of (a)'s final best; "
                         "needs --methods to include random)")
    ap.add_argument("--summarize", type=Path, default=None, metavar="JSON",
                    help="no runs: recompute the summary and the plot of a results file this benchmark wrote")
    ap.add_argument("--pool", type=Path, nargs="+", default=None, metavar="JSON",
                    help="no runs: the summary and plot of the methods every one of these results files ran, their seeds "
                         "together (each seed paired within its own file), written to --json without the runs (they stay in "
                         "the files pooled)")
    args = ap.parse_args(argv)
    if args.summarize:
        return resummarize(args.summarize)
    if args.pool:
        if args.json is None:
            ap.error("--pool needs --json: where the pooled summary goes")
        return pool(args.pool, args.json)
    if args.smoke:
        # 3 epochs: one ASHA rung (grace 2) a trial can be stopped at; 6 configs: at least one below the cut
        args.configs, args.epochs, args.seeds = 6, 3, 1
        args.out = Path(tempfile.mkdtemp(prefix="caviar-bench-"))
    path = args.json or args.out / f"search_efficiency_{args.trainable}{args.tag}.json"
    methods = args.methods.split(",")
    if args.smoke and args.methods == ",".join(METHODS):
        methods.append("caviar@mf_tpe+w2+nogroup")  # the multi-fidelity and TPE options through a real study too
        # (b), Tune's defaults, is (b+)'s code with a new process per trial: a third of the smoke's time, and no other path
        methods.remove("tune")
    for m in methods:  # before anything starts
        if m.startswith("caviar@"):
            caviar_variant(m)
        elif m not in METHODS:
            raise SystemExit(f"--methods: unknown method '{m}' (expected {', '.join(METHODS)}, caviar@g<n>r<n> or caviar@<sampler>)")
    work = Path(tempfile.mkdtemp(prefix="caviar-search-"))
    os.environ["CAVIAR_DATA_DIR"] = str(work / "data")
    (work / "data" / "datasets").mkdir(parents=True)
    from trainables.datasets import Mnist1dSpec, load_dataset

    load_dataset(Mnist1dSpec(name="mnist1d"))  # generate MNIST-1D once, before anything is timed
    cores = os.cpu_count() or 1
    uses_caviar = any(m.startswith("caviar") for m in methods)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    with contextlib.ExitStack() as stack:
        head, server = stack.enter_context(cluster(work, serve=uses_caviar)) if uses_caviar or {"tune", "tune+"} & set(methods) else (None, None)
        client = stack.enter_context(server.client()) if server else None
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            # interleaved: every seed runs every method back to back, each method first in turn
            for method in methods[seed % len(methods):] + methods[:seed % len(methods)]:
                if head is not None and server is not None:
                    # Caviar's warm driver starts while no study runs, as in a service between studies:
                    # it is up before any method is timed, so its start-up takes CPU from none of them
                    wait_until(lambda: warm_driver_up(head), 120, "Caviar's warm driver", interval=0.2)
                if method == "random":
                    r = run_optuna(args.trainable, args.configs, args.epochs, seed, tpe=False, jobs=cores)
                elif method == "optuna":
                    r = run_optuna(args.trainable, args.configs, args.epochs, seed, tpe=True, jobs=cores)
                elif method in ("tune", "tune+"):
                    assert head is not None
                    r = run_tune(head, args.trainable, args.configs, args.epochs, seed, work / method, tuned=method == "tune+")
                else:
                    assert client is not None
                    r = run_caviar(client, args.trainable, args.configs, args.epochs, seed, caviar_variant(method))
                r["curve"] = anytime(r["events"])
                r["curve_wall"] = anytime_wall(r["events"], r["t0"])
                r["final_best"] = r["curve"][-1][1] if r["curve"] else 0.0
                r["seed"] = seed
                runs[method].append(r)
                print(f"seed {seed} {method:>11}: best {r['final_best']:.4f}, {len(r['events'])} trial-epochs, "
                      f"{r['wall_s']:.1f} s, test {r['test_accuracy']}" + (f", trials {r['trial_counts']}" if "trial_counts" in r else ""),
                      flush=True)
            save(args, cores, runs, path)  # after every seed: a long run that is cut short keeps what it measured
    checks = Checks("search_efficiency")
    for m in methods:
        checks.check(all(r["curve"] for r in runs[m]), f"{m}: every seed reported epochs")
        for r in runs[m] if m.startswith("caviar") else []:
            counts = r["trial_counts"]
            checks.check(counts.get("stopped_early", 0) >= 1, f"{m} seed {r['seed']}: ASHA stopped a trial early (trial counts {counts})")
            checks.check(not r.get("errors", []), f"{m} seed {r['seed']}: no trial failed but by diverging ({r.get('errors')})")
    summary = save(args, cores, runs, path, checks.as_dict())
    target = summary["target"]
    print(f"\ntarget: {target} ({summary['target_from']})")
    print(table(["method", "final best", "trial-epochs to target", "reached", "total trial-epochs", "wall s", "test acc"],
                [[m, _fmt(t["final_best"], 4), _fmt(t["epochs_to_target"], 0) if t["epochs_to_target"] else "-", t["reached_target"],
                  _fmt(t["trial_epochs_total"], 0), _fmt(t["wall_s"], 1),
                  f"{t['test_accuracy']['median']:.4f}" if t["test_accuracy"] else "-"] for m, t in summary["methods"].items()]))
    print()
    print(table(["method", "best at equal trial-epochs", "area under the anytime curve", "best at equal wall-clock"],
                [[m, _fmt(t["best_at_common_trial_epochs"], 4), _fmt(t["auc_to_common_trial_epochs"], 4),
                  _fmt(t["best_at_common_wall"], 4) if t["best_at_common_wall"] else "-"] for m, t in summary["methods"].items()]))
    for name, p in summary.get("paired", {}).items():
        if p:
            print(f"{name}: trial-epochs to target, b - a per seed: median {p['median']}, bootstrap 95% interval {p['ci95']}; "
                  f"a fewer on {p['a_fewer']}, ties {p['ties']}, b fewer on {p['b_fewer']} of {p['seeds']} seeds")
    for name, p in summary.get("paired_best", {}).items():
        for at, q in p.items():
            print(f"{name}: best {at}, a - b per seed: median {q['median']:+.4f} (95% {q['ci95_median'][0]:+.4f} to "
                  f"{q['ci95_median'][1]:+.4f}), mean {q['mean']:+.4f}; a ahead on {q['a_ahead']}, ties {q['ties']}, b ahead on {q['b_ahead']}")
    print(f"written: {path}, {path.with_suffix('.png')}")
    return checks.exit_code()


def save(args: argparse.Namespace, cores: int, runs: dict[str, list[dict[str, Any]]], path: Path,
         checks: dict[str, Any] | None = None, pooled_from: list[str] | None = None) -> dict[str, Any]:
    """The JSON (summary and per-run curves) at ``path`` and the anytime plot beside it, for the seeds
    run so far; ``pooled_from``: the results files the runs came from, named instead of copied."""
    runs = {m: rs for m, rs in runs.items() if rs}
    target = getattr(args, "target", None)
    summary = summarize(runs, float(target) if target not in (None, "None") else None)
    path.parent.mkdir(parents=True, exist_ok=True)
    saved_runs = {"pooled_from": pooled_from} if pooled_from is not None else {
        "runs": {m: [{k: v for k, v in r.items() if k != "events"} for r in rs] for m, rs in runs.items()}}
    path.write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "cores": cores, "summary": summary, **saved_runs,
         **({"checks": checks} if checks is not None else {})}, indent=1))
    seeds = max((len(rs) for rs in runs.values()), default=0)
    plot(runs, summary["target"], path.with_suffix(".png"),
         f"{args.trainable} on MNIST-1D: {args.configs} configs, <= {args.epochs} epochs, {seeds} seeds (median, min-max)")
    return summary


def _saved(path: Path) -> tuple[dict[str, Any], argparse.Namespace, dict[str, list[dict[str, Any]]]]:
    """A results file this benchmark wrote: its data, its arguments and its runs (curves as tuples)."""
    data = json.loads(path.read_text())
    saved = data["args"]
    args = argparse.Namespace(**{**saved, "configs": int(saved["configs"]), "epochs": int(saved["epochs"])})
    runs = {m: [{**r, "curve": [tuple(p) for p in r["curve"]], "curve_wall": [tuple(p) for p in r.get("curve_wall", [])]} for r in rs]
            for m, rs in data["runs"].items()}
    return data, args, runs


def resummarize(path: Path) -> int:
    data, args, runs = _saved(path)
    summary = save(args, int(data["cores"]), runs, path, data.get("checks"))
    print(json.dumps(summary["methods"], indent=1))
    print(f"written: {path}, {path.with_suffix('.png')}")
    return 0


def pool(paths: list[Path], out: Path) -> int:
    """The methods every file ran, their seeds together (no seed may repeat: each is paired within its own run)."""
    loaded = [_saved(p) for p in paths]
    methods = [m for m in loaded[0][2] if all(m in runs for _, _, runs in loaded)]
    runs = {m: [r for _, _, rs in loaded for r in rs[m]] for m in methods}
    seeds = [r["seed"] for r in runs[methods[0]]] if methods else []
    if not methods or len(set(seeds)) != len(seeds):
        raise SystemExit(f"--pool: the files must share a method and have no seed in common (methods {methods}, seeds {seeds})")
    first, args = loaded[0][0], loaded[0][1]
    args = argparse.Namespace(**{**vars(args), "seeds": len(seeds), "methods": ",".join(methods), "tag": "", "json": out})
    summary = save(args, int(first["cores"]), runs, out, pooled_from=[p.name for p in paths])
    print(json.dumps(summary["paired"], indent=1))
    print(f"written: {out}, {out.with_suffix('.png')}")
    return 0


def _fmt(s: dict[str, float], digits: int) -> str:
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


if __name__ == "__main__":
    sys.exit(main())
