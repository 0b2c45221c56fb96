"""GET /metrics: Prometheus text from the real app over HTTP (Ray faked): the store's series, the
HTTP side by route template, bounded labels, and a token beyond loopback."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from service.api.app import create_app
from service.store import now
from tests.service.fakes import GOOD, FakeJobs, serve_in_thread, settings_for


def families(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def value(found: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for got, v in found.get(name, []) if all(got.get(k) == x for k, x in labels.items()))


def test_metrics_count_studies_trials_results_and_requests(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path), jobs=FakeJobs())
    store = app.state.ctx.store
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as client:
        ids = [client.post("/v1/studies", json=GOOD).json()["id"] for _ in range(3)]
        store.studies.update(ids[0], status="running", started_at=now())
        t0 = now()
        for i, state in enumerate(("completed", "stopped_early", "failed", "running")):
            store.trials.upsert(ids[0], f"t{i}", config={}, state=state, started_at=t0 - timedelta(seconds=40),
                                finished_at=None if state == "running" else t0)
        for epoch in (1, 2, 3):
            store.trials.add_epoch(ids[0], "t0", {"epoch": epoch, "val_accuracy": 0.5}, "val_accuracy", "max")
        client.get(f"/v1/studies/{ids[1]}")
        client.get("/v1/studies/does-not-exist")
        client.get("/no/such/route")
        client.get("/metrics")  # not counted

        r = client.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        found = families(r.text)
        assert value(found, "caviar_studies", status="running") == 1 and value(found, "caviar_studies", status="queued") == 2
        assert value(found, "caviar_studies", status="completed") == 0  # every status is a series, even at 0
        assert value(found, "caviar_trials_total", state="completed") == 1 and value(found, "caviar_trials_total", state="failed") == 1
        assert value(found, "caviar_results_ingested_total") == 3
        assert value(found, "caviar_trial_duration_seconds_count") == 3  # the running one is not finished
        assert value(found, "caviar_trial_duration_seconds_bucket", le="30.0") == 0
        assert value(found, "caviar_trial_duration_seconds_bucket", le="60.0") == 3
        assert value(found, "caviar_study_queue_wait_seconds_count") == 1
        # the HTTP side, by route template: one series for every study id
        assert value(found, "http_requests_total", handler="/v1/studies/{study_id}", method="GET") == 2
        assert value(found, "http_requests_total", handler="/v1/studies", method="POST", status="2xx") == 3
        assert value(found, "http_requests_total", handler="/v1/studies/{study_id}", method="GET", status="4xx") == 1
        assert value(found, "http_requests_total", handler="none", method="GET", status="4xx") == 1  # no route: grouped
        assert not [got for got, _ in found["http_requests_total"] if got["handler"] == "/metrics"]
        assert value(found, "http_request_duration_seconds_count", handler="/v1/studies", method="POST") == 3
        assert value(found, "http_request_duration_seconds_bucket", handler="/v1/studies", method="POST", le="+Inf") == 3
        labels = {v for samples in found.values() for got, _ in samples for v in got.values()}
        assert not labels & set(ids) and "does-not-exist" not in r.text  # bounded: no per-study or per-trial labels


def test_metrics_need_a_token_beyond_loopback(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path, auth="required"), jobs=FakeJobs())
    _, token = app.state.ctx.store.tokens.create("prometheus")
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as client:
        assert client.get("/metrics").status_code == 401
        r = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and "caviar_studies" in r.text


def test_the_grafana_dashboard_queries_only_series_the_api_exposes(tmp_path: Path) -> None:
    import json
    import re

    dashboard = json.loads((Path(__file__).resolve().parents[2] / "docker" / "grafana" / "caviar-dashboard.json").read_text())
    app = create_app(settings_for(tmp_path), jobs=FakeJobs())
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as client:
        client.get("/v1/studies")
        exposed = set(families(client.get("/metrics").text))
    queried = {name for panel in dashboard["panels"] for t in panel["targets"]
               for name in re.findall(r"\b(caviar_\w+|http_\w+)\b", t["expr"])}
    assert queried and queried <= exposed, queried - exposed
    assert {p["id"] for p in dashboard["panels"]} == set(range(1, len(dashboard["panels"]) + 1))
