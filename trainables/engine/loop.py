"""The training loop every built-in trainable shares.

Data lives as tensors on the trial's device and is sliced per batch with a seeded permutation
(no DataLoader, no per-step host copies). Each epoch reports train/validation metrics through the
reporter and checkpoints model, optimizer, scheduler, epoch and RNG states, so a run resumed from
epoch k ends exactly where an uninterrupted run ends (CPU, same seed).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from trainables.config import TrainConfig
from trainables.datasets import Dataset, load_dataset
from trainables.engine.models import init_weights, l1_penalty
from trainables.report import ADJUSTED, Reporter, get_reporter

C = TypeVar("C", bound=TrainConfig)
ModelBuilder = Callable[[Any, tuple[int, ...], int], nn.Module]

_EVAL_BATCH = 4096


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def describe(device: torch.device) -> str:
    """What a trial reports as the device it trained on: ``cpu``, or ``cuda:0 (NVIDIA H200, physical 3)``
    (Ray gives each trial its GPUs through CUDA_VISIBLE_DEVICES; index 0 is the first of them)."""
    if device.type != "cuda":
        return device.type
    index = torch.cuda.current_device()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
    physical = f", physical {visible[index]}" if index < len(visible) and visible[index] else ""
    return f"cuda:{index} ({torch.cuda.get_device_name(index)}{physical})"


def make_optimizer(cfg: TrainConfig, params: Any) -> torch.optim.Optimizer:
    """The optimizer over ``params`` (already on the trial's device). SGD, Adam and AdamW run fused:
    one kernel updates every parameter, where PyTorch's default on CPU loops over them in Python.
    On MNIST-1D's MLP on one CPU thread that trains 1.3x the samples a second with Adam and AdamW,
    1.13x with SGD and momentum (docs/benchmarks.md §3); RMSprop, which has no fused kernel, uses
    the multi-tensor one (1.07x). Same updates up to floating-point rounding."""
    wd = cfg.weight_decay  # L2: coupled for SGD-family/RMSprop/Adam, decoupled for AdamW
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params) or None
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=wd, fused=fused)
    if cfg.optimizer in ("momentum", "nesterov"):
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.optimizer == "nesterov", weight_decay=wd, fused=fused)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, alpha=cfg.rms_alpha, weight_decay=wd, foreach=True)
    betas = (cfg.beta1, cfg.beta2)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=betas, weight_decay=wd, fused=fused)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=betas, weight_decay=wd, fused=fused)


def make_schedule(cfg: TrainConfig, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch decay; ``inverse_time`` is the seed's lr0 / (1 + decay_rate * epoch)."""
    s = torch.optim.lr_scheduler
    if cfg.lr_schedule == "step":
        return s.StepLR(opt, step_size=cfg.step_size, gamma=cfg.step_gamma)
    if cfg.lr_schedule == "exponential":
        return s.ExponentialLR(opt, gamma=cfg.decay_rate)
    if cfg.lr_schedule == "inverse_time":
        return s.LambdaLR(opt, lambda e: 1.0 / (1.0 + cfg.decay_rate * e))
    if cfg.lr_schedule == "cosine":
        return s.CosineAnnealingLR(opt, T_max=cfg.epochs)
    return s.LambdaLR(opt, lambda e: 1.0)


class _Tensors:
    def __init__(self, data: Dataset, device: torch.device) -> None:
        def t(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a).to(device)

        self.x_train, self.y_train = t(data.x_train), t(data.y_train)
        self.x_val, self.y_val = t(data.x_val), t(data.y_val)
        self.x_test, self.y_test = t(data.x_test), t(data.y_test)


def class_weight_tensor(cfg: TrainConfig, y: torch.Tensor, n_classes: int) -> torch.Tensor | None:
    """``balanced``: n_samples / (n_classes * count_c), as scikit-learn defines it."""
    if cfg.class_weights != "balanced":
        return None
    counts = torch.bincount(y, minlength=n_classes).float().clamp_min(1.0)
    return len(y) / (n_classes * counts)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: nn.Module) -> dict[str, float]:
    """Loss, accuracy and mean softmax confidence, in eval mode (BN uses its running statistics)."""
    was_training = model.training
    model.eval()
    total_loss, correct, confidence = 0.0, 0, 0.0
    for i in range(0, len(x), _EVAL_BATCH):
        logits = model(x[i : i + _EVAL_BATCH]).float()
        yb = y[i : i + _EVAL_BATCH]
        total_loss += float(loss_fn(logits, yb)) * len(yb)
        prob = torch.softmax(logits, dim=1)
        conf, pred = prob.max(dim=1)
        correct += int((pred == yb).sum())
        confidence += float(conf.sum())
    model.train(was_training)
    n = max(1, len(x))
    return {"loss": total_loss / n, "accuracy": correct / n, "confidence": confidence / n}


