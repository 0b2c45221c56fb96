"""The one helper a trainable reports through, inside Ray Tune or standalone.

Inside a Tune trial, ``report`` calls ``ray.tune.report`` (with a checkpoint when given state) and
``restore`` reads ``ray.tune.get_checkpoint()``. Outside Tune it prints one JSON line per report and
keeps checkpoints in a directory of the caller's choosing, so every trainable runs the same way in
both places. This module is the only place in ``trainables/`` that touches Ray, and only through
its public API (``ray.tune.report``, ``ray.tune.get_checkpoint``, ``ray.tune.get_context``), but
for reporting ahead (``TuneReporter``), which reads Tune's trial session.
PyTorch is imported when a checkpoint is written or read, so a torch-free trainable stays torch-free.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Protocol

CHECKPOINT_FILE = "state.pt"
ADJUSTED = "adjusted"  # a report's key: {"ids": [...], "after_epoch": n}, the adjustments applied after epoch n
CHANNEL_PREFIX = "caviar-adjust-"  # + the study id: the named Ray actor a panda study's driver runs


class Reporter(Protocol):
    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None = None) -> None:
        """Report one epoch's metrics; ``state`` (a torch-serializable dict) is checkpointed when given."""

    def restore(self) -> dict[str, Any] | None:
        """The state of the latest checkpoint to resume from, or None to start fresh."""

    def num_cpus(self) -> int:
        """CPUs allotted to this run (sets torch's thread count)."""

    def adjustments(self) -> list[dict[str, Any]]:
        """Changes a person asked for since the last call (panda mode), oldest first: each
        ``{"id": int, "changes": {knob: value}}``. A trainable that declares adjustable knobs applies
        them before its next epoch and lists the ids it applied in that epoch's report (``ADJUSTED``)."""

    def stopping(self) -> bool:
        """Whether this run was told to stop (a scheduler stopped it early). A trainable that asked
        for a reporter that reports ahead (``get_reporter(ahead=True)``) checks it between batches and
        returns at once; the others stop at their next report, as Tune's function trainables do."""


def load_state(directory: str | os.PathLike[str]) -> dict[str, Any]:
    import torch

    state: dict[str, Any] = torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
    return state


def save_state(directory: str | os.PathLike[str], state: dict[str, Any]) -> None:
    path = Path(directory) / CHECKPOINT_FILE
    tmp = path.with_suffix(".tmp")
    import torch

    torch.save(state, tmp)
    os.replace(tmp, path)


class StdoutReporter:
    """Standalone: JSON lines on stdout; checkpoints in ``checkpoint_dir`` (latest one kept)."""

    def __init__(self, checkpoint_dir: str | None = None, resume_from: str | None = None, stream: Any = None) -> None:
        self.checkpoint_dir = checkpoint_dir
        self.resume_from = resume_from
        self.stream = stream or sys.stdout

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None = None) -> None:
        if state is not None and self.checkpoint_dir:
            Path(self.checkpoint_dir).mkdir(parents=True, exist_ok=True)
            save_state(self.checkpoint_dir, state)
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        print(json.dumps(clean), file=self.stream, flush=True)

    def restore(self) -> dict[str, Any] | None:
        return load_state(self.resume_from) if self.resume_from else None

    def num_cpus(self) -> int:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

    def adjustments(self) -> list[dict[str, Any]]:
        return []  # standalone: nobody steers

    def stopping(self) -> bool:
        return False  # standalone: nobody stops it


