"""Long polls (GET /v1/studies/{id}?wait_s=): what a request waiting for its study to finish waits on."""

from __future__ import annotations

import asyncio
import logging

from fastapi.concurrency import run_in_threadpool

from service.store import Store

log = logging.getLogger("caviar.longpoll")

WAIT_CHECK_S = 0.05  # how often the long polls' watcher reads the awaited studies' statuses
MAX_WAIT_S = 60.0


class FinishWatch:
    """What long polls (GET /v1/studies/{id}?wait_s=) wait on: while any request waits, one task reads
    the statuses of every awaited study in one query every WAIT_CHECK_S and wakes the requests whose
    study has finished. However many wait, the store sees one short query per tick."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.waiting: dict[str, set[asyncio.Future[None]]] = {}
        self.task: asyncio.Task[None] | None = None

    async def wait(self, study_id: str, timeout_s: float) -> bool:
        """Whether the study finished within ``timeout_s``."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(study_id, set()).add(done)
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._watch())
        try:
            await asyncio.wait_for(done, timeout_s)
            return True
        except TimeoutError:
            return False
        finally:
            futures = self.waiting.get(study_id)
            if futures is not None:
                futures.discard(done)
                if not futures:
                    del self.waiting[study_id]

    async def _watch(self) -> None:
        while self.waiting:
            try:
                finished = await run_in_threadpool(self.store.studies.finished_among, list(self.waiting))
            except Exception as exc:  # the store is briefly unreachable: the requests wait on, until their timeout
                log.warning("long polls: could not read the studies' statuses: %s", exc)
                finished = set()
            for study_id in finished:
                for done in self.waiting.pop(study_id, ()):
                    if not done.done():
                        done.set_result(None)
            await asyncio.sleep(WAIT_CHECK_S)
