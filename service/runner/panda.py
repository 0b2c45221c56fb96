"""Panda mode in the study's driver: the channel a person's changes reach running trials through.

The API stores a change (``caviar_adjustments``); this driver's :class:`PandaCallback` forwards the
pending ones to :class:`AdjustChannel`, a named Ray actor (``caviar-adjust-<study id>``) that lives
as long as the driver; the trial's reporter takes its changes from it between epochs
(``trainables.report.TuneReporter.adjustments``) and lists those it applied in its next report,
which the callback records as applied (``after_epoch``). A resumed driver starts a new channel and
forwards what is still pending; what was applied is in the trials' checkpoints.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray
from ray import tune

from service.definition import ForkFrom
from service.runner.callbacks import store_for
from trainables.report import ADJUSTED, CHANNEL_PREFIX

log = logging.getLogger("caviar.runner")
POLL_S = 0.3


@ray.remote(num_cpus=0)
class AdjustChannel:
    def __init__(self) -> None:
        self.pending: dict[str, list[dict[str, Any]]] = {}
        self.initial: bytes | None = None  # a forked study: the checkpoint its trial starts from

    def set_initial(self, state: bytes) -> None:
        self.initial = state

    def initial_state(self) -> bytes | None:
        return self.initial

    def put(self, trial_id: str, item: dict[str, Any]) -> None:
        self.pending.setdefault(trial_id, []).append(item)

    def take(self, trial_id: str) -> list[dict[str, Any]]:
        return self.pending.pop(trial_id, [])

    def ready(self) -> bool:
        return True


_CHANNELS: dict[str, Any] = {}  # their handles: a non-detached actor lives while a handle does


def start_channel(study_id: str, initial: bytes | None = None) -> Any:
    """The study's channel (a named actor owned by this driver: it ends with the job), up and holding
    ``initial`` (a forked study's checkpoint) when this returns: a trial that looked for it before
    would start without it (fresh, or never steered), and warm trial processes start in well under
    the channel's own start-up."""
    channel = AdjustChannel.options(name=CHANNEL_PREFIX + study_id, get_if_exists=True).remote()  # type: ignore[attr-defined]
    _CHANNELS[study_id] = channel
    ray.get(channel.set_initial.remote(initial) if initial is not None else channel.ready.remote(), timeout=120)
    return channel


class PandaCallback(tune.Callback):
    def __init__(self, study_id: str, database_url: str, owner: str = "local", fork: ForkFrom | None = None) -> None:
        self.study_id, self.database_url, self.owner, self.fork = study_id, database_url, owner, fork
        self._forwarded: set[int] = set()
        self._polled = 0.0

    def __getstate__(self) -> dict[str, Any]:  # Tune saves callbacks with its state: a resumed driver forwards afresh
        return {"study_id": self.study_id, "database_url": self.database_url, "owner": self.owner, "fork": self.fork}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["study_id"], state["database_url"], state.get("owner", "local"), state.get("fork"))  # type: ignore[misc]

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """A forked trial's changes are its first intervention: applied after the epoch it starts from."""
        f = self.fork
        if f is not None and f.changes and not store_for(self.database_url).adjustments.for_trial(self.study_id, trial.trial_id):
            adjustments = store_for(self.database_url).adjustments
            a = adjustments.add(self.study_id, trial.trial_id, f.changes, self.owner)
            adjustments.applied(self.study_id, trial.trial_id, [a.pk], f.epoch)

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if time.monotonic() - self._polled < POLL_S:
            return
        self._polled = time.monotonic()
        channel = _CHANNELS.get(self.study_id) or ray.get_actor(CHANNEL_PREFIX + self.study_id)
        for a in store_for(self.database_url).adjustments.pending(self.study_id):
            if a.pk not in self._forwarded:
                channel.put.remote(a.trial_id, {"id": a.pk, "changes": a.changes})
                self._forwarded.add(a.pk)
                log.info("trial %s: forwarded adjustment %d %s", a.trial_id, a.pk, a.changes)

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any) -> None:
        applied = result.get(ADJUSTED)
        if isinstance(applied, dict) and applied.get("ids"):
            store_for(self.database_url).adjustments.applied(self.study_id, trial.trial_id, [int(i) for i in applied["ids"]],
                                                             int(applied["after_epoch"]))
