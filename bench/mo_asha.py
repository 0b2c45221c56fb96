"""Multi-objective ASHA against multi-objective random search without early stopping, at the same
budget, by hypervolume (validation error against model size, on MNIST-1D).

What runs, per seed, on one Ray head with `caviar serve` (SQLite), one study after another:
  (A) MO-ASHA - random sampler (seeded), two objectives: val_accuracy (max) and param_count (min),
                multi-objective ASHA (grace 2, reduction factor 3), N trials of E epochs, 2 at a time;
  (B) random  - the same definition without a scheduler, with as many trials as A's trial-epochs
                pay for at E epochs each (floor(A's trial-epochs / E)): the same compute.
Both use the same seed, so B trains the first configurations A saw, to the end; A sees more of them
and stops the dominated ones at its rungs. A runs first (B's size is what A spent).

Hypervolume: of each arm's completed trials (stopped ones have lower-fidelity values and are not on
a front, as the API's /pareto), in (1 - val_accuracy, log10 param_count), both minimized, against the
reference point (1, 6) (no better than chance, a million parameters), divided by the area between
(0, 2) and it: 1.0 would be perfect accuracy with 100 parameters.

    python -m bench.mo_asha --seeds 10         # JSON: docs/bench/mo_asha.json
    python -m bench.mo_asha --smoke            # 1 seed, 8 trials of 4 epochs (asserts A stopped some and B had A's budget)
"""

from __future__ import annotations

import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import Checks, cluster, json_path, parser, submit_and_wait, table, write_json
from service.client import Client
from service.pareto import hypervolume

REFERENCE = (1.0, 6.0)
IDEAL = (0.0, 2.0)


def definition(name: str, trials: int, epochs: int, seed: int, asha: bool) -> dict[str, Any]:
    return {"name": name, "trainable": "mlp_bn_softmax", "dataset": {"name": "mnist1d"},
            # the seed's seven keys, with narrower layers allowed: the size objective has room to trade
            "search_space": ["seven_key", {"width": {"type": "int", "low": 8, "high": 512, "log": True}}],
            "fixed": {"epochs": epochs},
            "objectives": [{"metric": "val_accuracy", "mode": "max"}, {"metric": "param_count", "mode": "min"}],
            "sampler": {"type": "random", "seed": seed},
            "scheduler": {"type": "asha", "grace_period": 2, "reduction_factor": 3} if asha else {"type": "none"},
            "budget": {"num_trials": trials, "max_concurrent_trials": 2}}


def measured(client: Client, sid: str) -> dict[str, Any]:
    trials = client.trials(sid)
    done = [t["last_metrics"] for t in trials if t["state"] == "completed"]
    pts = [(1 - m["val_accuracy"], math.log10(m["param_count"])) for m in done]
    area = (REFERENCE[0] - IDEAL[0]) * (REFERENCE[1] - IDEAL[1])
    return {"hypervolume": hypervolume(pts, REFERENCE) / area, "trial_epochs": sum(t["epochs"] for t in trials),
            "trials": len(trials), "completed": len(done), "stopped": sum(t["state"] == "stopped_early" for t in trials),
            "front": len(client.pareto(sid)["front"]), "best_val": max((m["val_accuracy"] for m in done), default=None), "study": sid}


def arm(client: Client, name: str, trials: int, epochs: int, seed: int, asha: bool) -> dict[str, Any]:
    t0 = time.time()
    sid, _, _, _ = submit_and_wait(client, definition(f"{name}-{seed}", trials, epochs, seed, asha))
    return {**measured(client, sid), "wall_s": time.time() - t0}


def main() -> int:
    ap = parser(__doc__, "1 seed, 8 trials of 4 epochs", "mo_asha")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1 (a long run in parts)")
    ap.add_argument("--trials", type=int, default=40, help="MO-ASHA's trials")
    ap.add_argument("--epochs", type=int, default=12)
    args = ap.parse_args()
    if args.smoke:
        args.seeds, args.trials, args.epochs = 1, 8, 4
    checks = Checks("mo_asha")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="caviar-bench-mo-") as tmp, cluster(Path(tmp), num_cpus=2) as (_, server):
        assert server is not None
        with server.client() as client:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                a = arm(client, "mo-asha", args.trials, args.epochs, seed, True)  # first: B's size is A's spend
                b = arm(client, "random", max(1, a["trial_epochs"] // args.epochs), args.epochs, seed, False)
                rows.append({"seed": seed, **{f"asha_{k}": v for k, v in a.items()}, **{f"random_{k}": v for k, v in b.items()}})
                print(f"seed {seed}: MO-ASHA hv {a['hypervolume']:.4f} ({a['trials']} trials, {a['stopped']} stopped, "
                      f"{a['trial_epochs']} trial-epochs, front {a['front']}, {a['wall_s']:.0f} s) | random hv {b['hypervolume']:.4f} "
                      f"({b['trials']} trials, {b['trial_epochs']} trial-epochs, front {b['front']}, {b['wall_s']:.0f} s)", flush=True)
                checks.check(a["stopped"] > 0, f"seed {seed}: MO-ASHA stopped trials at its rungs ({a['stopped']})")
                checks.check(b["trial_epochs"] <= a["trial_epochs"], f"seed {seed}: random search spent no more than MO-ASHA "
                             f"({b['trial_epochs']} <= {a['trial_epochs']} trial-epochs)")

    def med(key: str) -> float:
        return statistics.median(row[key] for row in rows)

    wins = sum(row["asha_hypervolume"] > row["random_hypervolume"] for row in rows)
    print()
    print(table(["arm", "hypervolume (median)", "trials (median)", "trial-epochs (median)", "front size (median)", "wall s (median)"],
                [[name, f"{med(f'{k}_hypervolume'):.4f}", f"{med(f'{k}_trials'):.0f}", f"{med(f'{k}_trial_epochs'):.0f}",
                  f"{med(f'{k}_front'):.0f}", f"{med(f'{k}_wall_s'):.0f}"] for name, k in (("MO-ASHA", "asha"), ("random, no stopping", "random"))]))
    diffs = [row["asha_hypervolume"] - row["random_hypervolume"] for row in rows]
    print(f"\nMO-ASHA's hypervolume above random search's in {wins} of {len(rows)} seeds; difference median {statistics.median(diffs):+.4f}, "
          f"mean {statistics.mean(diffs):+.4f}")
    write_json(json_path(args, "mo_asha"), {"args": vars(args) | {"json": None}, "reference": REFERENCE, "ideal": IDEAL, "seeds": rows,
                                            "asha_wins": wins, "checks": checks.as_dict()})
    return checks.exit_code()


if __name__ == "__main__":
    sys.exit(main())
