"""Everything Caviar asks of Ray, in one module, so Ray's API churn touches one file.

Two halves:
- ``RayJobs``: the API process's view (Ray Jobs API over HTTP): submit a study's driver job, stop
  it, read its status, read node resources. The API never runs Tune.
- ``run_tune``: what the driver job runs: a Tuner with Caviar's OptunaSearch, the study's
  scheduler and resources, and a callback that writes trials and epochs to the store.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from search_spaces import SearchSpace
    from service.schemas import StudyDefinition
    from service.store import Store

log = logging.getLogger("caviar.ray")

TERMINAL_JOB_STATES = {"SUCCEEDED", "FAILED", "STOPPED"}


def _enable_token_auth() -> None:
    """Ray 2.5x+ clusters started locally use token auth (~/.ray/auth_token); clients must opt in."""
    if "RAY_AUTH_MODE" not in os.environ and (
        os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or (Path.home() / ".ray" / "auth_token").exists()
    ):
        os.environ["RAY_AUTH_MODE"] = "token"


class RayJobs:
    """A study = one Ray job, through the Jobs API at ``address`` (the dashboard's HTTP address)."""

    def __init__(self, address: str) -> None:
        self.address = address.rstrip("/")
        self._client_obj: Any = None

    def _client(self) -> Any:
        if self._client_obj is None:
            _enable_token_auth()
            from ray.job_submission import JobSubmissionClient

            self._client_obj = JobSubmissionClient(self.address)
        return self._client_obj

    def submit(self, study_id: str, env: dict[str, str]) -> str:
        # Ray runs entrypoints with the PATH's python; ours has Ray and Caviar installed
        entrypoint = f"{shlex.quote(sys.executable)} -m service.driver {shlex.quote(study_id)}"
        return str(
            self._client().submit_job(
                entrypoint=entrypoint,
                submission_id=f"caviar-{study_id}-{os.urandom(3).hex()}",
                runtime_env={"env_vars": env},
                metadata={"caviar_study_id": study_id},
            )
        )

    def stop(self, job_id: str) -> bool:
        return bool(self._client().stop_job(job_id))

    def status(self, job_id: str) -> str | None:
        try:
            return str(self._client().get_job_status(job_id))
        except RuntimeError:  # unknown job (e.g. a new cluster)
            return None

    def largest_node(self) -> dict[str, float]:
        """Total resources of the largest alive node: a trial must fit on one node."""
        r = self._client()._do_request("GET", "/api/v0/nodes?limit=1000&detail=false")
        r.raise_for_status()
        nodes = r.json()["data"]["result"]["result"]
        best: dict[str, float] = {}
        for node in nodes:
            if node.get("state") != "ALIVE":
                continue
            res = node.get("resources_total", {})
            for key in ("CPU", "GPU"):
                best[key] = max(best.get(key, 0.0), float(res.get(key, 0.0)))
        return best

    def ping(self) -> bool:
        try:
            self._client()._do_request("GET", "/api/version").raise_for_status()
            return True
        except Exception:
            self._client_obj = None
            return False

    def reset(self) -> None:
        self._client_obj = None


# -- the driver side ----------------------------------------------------------------------------


def trial_outcome(result: dict[str, Any] | None, epochs: int, error: bool = False) -> str:
    """completed | stopped_early | failed, from a trial's last result (one rule for store and Optuna)."""
    if error or not result:
        return "failed"
    if result.get("diverged"):
        return "failed"
    if int(result.get("epoch") or 0) < int((result.get("config") or {}).get("epochs") or epochs):
        return "stopped_early"
    return "completed"


def _error_reason(trial: Any) -> str:
    """The last line of the trial's traceback (``ValueError: ...``), and where the whole one is."""
    where = f"full traceback in {trial.local_path}"
    try:  # Tune has just written it on the driver's disk (get_error() reads the synced copy, later)
        text = Path(trial.error_file).read_text() if trial.error_file else ""
    except OSError:
        text = ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{lines[-1][:500]} ({where})" if lines else f"the trial raised an error ({where})"


REPORTED = ("epoch", "train_loss", "val_loss", "val_accuracy", "val_confidence", "lr", "samples_per_s", "diverged")


_STORES: dict[str, Store] = {}


def store_for(url: str) -> Store:
    """One Store per URL per process (callbacks are unpickled with a URL, not a connection pool)."""
    from service.store import Store

    if url not in _STORES:
        _STORES[url] = Store(url)
    return _STORES[url]


def run_tune(study_id: str, d: StudyDefinition, space: SearchSpace, data_dir: Path, database_url: str, resumed: bool = False,
             optuna_storage_kind: str = "journal") -> dict[str, Any]:
    """Run the study's trials on the Ray cluster this job belongs to; returns the best trial's test metrics.

    With Tune's saved experiment state on disk (an earlier driver of this study died), the run is
    restored from it: finished trials are kept, unfinished ones continue from their last
    checkpoint, the searcher and scheduler continue where they were. ``resumed`` says this is a
    later driver of the study: trials in the store that the saved state does not know (started
    after its last save) are dropped, as Tune runs new trials in their place.
    """
    import optuna
    import ray
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler, MedianStoppingRule
    from ray.tune.search.optuna import OptunaSearch

    from search_spaces import define_by_run, make_sampler
    from service.store import now, optuna_storage
    from trainables import get_trainable

    epochs = d.epochs()
    metric, mode = d.objective.metric, d.objective.mode
    constants = {**d.fixed, "epochs": epochs, "dataset": d.dataset.model_dump()}

    class CaviarOptunaSearch(OptunaSearch):  # type: ignore[misc]
        """Ray's OptunaSearch tells Optuna every finished trial as COMPLETE with its last value,
        so an ASHA-stopped trial looks like a finished one with a low-fidelity score. Here a
        stopped trial is PRUNED (its intermediate values were reported per epoch) and a diverged
        or errored one FAILED."""

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            # no database write per epoch: Caviar's store keeps the learning curves, and the one
            # intermediate value TPE uses (a pruned trial's last) is reported at completion
            return None

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            outcome = trial_outcome(result, epochs, error)
            if outcome == "completed":
                return super().on_trial_complete(trial_id, result, error)
            if trial_id in self._completed_trials:
                return None
            state = optuna.trial.TrialState.PRUNED if outcome == "stopped_early" else optuna.trial.TrialState.FAIL
            ot_trial = self._ot_trials[trial_id]
            try:
                # Tune does not forward the result on which the scheduler stops a trial; report it
                # so the pruned trial carries its last intermediate value
                if result and isinstance(result.get(metric), (int, float)) and "training_iteration" in result:
                    ot_trial.report(float(result[metric]), int(result["training_iteration"]))
                self._ot_study.tell(ot_trial, None, state=state)  # type: ignore[attr-defined]
            except Exception as exc:  # e.g. already told
                log.warning("optuna tell failed for %s: %s", trial_id, exc)
            self._completed_trials.add(trial_id)
            return None

    class StoreCallback(tune.Callback):  # type: ignore[misc]
        """Trial states and per-epoch metrics into the store, as they happen.

        Tune pickles its callbacks with the experiment state, so this holds only the store's URL.
        """

        def _config(self, trial: Any) -> dict[str, Any]:
            return {k: v for k, v in trial.config.items() if k != "dataset"}

        def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
            # the first step of a resumed driver sees exactly the trials Tune restored (this
            # object itself was unpickled from the saved state, hence the process environment)
            if os.environ.get("CAVIAR_RESUMED") == "1":
                os.environ["CAVIAR_RESUMED"] = "done"
                gone = store_for(database_url).forget_trials_except(study_id, {t.trial_id for t in trials})
                if gone:
                    log.warning("resume: %d trials started after Tune's last saved state are re-run: %s", len(gone), gone)

        def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            store_for(database_url).trial_recovered(study_id, trial.trial_id)

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            store_for(database_url).upsert_trial(study_id, trial.trial_id, config=self._config(trial), state="running", started_at=now(), finished_at=None)

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            metrics = {k: result[k] for k in REPORTED if k in result}
            metrics["reported_at"] = time.time()  # when the driver heard of it: learning curves against wall time
            store_for(database_url).add_epoch(study_id, trial.trial_id, metrics, metric, mode)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            outcome = trial_outcome(trial.last_result, epochs)
            error = "diverged: non-finite training loss" if outcome == "failed" else None
            store_for(database_url).upsert_trial(study_id, trial.trial_id, state=outcome, error=error, finished_at=now())

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            store_for(database_url).upsert_trial(study_id, trial.trial_id, state="failed", error=_error_reason(trial), finished_at=now())

    if not ray.is_initialized():
        ray.init(address="auto", log_to_driver=True)
    spec = get_trainable(d.trainable)
    sampler = make_sampler(d.sampler.type, space, d.sampler.seed, max_grid_points=10**9)
    # the Optuna study caviar-<id>: in a journal file beside Tune's results, or in the database;
    # either way optuna-dashboard opens it
    storage = optuna_storage(optuna_storage_kind, database_url, data_dir, study_id)
    search = CaviarOptunaSearch(
        space=define_by_run(space, constants), metric=metric, mode=mode, sampler=sampler,
        storage=storage, study_name=f"caviar-{study_id}",
    )
    s = d.scheduler
    max_t = s.max_t or epochs
    scheduler: Any
    if s.type == "asha":
        scheduler = ASHAScheduler(time_attr="epoch", max_t=max_t, grace_period=s.grace_period, reduction_factor=s.reduction_factor)
    elif s.type == "hyperband":
        scheduler = HyperBandScheduler(time_attr="epoch", max_t=max_t, reduction_factor=s.reduction_factor)
    elif s.type == "median":
        scheduler = MedianStoppingRule(time_attr="epoch", grace_period=s.grace_period, min_samples_required=3)
    else:
        scheduler = FIFOScheduler()
    r = d.resources_per_trial
    trainable = tune.with_resources(spec.train, {"cpu": r.cpu, "gpu": r.gpu})
    os.environ["CAVIAR_RESUMED"] = "1" if resumed else "0"
    experiment = data_dir / "ray_results" / study_id
    if resumed and tune.Tuner.can_restore(experiment):
        log.info("resuming study %s from Tune's saved state in %s", study_id, experiment)
        grid = tune.Tuner.restore(str(experiment), trainable=trainable, resume_unfinished=True, resume_errored=False).fit()
        return _test_metrics(grid, study_id, database_url, spec, constants, mode)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=metric, mode=mode, search_alg=search, scheduler=scheduler,
            num_samples=d.budget.num_trials, max_concurrent_trials=d.budget.max_concurrent_trials,
            time_budget_s=d.budget.time_budget_s,
            # one trial process per slot, reused by the next trial: no process start, no imports,
            # no CUDA context per trial (about 1 s each on short trials)
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=study_id,
            storage_path=str(data_dir / "ray_results"),
            # Tune's CSV and TensorBoard loggers cost ~0.1-0.3 s a trial on short trials (the job runs
            # with TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1); its JSON log (result.json) stays
            callbacks=[StoreCallback(), JsonLoggerCallback()],
            failure_config=tune.FailureConfig(max_failures=d.budget.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            verbose=1,
        ),
    )
    return _test_metrics(tuner.fit(), study_id, database_url, spec, constants, mode)


def _test_metrics(grid: Any, study_id: str, database_url: str, spec: Any, constants: dict[str, Any], mode: str) -> dict[str, Any]:
    """Held-out test metrics of the best trial's last checkpoint (empty when there is none)."""
    from trainables.engine import evaluate_checkpoint
    from trainables.report import load_state

    best = store_for(database_url).best_trials(study_id, mode, 1)
    if not best:
        return {}
    for result in (grid[i] for i in range(len(grid))):
        if result.metrics and result.metrics.get("trial_id") == best[0].trial_id and result.checkpoint is not None:
            if spec.build_model is None:  # a plug-in without a model builder: no test metrics
                return {}
            with result.checkpoint.as_directory() as directory:
                state = load_state(directory)
            cfg = spec.config_model.model_validate({**constants, **{k: v for k, v in best[0].config.items() if k in spec.config_model.model_fields}})
            return evaluate_checkpoint(cfg, spec.build_model, state)  # type: ignore[arg-type]
    return {}
