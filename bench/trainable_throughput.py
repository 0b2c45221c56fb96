"""Trainable throughput: mlp_bn_softmax's training samples/s against a minimal hand-written loop.

All three run in one process, interleaved, on the same model and data:
  caviar       - trainables.engine.fit as a trial runs it, timed as fit reports it: its batch loop
                 (the samples_per_s a trial reports)
  caviar_epoch - the same runs timed over the whole epoch, report to report: the batch loop plus
                 the validation pass, the metrics, the report and the checkpoints a trial writes
  hand_loop    - the smallest PyTorch loop over in-memory tensors, sliced per batch (no validation),
                 with torch.optim.Adam's defaults (on CPU: a Python loop over the parameters)
  hand_fused   - the same loop with Adam(fused=True), as the trainables run it: the strongest
                 hand-written loop
  hand_fused_epoch - hand_fused timed over the whole epoch, with the validation pass any trainable
                 that is tuned runs each epoch (loss and accuracy over the validation set, in eval
                 mode, without gradients): what caviar_epoch is compared with
  dataloader   - the same loop fed by torch.utils.data.DataLoader (what in-memory batching saves)
Figures are medians over repeats of per-epoch training samples/s; ratios are to hand_loop and to
hand_fused.

--smoke asserts: every loop trained at a positive, finite rate, every metric fit reported is finite,
and the trainable's batch loop trains at least FUSED_FLOOR x hand_fused's samples/s (its fused
optimizer: about 0.96x on MNIST-1D; with PyTorch's default optimizer about 0.8x).

    python -m bench.trainable_throughput            # full: mnist1d, 5 repeats x 5 epochs
    python -m bench.trainable_throughput --smoke    # CI: digits, 3 repeats x 2 epochs
"""

from __future__ import annotations

import math
import statistics
import sys
import tempfile
import time
from typing import Any

import torch
from torch import nn

from bench._common import Checks, json_path, parser, table, write_json
from trainables.config import MLPConfig
from trainables.datasets import load_dataset
from trainables.engine import fit
from trainables.engine.models import build_mlp, init_weights
from trainables.report import StdoutReporter, save_state

FUSED_FLOOR = 0.9


class _Quiet(StdoutReporter):
    def __init__(self, directory: str) -> None:
        super().__init__(checkpoint_dir=directory)
        self.rates: list[float] = []
        self.reports: list[dict[str, Any]] = []
        self.times: list[float] = []  # when each report returned (the checkpoint written)

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None = None) -> None:
        if state is not None and self.checkpoint_dir:  # keep the checkpoint cost a trial pays
            save_state(self.checkpoint_dir, state)
        self.rates.append(metrics["samples_per_s"])
        self.reports.append(metrics)
        self.times.append(time.perf_counter())

    def num_cpus(self) -> int:
        return torch.get_num_threads()


def run_caviar(cfg: MLPConfig, n_train: int) -> tuple[list[float], list[float], list[dict[str, Any]]]:
    """(batch-loop samples/s per epoch, whole-epoch samples/s from report to report, the reports)."""
    with tempfile.TemporaryDirectory() as d:
        rep = _Quiet(d)
        fit(cfg, build_mlp, rep)
        whole = [n_train / (b - a) for a, b in zip(rep.times, rep.times[1:], strict=False)]
        return rep.rates, whole, rep.reports


