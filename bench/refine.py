"""Coarse to fine against one study of the same budget, on MNIST-1D (the seed's advice, measured).

What runs, per seed, on one Ray head with `caviar serve` (SQLite), one study after another:
  (A) coarse + refine - a 32-trial study (TPE seeded, ASHA, the MLP on seven_key + batchnorm, 2 at a
                        time), then POST .../refine {top_k: 5, num_trials: 16}: the space narrowed around
                        the coarse study's 5 best, which run first (warm start);
  (B) one study       - the same definition with 48 trials.
Both spend 48 trials. Reported per arm: the best validation accuracy (of all its trials, the
coarse study's included for A), the held-out test accuracy of that best trial's checkpoint, the
trial-epochs spent (ASHA stops trials early: equal trial counts are not equal compute) and wall
seconds. Seeds alternate which arm runs first, so the machine's drift does not favour one.

    python -m bench.refine --seeds 5            # JSON: docs/bench/refine.json
    python -m bench.refine --smoke              # 1 seed, 4 + 2 against 6 trials of 3 epochs (asserts the refine ran its parent's best first)
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import Checks, cluster, json_path, parser, submit_and_wait, table, write_json
from service.client import Client


def definition(name: str, trials: int, epochs: int, seed: int) -> dict[str, Any]:
    return {"name": name, "trainable": "mlp_bn_softmax", "dataset": {"name": "mnist1d"}, "search_space": ["seven_key", "batchnorm"],
            "fixed": {"epochs": epochs}, "sampler": {"type": "tpe", "seed": seed},
            "scheduler": {"type": "asha", "grace_period": 2, "reduction_factor": 3},
            "budget": {"num_trials": trials, "max_concurrent_trials": 2}}


def measured(client: Client, study_ids: list[str]) -> dict[str, Any]:
    """Best validation accuracy over the studies' trials, its study's test accuracy, trial-epochs."""
    best_value, best_test, epochs = float("-inf"), None, 0
    for sid in study_ids:
        epochs += sum(t["epochs"] for t in client.trials(sid))
        top = client.best(sid, k=1)
        if top["items"] and top["items"][0]["value"] > best_value:
            best_value, best_test = top["items"][0]["value"], (top.get("test_metrics") or {}).get("test_accuracy")
    return {"best_val": best_value, "test_accuracy": best_test, "trial_epochs": epochs}


def arm_refine(client: Client, seed: int, coarse: int, fine: int, epochs: int, checks: Checks) -> dict[str, Any]:
    t0 = time.time()
    parent, _, _, _ = submit_and_wait(client, definition(f"coarse-{seed}", coarse, epochs, seed))
    top = [b["config"] for b in client.best(parent, k=5)["items"]]
    child = client.refine(parent, top_k=5, num_trials=fine)["id"]
    study = client.wait(child, poll_s=0.25)
    if study["status"] != "completed":
        raise SystemExit(f"refined study {child} {study['status']}: {study['error']}")
    n = min(len(top), fine)  # the refined study runs the best first, as many as its budget holds
    first = [t["config"] for t in sorted(client.trials(child), key=lambda t: t["started_at"])][:n]
    keys = set(study["definition"]["search_space"])

    def fitted(configs: list[dict[str, Any]]) -> list[str]:  # 2 run at a time: the order within a pair is the cluster's
        return sorted(json.dumps({k: v for k, v in c.items() if k in keys}, sort_keys=True) for c in configs)

    ok = checks.check(fitted(first) == fitted(top[:n]), f"seed {seed}: the refined study ran the coarse study's {n} best first")
    if not ok:
        print(f"  ran first: {fitted(first)}\n  the best:  {fitted(top[:n])}", flush=True)
    return {**measured(client, [parent, child]), "wall_s": time.time() - t0, "studies": [parent, child],
            "narrowed": study["definition"]["search_space"]}


def arm_single(client: Client, seed: int, trials: int, epochs: int) -> dict[str, Any]:
    t0 = time.time()
    sid, _, _, _ = submit_and_wait(client, definition(f"single-{seed}", trials, epochs, seed))
    return {**measured(client, [sid]), "wall_s": time.time() - t0, "studies": [sid]}


def main() -> int:
    ap = parser(__doc__, "1 seed, 4 + 2 against 6 trials of 3 epochs", "refine")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--coarse", type=int, default=32)
    ap.add_argument("--fine", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=20)
    args = ap.parse_args()
    if args.smoke:
        args.seeds, args.coarse, args.fine, args.epochs = 1, 4, 2, 3
    checks = Checks("refine")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="caviar-bench-refine-") as tmp, cluster(Path(tmp), num_cpus=2) as (_, server):
        assert server is not None
        with server.client() as client:
            for seed in range(args.seeds):
                arms = [("refine", lambda seed=seed: arm_refine(client, seed, args.coarse, args.fine, args.epochs, checks)),
                        ("single", lambda seed=seed: arm_single(client, seed, args.coarse + args.fine, args.epochs))]
                if seed % 2:
                    arms.reverse()
                got = {name: run() for name, run in arms}
                rows.append({"seed": seed, **{f"{k}_{m}": v for k, r in got.items() for m, v in r.items()}})
                r, s = got["refine"], got["single"]
                print(f"seed {seed}: refine best {r['best_val']:.4f} test {r['test_accuracy']} ({r['trial_epochs']} trial-epochs, {r['wall_s']:.0f} s)"
                      f" | single best {s['best_val']:.4f} test {s['test_accuracy']} ({s['trial_epochs']} trial-epochs, {s['wall_s']:.0f} s)", flush=True)

    def med(key: str) -> float:
        values = [row[key] for row in rows if row[key] is not None]
        return statistics.median(values) if values else float("nan")

    wins = sum(row["refine_best_val"] > row["single_best_val"] for row in rows)
    print()
    print(table(["arm", "best val_accuracy (median)", "test accuracy (median)", "trial-epochs (median)", "wall s (median)"],
                [[arm, f"{med(f'{arm}_best_val'):.4f}", f"{med(f'{arm}_test_accuracy'):.4f}", f"{med(f'{arm}_trial_epochs'):.0f}",
                  f"{med(f'{arm}_wall_s'):.0f}"] for arm in ("refine", "single")]))
    print(f"\ncoarse {args.coarse} + refine {args.fine} beat one {args.coarse + args.fine}-trial study on best val_accuracy in {wins} of {len(rows)} seeds")
    write_json(json_path(args, "refine"), {"args": vars(args) | {"json": None}, "seeds": rows, "refine_wins": wins, "checks": checks.as_dict()})
    return checks.exit_code()


if __name__ == "__main__":
    sys.exit(main())
