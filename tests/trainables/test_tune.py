"""The trainables inside a real Ray Tune: per-epoch reports, checkpoints, and a retry that resumes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, ClassVar

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


def ahead_work(config: dict[str, Any]) -> None:
    """busy_work's shape, recording when each epoch began and, in a file, any epoch a stop interrupted."""
    import time

    from trainables.report import get_reporter

    reporter = get_reporter(ahead=True)
    score = 1.0 - abs(config["x"] - 0.3)
    for epoch in range(1, 7):
        began = time.time()
        while time.time() < began + 0.2:
            if reporter.stopping():  # what the built-in loop does between batches
                Path(config["marks"], f"{config['x']}-{epoch}").touch()
                return
        reporter.report({"epoch": epoch, "val_accuracy": score * epoch / 6, "began": began})


def run_ahead(tmp_path: Path, ahead: bool) -> tuple[list[dict[str, Any]], dict[tuple[float, int], float], set[str]]:
    import time

    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from service.runner import as_trial

    class SlowDriver(tune.Callback):
        """The driver's work per result (store, sampler, scheduler), made slower than usual: 0.1 s."""

        ended: ClassVar[dict[tuple[float, int], float]] = {}  # a new class, so a new dict, each run

        def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any) -> None:
            time.sleep(0.1)  # the work being simulated, not a wait for something
            SlowDriver.ended[(trial.config["x"], result["epoch"])] = time.time()

    marks = tmp_path / f"marks-{ahead}"
    marks.mkdir()
    tuner = tune.Tuner(
        tune.with_resources(as_trial(ahead_work, ahead=ahead), {"cpu": 1}),
        param_space={"x": tune.grid_search([0.3, 0.9, 0.35, 0.95, 0.5, 0.99]), "marks": str(marks)},
        tune_config=tune.TuneConfig(metric="val_accuracy", mode="max", max_concurrent_trials=1, reuse_actors=True,
                                    scheduler=ASHAScheduler(time_attr="epoch", max_t=6, grace_period=1, reduction_factor=2)),
        run_config=tune.RunConfig(storage_path=str(tmp_path / f"results-{ahead}"), callbacks=[SlowDriver()], verbose=0),
    )
    grid = tuner.fit()
    assert not grid.errors
    return [r.metrics_dataframe.to_dict("records") for r in grid], SlowDriver.ended, {p.name for p in marks.iterdir()}


def test_reporting_ahead_trains_while_the_driver_works_and_stops_where_the_scheduler_says(ray_cluster: None, tmp_path: Path) -> None:
    """Caviar's trial processes report ahead (trainables.report.TuneReporter): the next epoch begins
    while the driver still handles the last one's result, a trial its scheduler stops ends inside the
    epoch it was training ahead, unreported, and the trial process is reused. Plain Tune (ahead off):
    each epoch begins only after the driver is done with the last."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    for ahead in (True, False):
        trials, ended, marks = run_ahead(tmp_path, ahead)
        began_before_driver_done = []
        stopped = []
        for rows in trials:
            x, epochs = rows[0]["config/x"], [int(r["epoch"]) for r in rows]
            assert epochs == list(range(1, len(epochs) + 1))  # every epoch reported once, in order
            assert epochs[-1] in (1, 2, 4, 6)  # ASHA's rungs (grace 1, factor 2) or the end
            if epochs[-1] < 6:
                stopped.append((x, epochs[-1]))
            began_before_driver_done += [rows[k + 1]["began"] < ended[(x, k + 1)] for k in range(len(rows) - 1)]
        assert stopped, "ASHA should have stopped some trials"
        assert len({r["pid"] for rows in trials for r in rows}) == 1  # one trial process, reused throughout
        if ahead:
            assert all(began_before_driver_done)
            # each stopped trial was training its next epoch when the stop came, and ended inside it
            assert {f"{x}-{last + 1}" for x, last in stopped} <= marks
        else:
            assert not any(began_before_driver_done) and not marks