def run_hand(cfg: MLPConfig, dataloader: bool, fused: bool = False, validate: bool = False) -> list[float]:
    """Training samples/s per epoch: over the batch loop, or (``validate``) over the batch loop and a
    validation pass (the whole epoch of a trainable that reports a validation metric)."""
    torch.manual_seed(cfg.seed)
    data = load_dataset(cfg.dataset)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    x_val, y_val = torch.from_numpy(data.x_val), torch.from_numpy(data.y_val)
    model = build_mlp(cfg, data.input_shape, data.n_classes)
    init_weights(model, cfg.weight_init)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=fused or None)
    loss_fn = nn.CrossEntropyLoss()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=cfg.batch_size, shuffle=True)
    rates = []
    for _ in range(cfg.epochs):
        model.train()
        t0 = time.perf_counter()
        seen = 0
        batches = loader if dataloader else ((x[i], y[i]) for i in torch.randperm(len(x)).split(cfg.batch_size))
        for xb, yb in batches:
            if len(xb) < 2:
                continue
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            seen += len(xb)
        if validate:
            model.eval()
            with torch.no_grad():
                logits = model(x_val)
                val_loss, val_accuracy = float(loss_fn(logits, y_val)), float((logits.argmax(1) == y_val).float().mean())
            assert math.isfinite(val_loss) and 0 <= val_accuracy <= 1
        rates.append(seen / (time.perf_counter() - t0))
    return rates


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, "digits, 3 repeats x 2 epochs", "trainable_throughput.json")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads (a trial's CPU allocation)")
    args = p.parse_args(argv)
    repeats, epochs = (3, 2) if args.smoke else (args.repeats, args.epochs)
    torch.set_num_threads(args.threads)
    cfg = MLPConfig.model_validate({
        "dataset": {"name": "digits" if args.smoke else "mnist1d"}, "epochs": epochs,
        "width": 256, "depth": 2, "batch_size": 64, "optimizer": "adam", "lr": 1e-3, "num_threads": args.threads,
    })
    runs: dict[str, list[float]] = {"caviar": [], "caviar_epoch": [], "hand_loop": [], "hand_fused": [], "hand_fused_epoch": [],
                                    "dataloader": []}
    reports: list[dict[str, Any]] = []
    n_train = len(load_dataset(cfg.dataset).x_train)
    for _ in range(repeats):  # interleaved, so drift on a shared machine hits all three alike
        runs["hand_loop"].append(statistics.median(run_hand(cfg, dataloader=False)))
        runs["hand_fused"].append(statistics.median(run_hand(cfg, dataloader=False, fused=True)))
        runs["hand_fused_epoch"].append(statistics.median(run_hand(cfg, dataloader=False, fused=True, validate=True)))
        rates, whole, reported = run_caviar(cfg, n_train)
        runs["caviar"].append(statistics.median(rates))
        if whole:  # report to report: two epochs at least
            runs["caviar_epoch"].append(statistics.median(whole))
        reports += reported
        runs["dataloader"].append(statistics.median(run_hand(cfg, dataloader=True)))
    base, strongest = statistics.median(runs["hand_loop"]), statistics.median(runs["hand_fused"])
    result = {
        "dataset": cfg.dataset.name, "epochs": epochs, "repeats": repeats, "threads": args.threads,
        **{name: {"median_samples_per_s": round(statistics.median(r)), "min": round(min(r)), "max": round(max(r)),
                  "ratio_to_hand_loop": round(statistics.median(r) / base, 3),
                  "ratio_to_hand_fused": round(statistics.median(r) / strongest, 3)} for name, r in runs.items()},
    }
    print(table(["loop", "samples/s (median)", "min", "max", "x hand_loop", "x hand_fused"],
                [[name, result[name]["median_samples_per_s"], result[name]["min"], result[name]["max"],
                  f"{result[name]['ratio_to_hand_loop']:.3f}", f"{result[name]['ratio_to_hand_fused']:.3f}"] for name in runs]))
    checks = Checks("trainable_throughput")
    for name, r in runs.items():
        checks.check(all(math.isfinite(x) and x > 0 for x in r), f"{name}: samples/s positive and finite ({', '.join(f'{x:.0f}' for x in r)})")
    # the fused optimizer (trainables.engine.loop.make_optimizer) keeps the batch loop near the fused hand loop
    # (0.96x on MNIST-1D); with PyTorch's default optimizer it falls to about 0.8x
    kept_up = statistics.median(runs["caviar"]) / strongest
    checks.check(kept_up >= FUSED_FLOOR, f"the trainable's batch loop trains {kept_up:.2f}x the samples/s of the hand loop with fused Adam "
                 f"(>= {FUSED_FLOOR}: its optimizer runs fused)")
    whole_epoch = statistics.median(runs["caviar_epoch"]) / statistics.median(runs["hand_fused_epoch"])
    result["whole_epoch_to_hand_fused_epoch"] = round(whole_epoch, 3)
    print(f"the whole epoch (validation, report, checkpoint) against the fused hand loop's with its validation: {whole_epoch:.3f}x")
    bad = [(m["epoch"], k, v) for m in reports for k, v in m.items() if isinstance(v, float) and not math.isfinite(v)]
    checks.check(len(reports) == repeats * epochs and not bad,
                 f"fit reported {len(reports)} epochs (expected {repeats * epochs}), every metric finite" + (f"; not finite: {bad[:5]}" if bad else ""))
    result["checks"] = checks.as_dict()
    write_json(json_path(args, "trainable_throughput"), result)
    return checks.exit_code()


if __name__ == "__main__":
    sys.exit(main())
