"""Prometheus metrics: the HTTP side by ``HttpMetrics`` (requests and latencies by route template and
status class), the service's own from the store at scrape time.

Series (no per-trial or per-study labels; every label set is bounded):
- ``caviar_studies{status}``: studies by status now (gauge);
- ``caviar_trials_total{state}``: trials that reached each state (counter);
- ``caviar_results_ingested_total``: per-epoch results stored (counter);
- ``caviar_trial_duration_seconds``: finished trials, start to end (histogram);
- ``caviar_study_queue_wait_seconds``: submission to the study's start (histogram);
- ``http_requests_total{handler,method,status}`` and ``http_request_duration_seconds{handler,method}``
  (the names and labels prometheus-fastapi-instrumentator gives them, which Caviar used before:
  that middleware matched every request against every route a second time to label it, a quarter
  of a cached read's CPU, docs/benchmarks.md §4).
Each app has its own registry (no process-global state). Under ``caviar serve --workers N``
(service.api.server.run_workers) the HTTP series are every worker's summed, whichever worker answers
the scrape: prometheus_client's multiprocess mode, in a directory the supervisor makes for them
(``PROMETHEUS_MULTIPROC_DIR``, set for the workers only; a worker that dies keeps its counts).
"""

from __future__ import annotations

import bisect
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.store import Store
from service.store.models import StudyStatus, TrialState

TRIAL_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 3 * 3600, 12 * 3600)
QUEUE_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600)


def _histogram(name: str, doc: str, values: Sequence[float], buckets: Sequence[float]) -> HistogramMetricFamily:
    ordered = sorted(values)
    cumulative = [(str(float(b)), bisect.bisect_right(ordered, b)) for b in buckets] + [("+Inf", len(ordered))]
    return HistogramMetricFamily(name, doc, buckets=cumulative, sum_value=float(sum(ordered)))


class StoreCollector(Collector):
    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        stats = self.store.stats.snapshot()
        studies = GaugeMetricFamily("caviar_studies", "Studies by status, now.", labels=["status"])
        for status in StudyStatus:
            studies.add_metric([status.value], stats.studies_by_status.get(status.value, 0))
        yield studies
        trials = CounterMetricFamily("caviar_trials", "Trials that reached each state (a running trial counts as running).", labels=["state"])
        for state in TrialState:
            trials.add_metric([state.value], stats.trials_by_state.get(state.value, 0))
        yield trials
        yield CounterMetricFamily("caviar_results_ingested", "Per-epoch results stored.", value=stats.results)
        yield _histogram("caviar_trial_duration_seconds", "Finished trials: from start to end.", stats.trial_seconds, TRIAL_BUCKETS)
        yield _histogram("caviar_study_queue_wait_seconds", "From submission to the study's start on Ray.", stats.queue_wait_seconds,
                         QUEUE_BUCKETS)


MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client reads it as it is imported
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class HttpMetrics:
    """Requests and latencies, as a plain ASGI middleware. The ``handler`` label is the route template
    the router matched (``scope["route"]``, read once the request is done: no second routing pass);
    requests no route matched are grouped as ``none``; ``status`` is the class (``2xx``). GET /metrics
    itself is not counted."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry | None) -> None:
        """``registry`` None: the series go to the multiprocess directory only (collected from there)."""
        self.app = app
        self.requests = Counter("http_requests_total", "Total number of requests by method, status and handler.",
                                ["handler", "method", "status"], registry=registry)
        self.latency = Histogram("http_request_duration_seconds", "Duration of HTTP requests in seconds.",
                                 ["handler", "method"], buckets=LATENCY_BUCKETS_S, registry=registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            handler = getattr(scope.get("route"), "path", None) or "none"
            if handler != "/metrics":
                self.requests.labels(handler, scope["method"], f"{status // 100}xx").inc()
                self.latency.labels(handler, scope["method"]).observe(time.perf_counter() - start)


def instrument(app: FastAPI, store: Store) -> CollectorRegistry:
    """Instrument ``app``'s HTTP side and register the store's metrics; the registry GET /metrics serves."""
    registry = CollectorRegistry()
    registry.register(StoreCollector(store))
    if os.environ.get(MULTIPROC_DIR):  # one of several workers: every worker's HTTP series, from their files
        from prometheus_client.multiprocess import MultiProcessCollector

        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        app.add_middleware(HttpMetrics, registry=None)
    else:
        app.add_middleware(HttpMetrics, registry=registry)
    return registry


def exposition(registry: Any) -> bytes:
    from prometheus_client import generate_latest

    return bytes(generate_latest(registry))
