"""The trainables inside a real Ray Tune: per-epoch reports, checkpoints, and a retry that resumes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.ray


def flaky_mlp(config: dict[str, Any]) -> None:
    """mlp_bn_softmax whose first attempt dies after two epochs (as if its worker were killed)."""
    from trainables.config import MLPConfig
    from trainables.engine import fit
    from trainables.engine.models import build_mlp
    from trainables.report import TuneReporter

    marker = Path(config.pop("crash_marker"))

    class Crashing(TuneReporter):
        reports = 0

        def report(self, metrics: dict, state: dict | None = None) -> None:
            super().report(metrics, state)
            Crashing.reports += 1
            if not marker.exists() and Crashing.reports == 2:
                marker.touch()
                raise RuntimeError("simulated worker crash")

    fit(MLPConfig.model_validate(config), build_mlp, Crashing())


def test_failed_trial_is_retried_from_its_last_checkpoint(ray_cluster: None, tmp_path: Path) -> None:
    import ray.cloudpickle
    from ray import tune

    from tests.trainables.test_train import MEASURED, Recorder
    from trainables.config import MLPConfig
    from trainables.engine import fit
    from trainables.engine.models import build_mlp
    from trainables.report import load_state

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    config = {"epochs": 4, "lr": 0.01, "dropout": 0.1, "optimizer": "momentum", "lr_schedule": "cosine", "checkpoint_every": 1}
    tuner = tune.Tuner(
        tune.with_resources(flaky_mlp, {"cpu": 1}),
        param_space={**config, "crash_marker": str(tmp_path / "crashed")},
        run_config=tune.RunConfig(
            storage_path=str(tmp_path / "results"),
            failure_config=tune.FailureConfig(max_failures=2),
            verbose=0,
        ),
    )
    result = tuner.fit()[0]
    assert (tmp_path / "crashed").exists(), "the first attempt should have crashed"
    # Tune restored iteration 2 with the checkpoint; a retry from scratch would report 4 more
    # iterations (6 in all), a resumed one reports epochs 3 and 4 only
    assert result.metrics["epoch"] == 4
    assert result.metrics["training_iteration"] == 4
    with result.checkpoint.as_directory() as d:
        assert load_state(d)["epoch"] == 4
    # and the resumed trial ends exactly where an uninterrupted run ends
    whole = Recorder()
    fit(MLPConfig.model_validate(config), build_mlp, whole)
    for key in MEASURED:
        assert result.metrics[key] == pytest.approx(whole.metrics[-1][key], rel=1e-6), key
