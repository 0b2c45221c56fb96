"""GPU paths: a trial on CUDA keeps its data and model on the device, bf16 autocast trains, and a
study with a fractional GPU per trial runs through the service and reports the device per trial.
Skipped, saying why, where no CUDA device is visible (these machines and CI have none; the GPU
machine lent to some sessions runs them: see docs/benchmarks.md, GPU packing)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from trainables.config import MLPConfig
from trainables.engine import fit
from trainables.engine.models import build_mlp

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible: the GPU tests need one (CPU paths are tested elsewhere)")


class Recorder:
    def __init__(self) -> None:
        self.metrics: list[dict[str, Any]] = []
        self.devices: set[str] = set()

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None = None) -> None:
        self.metrics.append(metrics)
        if state is not None:
            self.devices |= {str(t.device) for t in state["model"].values() if isinstance(t, torch.Tensor)}

    def restore(self) -> None:
        return None

    def num_cpus(self) -> int:
        return 1


@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_a_cuda_trial_trains_on_the_device_with_and_without_bf16(amp: str) -> None:
    rec = Recorder()
    cfg = MLPConfig.model_validate({"dataset": {"name": "digits"}, "epochs": 3, "device": "cuda", "amp": amp, "lr": 0.05})
    last = fit(cfg, build_mlp, rec)
    assert all(m["device"].startswith("cuda:0 (") for m in rec.metrics)
    assert rec.devices == {"cuda:0"}  # the checkpointed weights lived on the GPU
    assert math.isfinite(last["train_loss"]) and last["val_accuracy"] > 0.5


@pytest.mark.ray
def test_a_study_with_a_quarter_gpu_per_trial_runs_through_the_service(tmp_path: Path) -> None:
    from service.local import LocalHead, LocalServer, wait_until

    head = LocalHead(tmp_path / "ray", num_cpus=4).start()  # Ray detects the GPUs itself
    api = LocalServer(tmp_path / "data", head).start()
    try:
        client = api.client()
        sid = client.submit({
            "name": "gpu", "trainable": "mlp_bn_softmax", "dataset": {"name": "mnist1d"},
            "search_space": {"lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}},
            "fixed": {"epochs": 3, "amp": "bf16"}, "scheduler": {"type": "none"},
            "budget": {"num_trials": 4, "max_concurrent_trials": 4}, "resources_per_trial": {"cpu": 1, "gpu": 0.25},
        })["id"]
        s = wait_until(lambda: (x := client.study(sid))["status"] in ("completed", "failed") and x, 600, "the study's end", interval=1)
        assert s["status"] == "completed", s["error"]
        trials = client.trials(sid)
        assert len(trials) == 4 and all(t["device"].startswith("cuda:0 (") for t in trials), trials
    finally:
        api.stop()
        head.stop()
