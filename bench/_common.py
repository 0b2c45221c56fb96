"""What the benchmarks share: the --smoke / --json flags, the table they print, the JSON they write,
the invariants a smoke run asserts, a Ray head with `caviar serve` on it (``service.local``), and a
study submitted and waited for through ``service.client.Client``.

A full run writes its JSON under docs/bench/ unless ``--json PATH`` says where; a smoke run writes
one only when asked. Every benchmark starts what it needs on free loopback ports and stops only that.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from service.client import Client
from service.local import LocalHead, LocalServer

DOCS_BENCH = Path(__file__).resolve().parent.parent / "docs" / "bench"


# -- flags, output --------------------------------------------------------------------------------


def parser(doc: str | None, smoke_help: str, json_name: str) -> argparse.ArgumentParser:
    """An ArgumentParser with the flags every benchmark takes: ``--smoke`` and ``--json PATH``
    (``json_name``: the file a full run writes under docs/bench/ by default)."""
    ap = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help=f"{smoke_help}; asserts the benchmark's invariants (what CI runs)")
    ap.add_argument("--json", type=Path, default=None, metavar="PATH",
                    help=f"write the results here (default: docs/bench/{json_name} for a full run, none for --smoke)")
    return ap


def json_path(args: argparse.Namespace, name: str) -> Path | None:
    """Where the results go: ``--json``, else docs/bench/NAME.json for a full run, else nowhere."""
    if args.json is not None:
        return Path(args.json)
    return None if args.smoke else DOCS_BENCH / f"{name}.json"


def write_json(path: Path | None, data: Any) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    print(f"wrote {path}")


def table(headers: list[str], rows: list[list[Any]], left: int = 1) -> str:
    """A plain text table: the first ``left`` columns left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths), *(line(r) for r in cells[1:])])


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank; 0.0 for none."""
    if not values:
        return 0.0
    xs = sorted(values)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


@dataclass
class Checks:
    """The invariants a run asserts: each is printed; ``exit_code()`` is 1 when any was violated."""

    name: str
    failed: list[str] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)

    def check(self, ok: bool, what: str) -> bool:
        (self.passed if ok else self.failed).append(what)
        print(f"  check {'ok    ' if ok else 'FAILED'} {what}", flush=True)
        return ok

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "failed": self.failed}

    def exit_code(self) -> int:
        if not self.failed:
            return 0
        print(f"\n{self.name}: {len(self.failed)} invariant(s) violated:", flush=True)
        for what in self.failed:
            print(f"  - {what}", flush=True)
        return 1


# -- a Ray head and `caviar serve` ----------------------------------------------------------------


@contextlib.contextmanager
def cluster(work: Path, *, num_cpus: int | None = None, serve: bool = True,
            server_env: dict[str, str] | None = None) -> Iterator[tuple[LocalHead, LocalServer | None]]:
    """A Ray head of the benchmark's own and (``serve``) `caviar serve` on it, with the data directory
    ``work/data`` (SQLite there). This process is made a client of the head (its token in
    os.environ) so that it can also run Tune itself; CAVIAR_DATA_DIR is set before the head starts
    so that its trial processes find the datasets there. Stops only what it started."""
    data = work / "data"
    (data / "datasets").mkdir(parents=True, exist_ok=True)
    os.environ["CAVIAR_DATA_DIR"] = str(data)
    head = LocalHead(work, num_cpus=num_cpus)
    os.environ.update(head.env)
    server = LocalServer(data, head, database_url=f"sqlite:///{data / 'caviar.db'}", env=server_env) if serve else None
    try:
        head.start()
        if server is not None:
            server.start()
        yield head, server
    finally:
        if "ray" in sys.modules:  # a Tune run of the benchmark's own connected this process
            import ray

            ray.shutdown()
        if server is not None:
            server.stop()
        head.stop()


def warm_driver_up(head: LocalHead, not_this: str | None = None) -> str | None:
    """The id of a warm driver (service.jobs) that is up on ``head`` and free (its job running, its
    log saying ready and not yet running a study), other than ``not_this``; None when there is none."""
    client = head.jobs()._client()
    for j in client.list_jobs():
        if (j.metadata or {}).get("caviar_standby") == "1" and j.submission_id != not_this \
                and str(getattr(j.status, "value", j.status)) == "RUNNING":
            logs = client.get_job_logs(j.submission_id)
            if "ready" in logs and "runs study" not in logs:
                return str(j.submission_id)
    return None


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already in user
    return total - idle, total


def wait_quiet(busy_below: float = 0.25, window_s: float = 0.5, timeout_s: float = 60.0) -> float:
    """Wait until the machine's CPUs are less than ``busy_below`` busy over ``window_s`` (what
    started ahead, e.g. the warm driver's trial processes importing PyTorch, has settled), at most
    ``timeout_s``; the seconds waited. A run timed after it takes no CPU from what came before."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        b0, t0 = machine_cpu()
        time.sleep(window_s)
        b1, t1 = machine_cpu()
        if t1 > t0 and (b1 - b0) / (t1 - t0) < busy_below:
            return time.monotonic() - start
    print(f"note: the machine stayed over {busy_below:.0%} busy for {timeout_s:g} s; timing anyway", flush=True)
    return time.monotonic() - start


