"""Prometheus metrics: the HTTP side by prometheus-fastapi-instrumentator (requests and latencies by
route template and status class), the service's own from the store at scrape time.

Series (no per-trial or per-study labels; every label set is bounded):
- ``caviar_studies{status}``: studies by status now (gauge);
- ``caviar_trials_total{state}``: trials that reached each state (counter);
- ``caviar_results_ingested_total``: per-epoch results stored (counter);
- ``caviar_trial_duration_seconds``: finished trials, start to end (histogram);
- ``caviar_study_queue_wait_seconds``: submission to the study's start (histogram);
- ``http_requests_total{handler,method,status}``, ``http_request_duration_seconds{handler,method}``
  and ``http_request_duration_highr_seconds`` from the instrumentator.
Each app has its own registry (no process-global state).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_fastapi_instrumentator import Instrumentator

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


def instrument(app: FastAPI, store: Store) -> CollectorRegistry:
    """Instrument ``app``'s HTTP side and register the store's metrics; the registry GET /metrics serves."""
    registry = CollectorRegistry()
    registry.register(StoreCollector(store))
    Instrumentator(registry=registry, excluded_handlers=["/metrics"], should_group_untemplated=True).instrument(app)
    return registry


def exposition(registry: Any) -> bytes:
    from prometheus_client import generate_latest

    return bytes(generate_latest(registry))
