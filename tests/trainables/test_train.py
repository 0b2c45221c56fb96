"""The trainables train, hit the seed-level accuracy targets, resume exactly, and run standalone."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from trainables import get_trainable, list_trainables
from trainables.config import CNNConfig, MLPConfig
from trainables.datasets import load_dataset
from trainables.engine import evaluate_checkpoint, fit
from trainables.engine.models import build_cnn, build_mlp
from trainables.report import StdoutReporter, load_state

DATASETS: list[dict[str, Any]] = [
    {"name": "digits"},
    {"name": "mnist1d"},
    {"name": "synthetic", "n_samples": 400, "n_classes": 4, "imbalance": 3.0},
    {"name": "file", "path": "blobs.npz"},
]
MEASURED = {"epoch", "train_loss", "val_loss", "val_accuracy", "val_confidence", "lr", "param_count"}


class Recorder:
    """A reporter that keeps what it is told (and can crash after n reports, like a killed worker)."""

    def __init__(self, restore: dict | None = None, crash_after: int | None = None) -> None:
        self.metrics: list[dict] = []
        self.states: list[dict] = []
        self._restore, self.crash_after = restore, crash_after

    def report(self, metrics: dict, state: dict | None = None) -> None:
        self.metrics.append(metrics)
        if state is not None:
            self.states.append(state)
        if self.crash_after is not None and len(self.metrics) >= self.crash_after:
            raise KeyboardInterrupt("simulated crash")

    def restore(self) -> dict | None:
        return self._restore

    def num_cpus(self) -> int:
        return 1


@pytest.fixture(scope="module", autouse=True)
def blobs_file(caviar_data_dir: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    x = rng.normal(size=(300, 6)) + y[:, None] * 2.0
    np.savez(caviar_data_dir / "datasets" / "blobs.npz", x=x, y=y)


def test_registry_lists_the_builtins_with_their_knobs_and_metrics() -> None:
    names = set(list_trainables())
    assert {"mlp_bn_softmax", "cnn_bn_softmax", "busy_work", "softmax_f1"} <= names  # softmax_f1: tests/plugins' entry point
    assert get_trainable("softmax_f1").metrics[0] == "val_f1"
    spec = get_trainable("mlp_bn_softmax")
    assert set(MEASURED) - {"epoch"} <= set(spec.metrics)  # what the loop reports is what the spec declares
    assert spec.load_train() is __import__("trainables.engine.builtin", fromlist=["x"]).mlp_bn_softmax
    knobs = spec.knobs()
    assert {"lr", "batch_size", "weight_init", "optimizer", "width", "depth", "bn_placement", "label_smoothing", "class_weights"} <= set(knobs)
    assert knobs["dataset"] == {"name": "digits", "validation_fraction": 0.2, "seed": 0, "test_fraction": 0.2}
    with pytest.raises(KeyError, match="unknown trainable 'resnet'"):
        get_trainable("resnet")


@pytest.mark.parametrize("dataset", DATASETS, ids=lambda d: d["name"])
@pytest.mark.parametrize(("model", "build"), [(MLPConfig, build_mlp), (CNNConfig, build_cnn)], ids=["mlp", "cnn"])
def test_each_trainable_trains_one_epoch_on_each_dataset(dataset: dict, model: Any, build: Any) -> None:
    rec = Recorder()
    cfg = model.model_validate({"dataset": dataset, "epochs": 1, "depth": 2, "channels": 8} if model is CNNConfig else {"dataset": dataset, "epochs": 1})
    fit(cfg, build, rec)
    (m,) = rec.metrics
    assert set(m) == MEASURED | {"samples_per_s", "latency_ms", "device"}
    assert m["device"] == "cpu" or (torch.cuda.is_available() and m["device"].startswith("cuda:0 ("))
    model = build(cfg, *(lambda d: (d.input_shape, d.n_classes))(load_dataset(cfg.dataset)))
    assert m["param_count"] == sum(p.numel() for p in model.parameters()) and m["latency_ms"] > 0
    assert m["epoch"] == 1 and m["samples_per_s"] > 0 and np.isfinite(m["train_loss"])
    assert 0.0 <= m["val_accuracy"] <= 1.0
    assert len(rec.states) == 1 and rec.states[0]["epoch"] == 1


def test_same_config_and_seed_give_identical_metrics() -> None:
    cfg = MLPConfig.model_validate({"epochs": 3, "dropout": 0.2, "optimizer": "momentum", "seed": 7})
    a, b = Recorder(), Recorder()
    fit(cfg, build_mlp, a)
    fit(cfg, build_mlp, b)
    assert [{k: m[k] for k in MEASURED} for m in a.metrics] == [{k: m[k] for k in MEASURED} for m in b.metrics]
    c = Recorder()
    fit(cfg.model_copy(update={"seed": 8}), build_mlp, c)
    assert c.metrics[-1]["train_loss"] != a.metrics[-1]["train_loss"]


@pytest.mark.parametrize("knobs", [
    {"optimizer": "momentum", "lr_schedule": "cosine", "dropout": 0.3},
    {"optimizer": "adamw", "lr_schedule": "step", "step_size": 2, "bn_placement": "after_activation", "use_l1": True, "l1": 1e-5},
])
def test_checkpoint_resume_equals_an_uninterrupted_run(knobs: dict) -> None:
    cfg = MLPConfig.model_validate({"epochs": 5, "batch_size": 32, "checkpoint_every": 1, **knobs})
    whole = Recorder()
    fit(cfg, build_mlp, whole)
    crashed = Recorder(crash_after=2)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, build_mlp, crashed)
    resumed = Recorder(restore=crashed.states[-1])
    fit(cfg, build_mlp, resumed)
    assert [m["epoch"] for m in resumed.metrics] == [3, 4, 5]
    for got, want in zip(resumed.metrics, whole.metrics[2:], strict=True):
        assert {k: got[k] for k in MEASURED} == {k: want[k] for k in MEASURED}


def test_checkpoint_holds_everything_needed_and_evaluates_on_test() -> None:
    cfg = MLPConfig.model_validate({"epochs": 2, "lr_schedule": "exponential"})
    rec = Recorder()
    fit(cfg, build_mlp, rec)
    state = rec.states[-1]
    assert {"epoch", "model", "optimizer", "schedule", "torch_rng", "shuffle_rng"} <= set(state)
    test = evaluate_checkpoint(cfg, build_mlp, state)
    assert 0.5 < test["test_accuracy"] <= 1.0


def test_class_weights_balanced_and_label_smoothing_train() -> None:
    rec = Recorder()
    cfg = MLPConfig.model_validate({"epochs": 2, "dataset": {"name": "synthetic", "n_samples": 600, "imbalance": 20.0}, "class_weights": "balanced", "label_smoothing": 0.1})
    fit(cfg, build_mlp, rec)
    assert np.isfinite(rec.metrics[-1]["train_loss"])


def test_a_diverging_configuration_stops_and_says_so() -> None:
    rec = Recorder()
    cfg = MLPConfig.model_validate({"epochs": 5, "lr": 10.0, "optimizer": "sgd", "bn_placement": "none", "weight_init": "normal", "depth": 1})
    # force divergence deterministically: a loss scaled to overflow
    fit(cfg.model_copy(update={"label_smoothing": 0.0}), lambda c, s, n: _Exploding(build_mlp(c, s, n)), rec)
    assert rec.metrics[-1]["diverged"] is True
    assert len(rec.metrics) == 1 and rec.states == []


class _Exploding:  # wraps a model so that its logits overflow to inf
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __call__(self, x: Any) -> Any:
        return self.inner(x) * float("inf")

    def to(self, device: Any) -> _Exploding:
        self.inner = self.inner.to(device)
        return self


@pytest.mark.slow
def test_mlp_reaches_95_percent_on_digits() -> None:
    rec = Recorder()
    fit(MLPConfig.model_validate({"epochs": 15, "lr": 0.01, "width": 128, "lr_schedule": "cosine"}), build_mlp, rec)
    assert max(m["val_accuracy"] for m in rec.metrics) >= 0.95


@pytest.mark.slow
def test_mlp_beats_the_mnist1d_paper_mlp_within_40_epochs() -> None:
    cfg = MLPConfig.model_validate({"dataset": {"name": "mnist1d"}, "epochs": 40, "lr": 0.01, "width": 512, "depth": 3, "dropout": 0.2, "lr_schedule": "cosine", "batch_size": 128})
    final = fit(cfg, build_mlp, Recorder(), test=True)
    assert final["test_accuracy"] >= 0.66


@pytest.mark.slow
def test_cnn_reaches_90_percent_on_mnist1d() -> None:
    cfg = CNNConfig.model_validate({"dataset": {"name": "mnist1d"}, "epochs": 15, "lr": 0.005, "channels": 32, "depth": 3, "kernel_size": 5, "lr_schedule": "cosine"})
    final = fit(cfg, build_cnn, Recorder(), test=True)
    assert final["test_accuracy"] >= 0.90


def test_standalone_cli_prints_json_lines_and_resumes(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    cmd = [sys.executable, "-m", "trainables", "mlp_bn_softmax", "--dataset", "digits", "--epochs", "2", "--config", '{"lr": 0.01}']
    out = subprocess.run([*cmd, "--checkpoint-dir", str(ckpt)], capture_output=True, text=True, check=True).stdout
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line.get("epoch") for line in lines] == [1, 2, 2]
    assert lines[-1]["final"] is True and 0.8 < lines[-1]["test_accuracy"] <= 1.0
    assert load_state(ckpt)["epoch"] == 2
    resumed = subprocess.run([sys.executable, "-m", "trainables", "mlp_bn_softmax", "--dataset", "digits", "--epochs", "3", "--config", '{"lr": 0.01}', "--resume-from", str(ckpt)], capture_output=True, text=True, check=True).stdout
    assert [json.loads(line)["epoch"] for line in resumed.splitlines()] == [3, 3]


@pytest.mark.parametrize(("args", "message"), [
    (["mlp_bn_softmax", "--config", '{"lrr": 0.1}'], "error: config.lrr: Extra inputs are not permitted"),
    (["mlp_bn_softmax", "--config", '{"lr": -1}'], "error: config.lr: Input should be greater than 0"),
    (["resnet"], "error: unknown trainable 'resnet'"),
    (["mlp_bn_softmax", "--dataset", "imagenet"], "error: config.dataset: Input tag 'imagenet'"),
])
def test_standalone_cli_bad_input_is_one_line(args: list[str], message: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "trainables", *args], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith(message) and proc.stderr.count("\n") == 1


def test_stdout_reporter_writes_null_for_nan() -> None:
    buf = io.StringIO()
    StdoutReporter(stream=buf).report({"train_loss": float("nan"), "epoch": 1})
    assert json.loads(buf.getvalue()) == {"train_loss": None, "epoch": 1}


def test_busy_work_spins_its_time_and_scores_by_x_and_y(capsys: pytest.CaptureFixture[str]) -> None:
    import json
    import time

    from trainables import get_trainable

    spec = get_trainable("busy_work")
    t0 = time.process_time()
    spec.load_train()({"epochs": 4, "seconds_per_epoch": 0.05, "x": 0.3, "y": 0.7})
    assert time.process_time() - t0 >= 0.05  # it spins (CPU time; a sleep would use ~1 ms), even on a loaded machine
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["val_accuracy"] == pytest.approx(1 - 0.5**4)
    spec.load_train()({"epochs": 1, "seconds_per_epoch": 0, "x": 1.0, "y": 0.0})
    worse = json.loads(capsys.readouterr().out)
    assert worse["val_accuracy"] < rows[0]["val_accuracy"]


def test_checkpoints_by_time_by_default_and_always_at_the_end() -> None:
    """Short epochs are not checkpointed one by one (it costs more than a retry would lose)."""
    from trainables.config import MLPConfig
    from trainables.engine import fit
    from trainables.engine.models import build_mlp

    cfg = MLPConfig.model_validate({"epochs": 4, "dataset": {"name": "digits"}})
    rec = Recorder()
    fit(cfg, build_mlp, rec)
    assert len(rec.states) == 1 and rec.states[0]["epoch"] == 4  # only the end: each epoch takes far less than 10 s
    every = Recorder()
    fit(cfg.model_copy(update={"checkpoint_interval_s": 1e-9}), build_mlp, every)
    assert [s["epoch"] for s in every.states] == [1, 2, 3, 4]


class Steered(Recorder):
    """A person steering the run: after epoch ``at`` they ask for ``changes`` (panda mode)."""

    def __init__(self, at: int, changes: dict, **kw: Any) -> None:
        super().__init__(**kw)
        self.at, self.changes = at, changes

    def adjustments(self) -> list[dict]:
        return [{"id": 7, "changes": self.changes}] if len(self.metrics) == self.at - 1 else []  # asked before epoch at is reported


def test_an_adjusted_lr_applies_from_the_next_epoch_and_equals_that_schedule_from_the_start() -> None:
    base = {"epochs": 5, "batch_size": 32, "optimizer": "momentum", "lr": 0.05, "seed": 3}
    steered = Steered(3, {"lr": 0.005})
    fit(MLPConfig.model_validate(base), build_mlp, steered)
    assert [m["lr"] for m in steered.metrics] == pytest.approx([0.05, 0.05, 0.05, 0.005, 0.005])
    assert steered.metrics[2]["adjusted"] == {"ids": [7], "after_epoch": 3}  # in the report of the epoch after which it applies
    assert steered.states[0]["epoch"] == 3 and steered.states[0]["adjusted"] == {"lr": 0.005}  # checkpointed at once
    planned = Recorder()  # the same change, planned: step decay by 0.1 after epoch 3
    fit(MLPConfig.model_validate({**base, "lr_schedule": "step", "step_size": 3, "step_gamma": 0.1}), build_mlp, planned)
    for got, want in zip(steered.metrics, planned.metrics, strict=True):
        assert {k: got[k] for k in MEASURED} == pytest.approx({k: want[k] for k in MEASURED}, rel=1e-5)


def test_adjusted_dropout_and_weight_decay_survive_a_resume() -> None:
    cfg = MLPConfig.model_validate({"epochs": 5, "batch_size": 32, "dropout": 0.1, "optimizer": "adam", "seed": 4})
    whole = Steered(2, {"dropout": 0.4, "weight_decay": 1e-3})
    fit(cfg, build_mlp, whole)
    crashed = Steered(2, {"dropout": 0.4, "weight_decay": 1e-3}, crash_after=2)  # killed right after the checkpoint the change wrote
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, build_mlp, crashed)
    resumed = Recorder(restore=crashed.states[-1])  # the checkpoint taken when the change applied
    fit(cfg, build_mlp, resumed)
    assert crashed.states[-1]["epoch"] == 2 and crashed.states[-1]["optimizer"]["param_groups"][0]["weight_decay"] == 1e-3
    for got, want in zip(resumed.metrics, whole.metrics[2:], strict=True):
        assert {k: got[k] for k in MEASURED} == {k: want[k] for k in MEASURED}
    unsteered = Recorder()
    fit(cfg, build_mlp, unsteered)
    assert unsteered.metrics[-1]["train_loss"] != whole.metrics[-1]["train_loss"]  # the change did something


def test_a_fork_starts_from_another_trials_checkpoint_with_its_own_values() -> None:
    base = {"epochs": 4, "batch_size": 32, "optimizer": "momentum", "lr": 0.05, "seed": 5, "checkpoint_every": 1}
    parent = Recorder()
    fit(MLPConfig.model_validate(base), build_mlp, parent)
    forked_state = {**parent.states[1], "forked": True}  # its checkpoint at epoch 2 (a copy: the run went on)
    assert forked_state["epoch"] == 2
    child = Recorder(restore=forked_state)
    fit(MLPConfig.model_validate({**base, "lr": 0.001}), build_mlp, child)
    assert [m["epoch"] for m in child.metrics] == [3, 4] and [m["lr"] for m in child.metrics] == pytest.approx([0.001, 0.001])


@pytest.mark.parametrize(("optimizer", "kernel"), [("sgd", "fused"), ("momentum", "fused"), ("nesterov", "fused"), ("adam", "fused"),
                                                   ("adamw", "fused"), ("rmsprop", "foreach")])
def test_the_optimizer_updates_every_parameter_in_one_kernel(optimizer: str, kernel: str) -> None:
    """Fused (or, for RMSprop, multi-tensor): PyTorch's default on CPU loops over the parameters in
    Python, 1.3x slower with Adam on MNIST-1D's MLP (docs/benchmarks.md §3). A checkpoint taken with
    it resumes to the uninterrupted run (test_checkpoint_resume_equals_an_uninterrupted_run)."""
    from trainables.engine.loop import make_optimizer

    cfg = MLPConfig.model_validate({"optimizer": optimizer, "weight_decay": 1e-4})
    model = build_mlp(cfg, (40,), 10)
    opt = make_optimizer(cfg, model.parameters())
    assert opt.defaults[kernel] is True
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(8, 40)).sum().backward()
    opt.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))  # every parameter moved