def fit(cfg: C, build: ModelBuilder, reporter: Reporter | None = None, *, test: bool = False) -> dict[str, Any]:
    """Train ``cfg`` for ``cfg.epochs`` epochs, reporting each; returns the last metrics.

    With ``test=True`` (standalone runs) the returned dict also holds the held-out test metrics.
    """
    reporter = reporter or get_reporter(ahead=True)  # it checks stopping() between batches
    stopping = getattr(reporter, "stopping", lambda: False)  # older reporters have none
    torch.set_num_threads(cfg.num_threads or reporter.num_cpus())
    device = _device(cfg)
    where = describe(device)
    torch.manual_seed(cfg.seed)
    data = load_dataset(cfg.dataset)
    tensors = _Tensors(data, device)
    model = build(cfg, data.input_shape, data.n_classes).to(device)
    init_weights(model, cfg.weight_init)
    optimizer = make_optimizer(cfg, model.parameters())
    schedule = make_schedule(cfg, optimizer)
    weights = class_weight_tensor(cfg, tensors.y_train, data.n_classes)
    loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)
    eval_loss = nn.CrossEntropyLoss()  # validation and test: the plain softmax cross-entropy
    shuffle = torch.Generator(device="cpu").manual_seed(cfg.seed)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if cfg.amp == "bf16" and device.type == "cuda" else contextlib.nullcontext()
    )

    start = 1
    adjusted: dict[str, Any] = {}  # what a person changed mid-run (panda mode), checkpointed with the rest
    state = reporter.restore()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])  # holds an adjusted lr and weight decay
        for group in optimizer.param_groups:  # a checkpoint from before the fused optimizers still resumes fused
            for kernel in ("fused", "foreach"):
                if kernel in optimizer.defaults:
                    group[kernel] = optimizer.defaults[kernel]
        schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["torch_rng"])
        shuffle.set_state(state["shuffle_rng"])
        start = int(state["epoch"]) + 1
        adjusted = dict(state.get("adjusted") or {})
        set_dropout(model, adjusted.get("dropout"))
        if state.get("forked"):  # another trial's checkpoint: this config's values hold from here on
            forked = {k: getattr(cfg, k) for k in ("lr", "weight_decay", "dropout") if hasattr(cfg, k)}
            apply_adjustment(model, optimizer, schedule, forked)
            adjusted.update(forked)

    n = len(tensors.x_train)
    bs = min(cfg.batch_size, n)
    size = model_size(model, tensors.x_val)  # what a multi-objective study may trade accuracy against
    metrics: dict[str, Any] = {}
    last_checkpoint = time.perf_counter()
    for epoch in range(start, cfg.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        model.train()
        perm = torch.randperm(n, generator=shuffle).to(device)
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        seen = 0
        x_train, y_train, l1 = tensors.x_train, tensors.y_train, cfg.l1 if cfg.use_l1 else 0.0
        for idx in torch.split(perm, bs):
            if stopping():  # a scheduler stopped the trial while it trained ahead: this epoch goes unreported
                return metrics
            if len(idx) < 2:  # BN cannot normalize a batch of one
                continue
            with autocast:
                logits = model(x_train[idx])
                loss = loss_fn(logits.float(), y_train[idx])
                if l1 > 0:
                    loss = loss + l1 * l1_penalty(model)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum.add_(loss.detach(), alpha=len(idx))  # stays on device: no sync per step
            seen += len(idx)
        train_loss = float(loss_sum) / max(1, seen)
        elapsed = time.perf_counter() - t0
        schedule.step()
        val = evaluate(model, tensors.x_val, tensors.y_val, eval_loss)
        metrics = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "val_confidence": val["confidence"],
            "lr": lr,
            "samples_per_s": seen / elapsed if elapsed > 0 else float("inf"),
            **size,
            "device": where,
        }
        diverged = not math.isfinite(train_loss)
        last = epoch == cfg.epochs or diverged
        if diverged:
            metrics["diverged"] = True
        due = bool(cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0) or (
            cfg.checkpoint_interval_s > 0 and time.perf_counter() - last_checkpoint >= cfg.checkpoint_interval_s
        )
        if not last:  # a person's changes take effect from the next epoch on, and are in this epoch's checkpoint
            applied = []
            for item in (reporter.adjustments() if hasattr(reporter, "adjustments") else []):  # older reporters have none
                apply_adjustment(model, optimizer, schedule, item["changes"])
                adjusted.update(item["changes"])
                applied.append(item["id"])
            if applied:
                metrics[ADJUSTED] = {"ids": applied, "after_epoch": epoch}
                due = True
        keep = not diverged and (last or due)
        reporter.report(metrics, _state(model, optimizer, schedule, shuffle, epoch, adjusted) if keep else None)
        if keep:
            last_checkpoint = time.perf_counter()
        if diverged:  # a diverged configuration ends here; the service records it as failed
            break
    if test:
        metrics = dict(metrics, **held_out_metrics(model, tensors, eval_loss))
    return metrics


