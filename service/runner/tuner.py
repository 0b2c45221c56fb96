"""A study's Tuner: the trainable, the pruning-aware searcher, the scheduler, resources, callbacks."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import ray
from ray import tune
from ray.tune.logger import JsonLoggerCallback

from search_spaces import define_by_run, make_sampler
from service.definition import StudyDefinition
from service.runner import as_trial
from service.runner.callbacks import StoreCallback, store_for
from service.runner.optuna_storage import optuna_storage
from service.runner.panda import PandaCallback, start_channel
from service.runner.schedulers import make_scheduler, rungs
from service.runner.searcher import PruningOptunaSearch
from service.runner.warm_start import warm_start_plan
from service.settings import Settings
from service.storage import open_storage
from trainables import TrainableSpec, get_trainable
from trainables.report import CHECKPOINT_FILE

log = logging.getLogger("caviar.runner")


def run_study(study_id: str, d: StudyDefinition, settings: Settings, *, resumed: bool = False,
              extended_at: datetime | None = None) -> dict[str, Any]:
    """Run the study's trials on the Ray cluster this job belongs to; returns the best trial's
    held-out test metrics (empty when there are none).

    ``resumed``: an earlier driver of this study died. With Tune's saved experiment state on disk
    the run is restored from it: finished trials are kept, unfinished ones continue from their last
    checkpoint, the searcher continues where it was (Tune does not save its scheduler: ASHA's rungs
    start empty again).

    ``extended_at``: the study was extended then (POST .../extend). This run adds the trials its
    budget grew by to those of earlier runs, in the same Optuna study (the sampler keeps its history)
    and the same experiment directory; a resume keeps the earlier runs' trials.
    """
    if not ray.is_initialized():
        ray.init(address="auto", log_to_driver=True)
    spec = get_trainable(d.trainable)
    epochs = d.epochs()
    metric, mode = d.objective.metric, d.objective.mode  # the first objective: Tune's, the store's best value and curves
    objectives = [(o.metric, o.mode) for o in d.objective_list()]
    # several objectives: the Optuna study has one direction each and is told every one at the end
    search_metric: str | list[str] = [m for m, _ in objectives] if d.objectives else metric
    search_mode: str | list[str] = [m for _, m in objectives] if d.objectives else mode
    constants = d.constants()
    r = d.resources_per_trial
    trainable = tune.with_resources(as_trial(spec.load_train(), ahead=settings.report_ahead), {"cpu": r.cpu, "gpu": r.gpu})
    storage = open_storage(settings)
    panda: list[Any] = []
    if d.mode == "panda":  # a person steers: every epoch checkpointed (a fork may start from any), none stopped
        if "checkpoint_every" in spec.config_model.model_fields:
            constants = {**constants, "checkpoint_every": 1}
        owner = store_for(settings.database_url).studies.get(study_id)
        panda = [PandaCallback(study_id, settings.database_url, owner.owner if owner else "local", d.fork)]
        # before a restore too: the restored PandaCallback forwards through it. A fork's trial starts from
        # the earlier trial's checkpoint, read here from the study storage.
        start_channel(study_id, storage.read_checkpoint_file(d.fork.study, d.fork.checkpoint, CHECKPOINT_FILE) if d.fork is not None else None)
    experiment = storage.experiment(study_id)
    restore_fs = storage.filesystem_arg()
    if resumed and tune.Tuner.can_restore(experiment, **restore_fs):
        log.info("resuming study %s from Tune's saved state in %s/%s", study_id, storage.uri, study_id)
        grid = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=False, **restore_fs).fit()
        return best_trial_test_metrics(grid, study_id, settings.database_url, spec, constants, mode)
    space = d.space()
    store = store_for(settings.database_url)
    earlier = len(store.trials.for_study(study_id)) if extended_at is not None else 0
    # warm start on the first run only: an extension continues its own Optuna study's history
    points, history = warm_start_plan(store, d, space) if extended_at is None else ([], [])
    search = PruningOptunaSearch(
        space=define_by_run(space, constants), metric=search_metric, mode=search_mode,
        sampler=make_sampler(d.sampler.type, space, d.sampler.seed, max_grid_points=10**9, options=d.sampler.options()),
        # the Optuna study caviar-<id>: in a journal file beside Tune's results, or in the database;
        # either way optuna-dashboard opens it
        storage=optuna_storage(settings.optuna_storage, settings.database_url, settings.data_dir, study_id),
        study_name=f"caviar-{study_id}", epochs=epochs, points_to_evaluate=points or None, history=history,
        rungs=rungs(d.scheduler, epochs),
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=metric, mode=mode, search_alg=search, scheduler=make_scheduler(d.scheduler, epochs, objectives),
            num_samples=max(d.budget.num_trials - earlier, 1), max_concurrent_trials=d.budget.max_concurrent_trials,
            time_budget_s=d.budget.time_budget_s,
            # one trial process per slot, reused by the next trial: no process start, no imports,
            # no CUDA context per trial (about 1 s each on short trials)
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=study_id,
            **storage.tune_args(),  # a shared path or an object store: a trial retried on another node finds its checkpoint
            # the job runs with TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1 (service.jobs.driver_env): Tune's
            # JSON log (result.json) stays, its CSV and TensorBoard loggers are off
            callbacks=[StoreCallback(study_id, settings.database_url, metric, mode, epochs, spec.metrics, resumed=resumed,
                                     started_since=extended_at),
                       JsonLoggerCallback(), *panda],
            failure_config=tune.FailureConfig(max_failures=d.budget.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None if d.mode == "panda" else 2),
            verbose=1,
        ),
    )
    return best_trial_test_metrics(tuner.fit(), study_id, settings.database_url, spec, constants, mode)


def best_trial_test_metrics(grid: Any, study_id: str, database_url: str, spec: TrainableSpec, constants: dict[str, Any], mode: str) -> dict[str, Any]:
    """Held-out test metrics of the best trial's last checkpoint (empty for a trainable without a
    model builder, or when the best trial left no checkpoint)."""
    build = spec.load_model_builder()
    best = store_for(database_url).trials.best(study_id, mode, 1)
    if build is None or not best:
        return {}
    for result in (grid[i] for i in range(len(grid))):
        if result.metrics and result.metrics.get("trial_id") == best[0].trial_id and result.checkpoint is not None:
            from trainables.engine import evaluate_checkpoint
            from trainables.report import load_state

            with result.checkpoint.as_directory() as directory:
                state = load_state(directory)
            return evaluate_checkpoint(spec.config({**constants, **best[0].config}), build, state)
    return {}