class TuneReporter:
    """Inside a Ray Tune trial. Adjustments come from the study's channel (a named Ray actor that
    a panda study's driver runs); a trial of a study without one asks once and never again.

    ``ahead``: report without waiting for the driver. Tune's function trainable holds the training
    thread at each report until the driver has handled the result and asked for the next one, a
    round trip per epoch (about 5 ms here, bench/service_overhead.py). Reporting ahead, the next
    epoch starts as soon as the driver has taken the result, and the driver handles it meanwhile
    (Ray's own session mode for Ray Train workers, ``synchronous_result_reporting=False``). What
    Tune's synchronous mode gave, a trial stopped at once when its scheduler says so, the trainable
    keeps by checking ``stopping()`` between batches: a stopped trial ends within a batch, its
    unfinished epoch unreported. Only a trainable that checks ``stopping()`` asks for it; where
    Tune's session is not what this expects, the reporter reports as Tune does by default."""

    def __init__(self, ahead: bool = False) -> None:
        self._channel: Any = None  # None: not looked up yet; False: the study has none
        self._session = _tune_session() if ahead else None
        if self._session is not None:
            self._session.synchronous_result_reporting = False  # the session's, for this trial process's life

    def stopping(self) -> bool:
        # reset for each trial of a reused process: the session's event, read each time
        return self._session is not None and self._session.stop_event.is_set()

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None = None) -> None:
        from ray import tune

        if state is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="caviar-ckpt-") as tmp:
            save_state(tmp, state)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    def restore(self) -> dict[str, Any] | None:
        from ray import tune

        checkpoint = tune.get_checkpoint()
        if checkpoint is None:  # a forked study's trial starts from the earlier trial's checkpoint its driver holds
            return self._forked()
        with checkpoint.as_directory() as directory:
            return load_state(directory)

    def _forked(self) -> dict[str, Any] | None:
        import io

        import ray
        import torch

        channel = self._lookup()
        data = ray.get(channel.initial_state.remote(), timeout=60) if channel else None
        if not data:
            return None
        state: dict[str, Any] = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
        state["forked"] = True  # its config's adjustable values apply from the next epoch (they may differ from the checkpoint's)
        return state

    def _lookup(self) -> Any:
        import ray
        from ray import tune

        if self._channel is None:
            try:
                self._channel = ray.get_actor(CHANNEL_PREFIX + tune.get_context().get_experiment_name())
            except ValueError:
                self._channel = False
        return self._channel or None

    def num_cpus(self) -> int:
        import ray

        cpus = float(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))
        return max(1, math.ceil(cpus))

    def adjustments(self) -> list[dict[str, Any]]:
        import ray
        from ray import tune

        channel = self._lookup()
        if channel is None:
            return []
        found: list[dict[str, Any]] = ray.get(channel.take.remote(tune.get_context().get_trial_id()), timeout=30)
        return found


def in_tune() -> bool:
    """Whether this code runs inside a Ray Tune trial."""
    if "ray" not in sys.modules:  # a Tune worker has imported Ray long before the trainable runs
        return False
    from ray import tune

    with warnings.catch_warnings():  # outside a trial Ray warns, then answers None
        warnings.simplefilter("ignore")
        return tune.get_context().get_trial_id() is not None


def _tune_session() -> Any:
    """Tune's session of this trial process, if it has the two members reporting ahead uses."""
    try:
        from ray.train._internal.session import get_session
    except ImportError:  # pragma: no cover - another Ray
        return None
    session = get_session()
    ok = session is not None and isinstance(getattr(session, "synchronous_result_reporting", None), bool) \
        and hasattr(getattr(session, "stop_event", None), "is_set")
    return session if ok else None


_AHEAD = {"allowed": False}


def allow_reporting_ahead(on: bool) -> None:
    """Whether trainables in this process may report ahead (``get_reporter(ahead=True)``). Caviar's
    runner turns it on in its trial processes (``CAVIAR_REPORT_AHEAD``); the same trainable run by a
    plain Tune script reports as Tune does by default."""
    _AHEAD["allowed"] = on


def get_reporter(ahead: bool = False) -> Reporter:
    """The reporter for where this runs; ``ahead`` (in Tune, where allowed): report without waiting
    for the driver, for a trainable that checks ``stopping()`` between batches (see TuneReporter)."""
    return TuneReporter(ahead and _AHEAD["allowed"]) if in_tune() else StdoutReporter()