LATENCY_BATCH, LATENCY_REPEATS = 256, 5


@torch.no_grad()
def model_size(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """``param_count`` (trainable parameters) and ``latency_ms``: the median of LATENCY_REPEATS timed
    forward passes over a batch of LATENCY_BATCH validation examples, in eval mode on the trial's
    device, after one untimed pass (the batch is repeated when the validation set is smaller)."""
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if len(x) == 0:
        return {"param_count": float(params), "latency_ms": float("nan")}
    batch = x[:LATENCY_BATCH]
    if len(batch) < LATENCY_BATCH:
        batch = batch.repeat((LATENCY_BATCH + len(batch) - 1) // len(batch), *([1] * (batch.dim() - 1)))[:LATENCY_BATCH]
    was_training = model.training
    model.eval()
    times = []
    for i in range(LATENCY_REPEATS + 1):
        if batch.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model(batch)
        if batch.is_cuda:
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    model.train(was_training)
    return {"param_count": float(params), "latency_ms": 1000.0 * sorted(times)[len(times) // 2]}


def held_out_metrics(model: nn.Module, tensors: _Tensors, loss_fn: nn.Module) -> dict[str, float]:
    t = evaluate(model, tensors.x_test, tensors.y_test, loss_fn)
    return {"test_loss": t["loss"], "test_accuracy": t["accuracy"]}


def set_dropout(model: nn.Module, p: float | None) -> None:
    if p is None:
        return
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = float(p)


def apply_adjustment(model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Any, changes: dict[str, Any]) -> None:
    """Apply a person's changes between epochs: ``lr`` (the schedule goes on from it: its base
    rates are scaled alike), ``weight_decay``, ``dropout``."""
    if "lr" in changes:
        lr = float(changes["lr"])
        for i, group in enumerate(optimizer.param_groups):
            ratio = lr / group["lr"] if group["lr"] else 1.0
            group["lr"] = lr
            if hasattr(schedule, "base_lrs"):
                schedule.base_lrs[i] *= ratio
            if hasattr(schedule, "_last_lr"):
                schedule._last_lr[i] = lr
    if "weight_decay" in changes:
        for group in optimizer.param_groups:
            group["weight_decay"] = float(changes["weight_decay"])
    set_dropout(model, changes.get("dropout"))


def _state(model: nn.Module, opt: torch.optim.Optimizer, sched: Any, shuffle: torch.Generator, epoch: int,
           adjusted: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "adjusted": dict(adjusted or {}),
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "schedule": sched.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "shuffle_rng": shuffle.get_state(),
    }


def evaluate_checkpoint(cfg: TrainConfig, build: ModelBuilder, state: dict[str, Any]) -> dict[str, float]:
    """Held-out test metrics of a checkpointed model (the study driver calls this for the best trial)."""
    device = _device(cfg)
    data = load_dataset(cfg.dataset)
    model = build(cfg, data.input_shape, data.n_classes).to(device)
    model.load_state_dict(state["model"])
    return held_out_metrics(model, _Tensors(data, device), nn.CrossEntropyLoss())
