"""A study's driver: the entrypoint of its Ray job (``python -m service.runner STUDY_ID``).

Reads the study from the store, runs it with Ray Tune, and marks it completed or failed. A study
cancelled meanwhile stays cancelled. Its settings come from the job's environment, which
``service.jobs.driver_env`` built.

``python -m service.runner --standby JOB_ID`` is a warm driver (``service.jobs``): it imports what
a driver needs (Ray, Tune, Optuna, PyTorch) and connects to Ray, then waits for the study the store
hands its job, runs it as above, and ends. Unclaimed for STANDBY_IDLE_S, it ends. With
``settings.warm_trials`` it also has Ray start the job's trial processes ahead, each importing
PyTorch and the trainables (service.runner.warm): Tune's trial actors land in them.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
import traceback
from collections import Counter

from service.definition import ACTIVE, StudyDefinition, StudyStatus, TrialState
from service.runner import freeze_imports, lower_priority
from service.settings import load_settings
from service.store import Store, now

EXIT_LOST_CLUSTER = 3
STANDBY_IDLE_S = 900.0  # an API killed without stopping its warm driver leaves it this long
STANDBY_POLL_S = 0.05
JOB_RECORD_WAIT_S = 60.0


def standby(job_id: str) -> int:
    """Get ready, then run the study handed to ``job_id``; 0 when none came within STANDBY_IDLE_S."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = load_settings()
    import ray

    import service.runner.tuner  # noqa: F401  - Tune, Optuna, the searcher: what a study's start would import
    import trainables.engine  # noqa: F401  - PyTorch: the built-ins' training functions resolve to it

    ray.init(address="auto", log_to_driver=True)
    ray.put(None)  # Ray's serialization context (it imports pydantic.v1): made here, not at the first trial's start
    freeze_imports()
    if settings.warm_trials:  # the trial processes too: Ray starts them, each importing PyTorch (service.runner.warm)
        threading.Thread(target=start_trial_processes, args=(job_id,), name="caviar-warm-trials", daemon=True).start()
    store = Store(settings.database_url)
    deadline = time.monotonic() + STANDBY_IDLE_S
    print(f"caviar: warm driver {job_id} ready", file=sys.stderr, flush=True)
    while time.monotonic() < deadline:
        study_id = store.studies.for_job(job_id)
        if study_id is not None:
            print(f"caviar: warm driver {job_id} runs study {study_id}", file=sys.stderr, flush=True)
            return main(study_id, job_id)
        time.sleep(STANDBY_POLL_S)
    print(f"caviar: warm driver {job_id} unclaimed for {STANDBY_IDLE_S:.0f} s; ending", file=sys.stderr)
    return 0


def start_trial_processes(job_id: str) -> None:
    """Ask the raylets for this job's trial processes (a second or two; the driver takes a study meanwhile)."""
    from service.runner.warm import prestart

    n = prestart(keep_alive_s=STANDBY_IDLE_S)
    print(f"caviar: warm driver {job_id} asked Ray for {n} trial processes ahead", file=sys.stderr, flush=True)


def main(study_id: str, job_id: str | None = None) -> int:
    """Run the study; with ``job_id`` (how the dispatcher starts drivers) only once the store records
    that Ray job as the study's: a job that lost the race to be recorded (two dispatchers, one whose
    lease lapsed) and could not be stopped ends here with 0, without touching the study."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = load_settings()
    lower_priority(settings.driver_nice)
    store = Store(settings.database_url)
    row = store.studies.get(study_id)
    if row is None:
        print(f"caviar: no study {study_id} in the store", file=sys.stderr)
        return 2
    if job_id is not None:
        recorded = recorded_job(store, study_id)
        if recorded != job_id:
            print(f"caviar: study {study_id} is recorded with Ray job {recorded}, not this one ({job_id}); nothing to run", file=sys.stderr)
            return 0
    if not store.studies.update(study_id, only_if=ACTIVE, only_job=job_id if job_id is not None else False,
                                status=StudyStatus.RUNNING.value, started_at=row.started_at or now()):
        print(f"caviar: study {study_id} is {row.status}; nothing to run", file=sys.stderr)
        return 0
    from service.runner.tuner import run_study

    freeze_imports()  # a warm driver froze its imports already; this freezes the few objects since
    try:
        definition = StudyDefinition.model_validate(row.definition)
        test = run_study(study_id, definition, settings, resumed=row.resumes > 0, extended_at=row.extended_at)
        failure = nothing_measured(store, study_id)
        if failure:  # every trial failed: the study did not do its job, and says why
            store.studies.finish(study_id, StudyStatus.FAILED, error=failure)
            return 1
        store.studies.update(study_id, test_metrics=test or None)
        store.studies.finish(study_id, StudyStatus.COMPLETED)
        return 0
    except BaseException as exc:
        traceback.print_exc()
        if lost_cluster(exc):
            # the Ray cluster went away under us (head stopped or restarted): not the study's fault.
            # Leave it running; the API's dispatcher sees the job end and resumes the study from
            # Tune's saved state.
            print(f"caviar: lost the Ray cluster ({type(exc).__name__}); the service will resume study {study_id}", file=sys.stderr)
            return EXIT_LOST_CLUSTER
        store.studies.finish(study_id, StudyStatus.FAILED, error=f"{type(exc).__name__}: {exc}"[:2000])
        return 1


def recorded_job(store: Store, study_id: str) -> str | None:
    """The Ray job the store records for the study: the dispatcher records it just after its submit
    returns, so a driver that starts first waits for it (None after JOB_RECORD_WAIT_S: the
    dispatcher died between the two, and the next one submits the study again)."""
    deadline = time.monotonic() + JOB_RECORD_WAIT_S
    while True:
        row = store.studies.get(study_id)
        if row is None or row.ray_job_id is not None or time.monotonic() > deadline:
            return row.ray_job_id if row is not None else None
        time.sleep(STANDBY_POLL_S)


def nothing_measured(store: Store, study_id: str) -> str | None:
    """Why a study whose trials all failed failed: the most common trial error, with its count
    (None when some trial was measured to its end or stopped early)."""
    trials = store.trials.for_study(study_id)
    # a trial not failed measured something (one cut short by time_budget_s stays `running` here)
    if any(t.state != TrialState.FAILED.value for t in trials):
        return None
    if not trials:
        return "no trial ran"
    # the same error from different trials differs only in where its traceback lies
    reasons = Counter(re.sub(r" \(full traceback in [^)]*\)$", "", t.error or "unknown error") for t in trials)
    reason, n = reasons.most_common(1)[0]
    return f"all {len(trials)} trials failed; the most common error ({n} of {len(trials)}): {reason}"[:2000]


def lost_cluster(exc: BaseException) -> bool:
    import ray.exceptions

    return isinstance(exc, (ConnectionError, ray.exceptions.RaySystemError, ray.exceptions.GetTimeoutError))


if __name__ == "__main__":
    if sys.argv[1] == "--standby":
        sys.exit(standby(sys.argv[2]))
    sys.exit(main(sys.argv[1], sys.argv[3] if sys.argv[2:3] == ["--job"] else None))
