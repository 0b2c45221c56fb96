"""Ray Tune's OptunaSearch, made aware of early stopping."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from service.definition import TrialState, trial_outcome

log = logging.getLogger("caviar.runner")


class PruningOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch tells Optuna every finished trial as COMPLETE with its last value, so an
    ASHA-stopped trial looks like a finished one with a low-fidelity score. Here a stopped trial is
    PRUNED (with its last intermediate value) and a diverged or errored one FAILED.

    ``epochs`` is what a trial runs when nothing stops it early. ``rungs``: the epochs at which a
    trial's value is told to Optuna as it trains (ASHA's rungs and the last epoch), so trials can be
    compared at the same epoch, running ones included (the ``mf_tpe`` sampler does). Picklable: Tune
    saves the searcher with its experiment state.
    """

    rungs: frozenset[int] = frozenset()  # a searcher pickled before rungs existed reports none

    def __init__(self, *args: Any, epochs: int, history: list[optuna.trial.FrozenTrial] | None = None,
                 rungs: Sequence[int] = (), **kwargs: Any) -> None:
        self.history = history or []  # before OptunaSearch's __init__, which sets up the study
        super().__init__(*args, **kwargs)
        self.epochs, self.rungs = epochs, frozenset(rungs)

    def _setup_study(self, mode: Any) -> None:
        """OptunaSearch's, then (warm start) an earlier study's finished trials into a study that
        has none yet, so the sampler starts from their history instead of from scratch."""
        super()._setup_study(mode)
        study = self._ot_study
        if self.history and study is not None and not any(t.state.is_finished() for t in study.get_trials(deepcopy=False)):
            study.add_trials(self.history)
            log.info("warm start: %d earlier trials added to the sampler's history", len(self.history))

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        # no Optuna write per epoch (Caviar's store keeps the learning curves): at the rungs only
        if self.rungs and result.get("training_iteration") in self.rungs:
            self._report(trial_id, result)

    def _report(self, trial_id: str, result: dict[str, Any] | None) -> None:
        """Tell Optuna the trial's value at this epoch (single objective: Optuna keeps no
        intermediate values with several). An epoch told already (a trial that ends at a rung is
        heard of twice) Optuna's trial ignores, from its own record, without a storage read."""
        metric, ot_trial = self._metric, self._ot_trials.get(trial_id)
        if (ot_trial is None or not isinstance(metric, str) or not result or "training_iteration" not in result
                or not isinstance(result.get(metric), (int, float))):
            return
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The reported value is ignored because")
            ot_trial.report(float(result[metric]), int(result["training_iteration"]))

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        outcome = trial_outcome(result, self.epochs, error)
        if outcome == TrialState.COMPLETED:
            if self.rungs:  # the last epoch too: with a scheduler that stops there, Tune forwards it only here
                self._report(trial_id, result)
            super().on_trial_complete(trial_id, result, error)
            return
        if trial_id in self._completed_trials:
            return
        state = optuna.trial.TrialState.PRUNED if outcome == TrialState.STOPPED_EARLY else optuna.trial.TrialState.FAIL
        ot_trial = self._ot_trials[trial_id]
        study = self._ot_study
        assert study is not None, "OptunaSearch sets up its study before any trial completes"
        try:
            # Tune does not forward the result on which the scheduler stops a trial; report it
            # so the pruned trial carries its last intermediate value (Optuna keeps intermediate
            # values for one objective only: with several, the pruned trial has none)
            self._report(trial_id, result)
            study.tell(ot_trial, None, state=state)
        except Exception as exc:  # e.g. already told
            log.warning("optuna tell failed for %s: %s", trial_id, exc)
        self._completed_trials.add(trial_id)