@contextlib.contextmanager
def tune_json_logger_only(on: bool = True) -> Iterator[None]:
    """While inside (``on``), Ray Tune adds none of its default CSV/JSON/TensorBoard loggers to a run
    (it reads TUNE_DISABLE_AUTO_CALLBACK_LOGGERS when the run starts): a tuned baseline passes its
    own JsonLoggerCallback, as Caviar's runner does. The variable is as it was afterwards."""
    before = os.environ.get("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS")
    if on:
        os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", None)
        else:
            os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = before


def submit(client: Client, definition: dict[str, Any]) -> str:
    """POST a study; its id (LocalHead.start has waited for the head's CPUs)."""
    return str(client.submit(definition)["id"])


def submit_and_wait(client: Client, definition: dict[str, Any], *, poll_s: float = 0.25,
                    timeout_s: float | None = None) -> tuple[str, dict[str, Any], float, float]:
    """Submit a study and wait until it ends: (study id, final study, submit time, wall seconds).
    A study that does not complete ends the benchmark with its error."""
    t0 = time.time()
    study_id = submit(client, definition)
    study = client.wait(study_id, poll_s=poll_s, timeout_s=timeout_s)
    wall = time.time() - t0
    if study["status"] != "completed":
        raise SystemExit(f"study {study_id} {study['status']}: {study['error']}")
    return study_id, study, t0, wall


@contextlib.contextmanager
def postgres_database(admin: str) -> Iterator[str]:
    """A fresh database caviar_bench_<random> on the PostgreSQL server of the admin URL ``admin``
    (postgresql://user@host:port/db); its URL. Dropped afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"caviar_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- the driver's store writes, without Ray ---------------------------------------------------------


@dataclass
class FakeTrial:
    """What the driver's StoreCallback reads of a Ray Tune trial."""

    trial_id: str
    config: dict[str, Any]
    last_result: dict[str, Any] = field(default_factory=dict)

    @property
    def storage(self) -> Any:  # Tune's StorageContext: the callback stores the trial's directory name
        return SimpleNamespace(trial_dir_name=f"fake_{self.trial_id}")


def store_callback(study_id: str, database_url: str, metric: str, mode: str, epochs: int) -> Any:
    """The study driver's own StoreCallback (service.runner.callbacks), for a built-in classifier's
    metrics: the benchmarks call its hooks as Tune does (on_trial_start, on_trial_result per epoch,
    on_trial_complete), so they write what a driver writes, through the store's API. Imports
    ray.tune (no cluster)."""
    from service.runner.callbacks import StoreCallback
    from trainables.registry import CLASSIFIER_METRICS

    return StoreCallback(study_id, database_url, metric, mode, epochs, CLASSIFIER_METRICS)
