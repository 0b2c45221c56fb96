"""The Tune callback that writes trial states and per-epoch metrics to Caviar's store."""

from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from ray import tune

from service.definition import TrialState, trial_outcome
from service.store import Store, now

log = logging.getLogger("caviar.runner")
FLUSH_S, FLUSH_N = 0.1, 200  # epoch results are written in batches: at most this old, or this many
_STORES: dict[str, Store] = {}


def store_for(url: str) -> Store:
    """One Store per URL per process (callbacks are unpickled with a URL, not a connection pool)."""
    if url not in _STORES:
        _STORES[url] = Store(url)
    return _STORES[url]


def error_reason(trial: Any) -> str:
    """The last line of the trial's traceback (``ValueError: ...``), and where the whole one is."""
    where = f"full traceback in {trial.local_path}"
    try:  # Tune has just written it on the driver's disk (get_error() reads the synced copy, later)
        text = Path(trial.error_file).read_text() if trial.error_file else ""
    except OSError:
        text = ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{lines[-1][:500]} ({where})" if lines else f"the trial raised an error ({where})"


class StoreCallback(tune.Callback):
    """Trial states and per-epoch metrics into the store, as they happen.

    ``metrics`` are the trainable's declared metrics: each epoch stores those it reported, with
    ``epoch``, ``diverged`` and ``reported_at`` (when the driver heard of it, for learning curves
    against wall time). Tune pickles its callbacks with the experiment state, so this holds only
    the store's URL. In a ``resumed`` study, and in an instance that comes back from that state,
    the first step drops the trials the run does not know: they started after Tune's last save
    (or there was none) and are run again.

    Epoch results are written in batches, one transaction each (at most ``FLUSH_S`` old or
    ``FLUSH_N`` results; bench/control_plane.py measured half the driver CPU and a tenth of the
    commits per result against one transaction each). A trial's results are in the store before
    Tune counts its checkpoint, its end or its retry, so a driver that dies loses from the store
    only results that Tune reports again when it resumes from that checkpoint.
    """

    def __init__(self, study_id: str, database_url: str, metric: str, mode: str, epochs: int, metrics: tuple[str, ...],
                 *, resumed: bool = False, started_since: datetime | None = None) -> None:
        self.study_id, self.database_url = study_id, database_url
        self.started_since = started_since  # an extended study: this run's trials started since then
        self.metric, self.mode, self.epochs = metric, mode, epochs
        self.reported = ("epoch", *metrics, "diverged")
        self._restored = resumed
        self._nodes: dict[str, tuple[str | None, str | None]] = {}  # trial id -> (node, device) it reports from, stored when they change
        self._pending: list[tuple[str, dict[str, Any]]] = []  # (trial id, epoch metrics) not yet written
        self._oldest = 0.0

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pending": []}  # Tune saves its state; results go to the store, not there

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"_pending": [], "_oldest": 0.0, **state})
        self._restored = True  # unpickled: Tune restored this study's experiment state

    def flush(self) -> None:
        """Write the pending epoch results (one transaction)."""
        if self._pending:  # kept when the write fails (after the store's own retries): the next flush tries again
            self.store.trials.add_epochs(self.study_id, self._pending, self.metric, self.mode)
            self._pending = []

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if self._pending and time.monotonic() - self._oldest >= FLUSH_S:
            self.flush()

    def on_checkpoint(self, iteration: int, trials: list[Any], trial: Any, checkpoint: Any, **info: Any) -> None:
        self.flush()  # before Tune counts the checkpoint: a resume from it re-reports only later results

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self.flush()

    @property
    def store(self) -> Store:
        return store_for(self.database_url)

    @staticmethod
    def _config(trial: Any) -> dict[str, Any]:
        return {k: v for k, v in trial.config.items() if k != "dataset"}

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if self._restored:  # the first step of a resumed driver sees exactly the trials Tune restored
            self._restored = False
            gone = self.store.trials.forget_except(self.study_id, {t.trial_id for t in trials}, self.started_since)
            if gone:
                log.warning("resume: %d trials started after Tune's last saved state are re-run: %s", len(gone), gone)

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.flush()
        self.store.trials.recovered(self.study_id, trial.trial_id)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.store.trials.upsert(self.study_id, trial.trial_id, config=self._config(trial), state=TrialState.RUNNING.value,
                                 started_at=now(), finished_at=None, trial_dir=trial.storage.trial_dir_name,
                                 event="trial_started", event_data={"config": self._config(trial)})

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any) -> None:
        metrics = {k: result[k] for k in self.reported if k in result}
        metrics["reported_at"] = time.time()
        if result.get("checkpoint_dir_name"):  # this epoch's checkpoint (a fork starts from it)
            metrics["checkpoint"] = result["checkpoint_dir_name"]
        if not self._pending:
            self._oldest = time.monotonic()
        self._pending.append((trial.trial_id, metrics))
        if len(self._pending) >= FLUSH_N:
            self.flush()
        node = result.get("node_ip") or result.get("hostname")  # Tune adds both to every result
        where = (str(node) if node else None, str(result["device"]) if result.get("device") else None)
        if any(where) and self._nodes.get(trial.trial_id) != where:  # the first result, or a retry elsewhere
            self._nodes[trial.trial_id] = where
            changed: dict[str, Any] = {k: v for k, v in zip(("node", "device"), where, strict=True) if v}
            self.store.trials.upsert(self.study_id, trial.trial_id, **changed)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.flush()
        outcome = trial_outcome(trial.last_result, self.epochs)
        error = "diverged: non-finite training loss" if outcome == TrialState.FAILED else None
        epochs = int((trial.last_result or {}).get("epoch") or 0)
        self.store.trials.upsert(self.study_id, trial.trial_id, state=outcome.value, error=error, finished_at=now(),
                                 event=outcome.value, event_data={"epochs": epochs, "error": error})

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.flush()
        reason = error_reason(trial)
        self.store.trials.upsert(self.study_id, trial.trial_id, state=TrialState.FAILED.value, error=reason, finished_at=now(),
                                 event=TrialState.FAILED.value, event_data={"error": reason})
