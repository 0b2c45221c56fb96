"""Trainable throughput: mlp_bn_softmax's training samples/s against a minimal hand-written loop.

All three run in one process, interleaved, on the same model and data:
  caviar      - trainables.engine.fit (reporting, checkpointing, metrics as in a trial)
  hand_loop   - the smallest PyTorch loop over in-memory tensors, sliced per batch
  dataloader  - the same loop fed by torch.utils.data.DataLoader (what in-memory batching saves)
Figures are medians over repeats of per-epoch samples/s; ratios are to hand_loop.

    python -m bench.trainable_throughput            # full: mnist1d, 5 repeats x 5 epochs
    python -m bench.trainable_throughput --smoke    # CI: proves it still works
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from typing import Any

import torch
from torch import nn

from trainables.config import MLPConfig
from trainables.datasets import load_dataset
from trainables.engine import fit
from trainables.models import build_mlp, init_weights
from trainables.report import StdoutReporter, save_state


class _Quiet(StdoutReporter):
    def __init__(self, directory: str) -> None:
        super().__init__(checkpoint_dir=directory)
        self.rates: list[float] = []

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None = None) -> None:
        if state is not None and self.checkpoint_dir:  # keep the checkpoint cost a trial pays
            save_state(self.checkpoint_dir, state)
        self.rates.append(metrics["samples_per_s"])

    def num_cpus(self) -> int:
        return torch.get_num_threads()


def run_caviar(cfg: MLPConfig) -> list[float]:
    with tempfile.TemporaryDirectory() as d:
        rep = _Quiet(d)
        fit(cfg, build_mlp, rep)
        return rep.rates


def run_hand(cfg: MLPConfig, dataloader: bool) -> list[float]:
    torch.manual_seed(cfg.seed)
    data = load_dataset(cfg.dataset)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    model = build_mlp(cfg, data.input_shape, data.n_classes)
    init_weights(model, cfg.weight_init)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
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
        rates.append(seen / (time.perf_counter() - t0))
    return rates


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads (a trial's CPU allocation)")
    args = p.parse_args()
    repeats, epochs = (1, 1) if args.smoke else (args.repeats, args.epochs)
    torch.set_num_threads(args.threads)
    cfg = MLPConfig.model_validate({
        "dataset": {"name": "digits" if args.smoke else "mnist1d"}, "epochs": epochs,
        "width": 256, "depth": 2, "batch_size": 64, "optimizer": "adam", "lr": 1e-3, "num_threads": args.threads,
    })
    runs: dict[str, list[float]] = {"caviar": [], "hand_loop": [], "dataloader": []}
    for _ in range(repeats):  # interleaved, so drift on a shared machine hits all three alike
        runs["hand_loop"].append(statistics.median(run_hand(cfg, dataloader=False)))
        runs["caviar"].append(statistics.median(run_caviar(cfg)))
        runs["dataloader"].append(statistics.median(run_hand(cfg, dataloader=True)))
    base = statistics.median(runs["hand_loop"])
    result = {
        "dataset": cfg.dataset.name, "epochs": epochs, "repeats": repeats, "threads": args.threads,
        **{name: {"median_samples_per_s": round(statistics.median(r)), "min": round(min(r)), "max": round(max(r)),
                  "ratio_to_hand_loop": round(statistics.median(r) / base, 3)} for name, r in runs.items()},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
