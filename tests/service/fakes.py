"""A fake of the API's one door to Ray (``service.jobs.Jobs``) and an in-process API built on it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from service.api.app import create_app
from service.client import Client
from service.jobs import JobState
from service.local import free_port, wait_until
from service.settings import Settings

# a small valid definition the API tests vary
GOOD: dict[str, Any] = {
    "name": "tiny",
    "trainable": "mlp_bn_softmax",
    "dataset": {"name": "digits"},
    "search_space": {"lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True}},
    "fixed": {"epochs": 2},
    "budget": {"num_trials": 2, "max_concurrent_trials": 2},
    "scheduler": {"type": "none"},
}


class FakeJobs:
    """Records calls; job states are whatever the test sets; the 'cluster' has ``resources``."""

    def __init__(self, resources: dict[str, float] | None = None, prefix: str = "job") -> None:
        self.prefix = prefix  # job ids are PREFIX-STUDY (two fakes: two dispatchers' jobs told apart)
        self.submitted: list[str] = []
        self.stopped: list[str] = []
        self.statuses: dict[str, JobState] = {}
        self.resources = resources if resources is not None else {"CPU": 2.0, "GPU": 0.0}
        self.on_submit: Callable[[str], None] = lambda study_id: None
        self.warmed = 0
        self.closed = 0  # close() calls: the warm driver stopped

    def submit(self, study_id: str) -> str:
        self.submitted.append(study_id)
        self.on_submit(study_id)
        job = f"{self.prefix}-{study_id}"
        self.statuses[job] = JobState.PENDING
        return job

    def warm(self) -> None:
        self.warmed += 1

    def close(self) -> None:
        self.closed += 1

    def stop(self, job_id: str) -> bool:
        self.stopped.append(job_id)
        self.statuses[job_id] = JobState.STOPPED
        return True

    def status(self, job_id: str) -> JobState | None:
        return self.statuses.get(job_id)

    def largest_node(self) -> dict[str, float]:
        return dict(self.resources)

    def ping(self) -> bool:
        return True

    def reset(self) -> None:
        pass


def settings_for(data_dir: Path, **overrides: Any) -> Settings:
    (data_dir / "datasets").mkdir(parents=True, exist_ok=True)
    return Settings(data_dir=data_dir, database_url=f"sqlite:///{data_dir / 'caviar.db'}", ray_address="http://ray.invalid:8265",
                    **overrides)


@contextmanager
def serve_in_thread(app: FastAPI) -> Iterator[str]:
    """uvicorn serving ``app`` from a thread of this process (milliseconds to start); yields its URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), 10, "the in-process server")
        assert server.started, "the in-process server did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def inprocess_api(data_dir: Path, jobs: FakeJobs | None = None, **settings: Any) -> Iterator[tuple[Client, FakeJobs]]:
    """The real app (routes, store on SQLite, dispatcher loop) in this process, Ray replaced by a fake;
    a client to it over loopback HTTP."""
    fake = jobs or FakeJobs()
    app = create_app(settings_for(data_dir, **settings), jobs=fake)
    with serve_in_thread(app) as url, Client(url, retry_for_s=0) as client:
        yield client, fake
