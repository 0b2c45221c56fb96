"""A study's driver: the entrypoint of its Ray job (``python -m service.driver STUDY_ID``).

Reads the study from the store, runs it with Ray Tune through the adapter, and marks it
completed or failed. A study cancelled meanwhile stays cancelled.
"""

from __future__ import annotations

import logging
import sys
import traceback

from service.schemas import StudyDefinition, StudyStatus
from service.settings import Settings
from service.store import Store, now


def main(study_id: str) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = Settings.from_env()
    store = Store(settings.database_url)
    row = store.get_study(study_id)
    if row is None:
        print(f"caviar: no study {study_id} in the store", file=sys.stderr)
        return 2
    if not store.update_study(study_id, only_if=("queued", "running"), status=StudyStatus.RUNNING.value, started_at=row.started_at or now()):
        print(f"caviar: study {study_id} is {row.status}; nothing to run", file=sys.stderr)
        return 0
    from service.ray_adapter import run_tune

    try:
        definition = StudyDefinition.model_validate(row.definition)
        test = run_tune(study_id, definition, definition.space(), settings.data_dir, settings.database_url,
                        resumed=row.resumes > 0, optuna_storage_kind=settings.optuna_storage)
        store.update_study(study_id, test_metrics=test or None)
        store.finish_study(study_id, StudyStatus.COMPLETED)
        return 0
    except BaseException as exc:
        traceback.print_exc()
        if _lost_cluster(exc):
            # the Ray cluster went away under us (head stopped or restarted): not the study's fault.
            # Leave it running; the API's reconciler sees the job end and resumes the study from
            # Tune's saved state.
            print(f"caviar: lost the Ray cluster ({type(exc).__name__}); the service will resume study {study_id}", file=sys.stderr)
            return 3
        store.finish_study(study_id, StudyStatus.FAILED, error=f"{type(exc).__name__}: {exc}"[:2000])
        return 1


def _lost_cluster(exc: BaseException) -> bool:
    import ray.exceptions

    return isinstance(exc, (ConnectionError, ray.exceptions.RaySystemError, ray.exceptions.GetTimeoutError))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
