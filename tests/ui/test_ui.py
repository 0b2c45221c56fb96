"""The web UI in a real browser (Chromium via Playwright) against real servers over HTTP.

- a study on the session's Ray head: open the list, open the running study, see its learning
  curves grow from the event stream without a reload, cancel it;
- the API with Ray faked: an invalid definition shows its field and rule, a valid one opens its
  study page; trainables and presets are listed from the API;
- auth required (not on loopback): the page asks for a token, refuses a wrong one, and shows only
  the token owner's studies;
- a study of 10,000 trials: the study page stays small (payload bounded) and sorts on the server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.api.app import create_app
from service.client import Client
from service.local import LocalHead, LocalServer, wait_until
from service.store.synthetic import synthetic_study
from tests.service.fakes import FakeJobs, serve_in_thread, settings_for
from tests.ui.conftest import screenshot

pytestmark = pytest.mark.ui

SLOW = {"name": "ui-live", "trainable": "busy_work", "dataset": {"name": "digits"},
        "search_space": {"x": {"type": "float", "low": 0, "high": 1}, "y": {"type": "float", "low": 0, "high": 1}},
        "fixed": {"epochs": 60, "seconds_per_epoch": 0.25},
        "scheduler": {"type": "asha", "grace_period": 2, "reduction_factor": 3},
        "budget": {"num_trials": 6, "max_concurrent_trials": 2}}


def curve_points(page: Any) -> int:
    return int(page.get_attribute("[data-plot=curves] svg", "data-points") or 0)


@pytest.mark.ray
def test_list_then_a_running_study_whose_curves_grow_live_then_cancel(api: LocalServer, ray_head: LocalHead, page: Any) -> None:
    with api.client() as client:
        sid = client.submit(SLOW)["id"]
        wait_until(lambda: any(t["epochs"] >= 2 for t in client.trials(sid)), 180, "two epochs of a trial", interval=0.5)

        page.goto(f"{api.url}/")
        row = page.locator(f"tr[data-study='{sid}']")
        row.wait_for()
        assert "running" in row.inner_text() and "ui-live" in row.inner_text()
        screenshot(page, "studies")
        row.get_by_role("link", name="ui-live").click()

        page.wait_for_selector("svg[data-curves]")
        page.wait_for_function("document.querySelector('.live')?.textContent.includes('live')")
        page.evaluate("window.__same_page = true")  # gone if the page reloads
        first = curve_points(page)
        wait_until(lambda: curve_points(page) >= first + 3, 60, "the curves to grow from the event stream", interval=0.2)
        assert page.evaluate("window.__same_page") is True
        assert page.locator("[data-plot=curves] line.rung").count() >= 1  # ASHA's rungs drawn
        trial_ids = {t["trial_id"] for t in client.trials(sid)}
        shown = set(page.locator("table.trials-table tbody tr").evaluate_all("rows => rows.map(r => r.dataset.trial)"))
        assert shown and shown <= trial_ids
        screenshot(page, "study")

        page.get_by_role("button", name="Cancel study").click()
        page.get_by_role("button", name="Confirm: cancel the study").click()
        page.locator(".study-head .badge.cancelled").wait_for()
        assert client.study(sid)["status"] == "cancelled"


def test_submit_shows_the_field_and_rule_of_a_422_and_a_valid_definition_opens_its_study(tmp_path: Path, page: Any) -> None:
    app = create_app(settings_for(tmp_path), jobs=FakeJobs())  # uvicorn over HTTP, Ray faked: studies stay queued
    with serve_in_thread(app) as url, Client(url) as client:
        trainables = {t["name"] for t in client.trainables()}
        presets = {p["name"] for p in client.search_spaces()}
        page.goto(f"{url}/#/submit")
        page.locator("[data-testid=presets] li").first.wait_for()
        listed = page.locator("[data-testid=trainables] li code").all_inner_texts()
        assert set(listed) == trainables
        assert set(page.locator("[data-testid=presets] li code").all_inner_texts()) == presets

        bad = SLOW | {"name": "ui-bad", "search_space": {"x": {"type": "float", "low": 1, "high": 0}}}
        page.fill("#definition", json.dumps(bad))
        page.get_by_role("button", name="Submit").click()
        field = page.locator(".errors li[data-field='search_space.x']")
        field.wait_for()
        assert "high" in field.inner_text() and "low" in field.inner_text(), field.inner_text()
        screenshot(page, "submit-422")

        yaml_text = "\n".join(f"{k}: {json.dumps(v)}" for k, v in (SLOW | {"name": "ui-good"}).items())
        page.fill("#definition", yaml_text)  # YAML (JSON values are YAML too)
        page.get_by_role("button", name="Submit").click()
        page.wait_for_url(f"{url}/#/studies/*")
        sid = page.url.rsplit("/", 1)[-1]
        page.locator(".study-head h1", has_text="ui-good").wait_for()
        assert client.study(sid)["name"] == "ui-good"
        assert [s["name"] for s in client.studies()["items"]] == ["ui-good"]  # the invalid one stored nothing


def test_beyond_loopback_the_ui_asks_for_a_token_and_shows_only_its_owners_studies(tmp_path: Path, page: Any) -> None:
    app = create_app(settings_for(tmp_path, auth="required"), jobs=FakeJobs())
    store = app.state.ctx.store
    tokens = {owner: store.tokens.create(owner)[1] for owner in ("alice", "bob")}
    with serve_in_thread(app) as url:
        ids = {}
        for owner, token in tokens.items():
            r = httpx.post(f"{url}/v1/studies", json=SLOW | {"name": f"study-of-{owner}"}, headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 201, r.text
            ids[owner] = r.json()["id"]
        page.goto(f"{url}/")
        page.locator("#token-form").wait_for()
        page.fill("#token-input", "cav_wrong")
        page.get_by_role("button", name="Use token").click()
        page.locator("#token-error", has_text="unknown or revoked").wait_for()
        page.fill("#token-input", tokens["alice"])
        page.get_by_role("button", name="Use token").click()
        page.locator(f"tr[data-study='{ids['alice']}']").wait_for()
        rows = page.locator("table.studies tbody tr").evaluate_all("rows => rows.map(r => r.dataset.study)")
        assert rows == [ids["alice"]]
        # the list reads the summary view (no definitions): the progress still shows the budget
        assert page.locator(f"tr[data-study='{ids['alice']}'] .progress").inner_text().startswith(f"0 / {SLOW['budget']['num_trials']} ")
        assert page.locator("#token-form").is_hidden()
        page.goto(f"{url}/#/studies/{ids['bob']}")  # another owner's study: as if it did not exist
        page.locator("main .error", has_text="no study").wait_for()


def test_a_10000_trial_study_page_stays_small_and_sorts_on_the_server(tmp_path: Path, page: Any) -> None:
    app = create_app(settings_for(tmp_path), jobs=FakeJobs())
    definition = SLOW | {"name": "ten-thousand", "fixed": {"epochs": 30}, "budget": {"num_trials": 10_000, "max_concurrent_trials": 4}}
    sid = synthetic_study(app.state.ctx.store, definition, 10_000, running=4, status="running")
    with serve_in_thread(app) as url:
        sizes: dict[str, int] = {}
        foreign: list[str] = []

        def seen(response: Any) -> None:
            if not response.url.startswith(url):
                foreign.append(response.url)
            elif "/events" not in response.url:  # the stream never ends; its bytes are not the page's
                sizes[response.url] = len(response.body())

        page.on("response", seen)
        page.goto(f"{url}/#/studies/{sid}")
        page.wait_for_selector("svg[data-curves]")
        page.wait_for_selector("[data-plot=importance] svg", timeout=120_000)
        page.wait_for_selector("[data-plot=parallel] svg[data-lines]")
        assert page.locator("[data-testid=trials-total]").inner_text() == "1–50 of 10004"
        total = sum(sizes.values())
        assert total < 1_000_000, sizes  # no multi-megabyte page
        assert int(page.get_attribute("[data-plot=curves] svg", "data-curves") or 0) <= 200
        assert not foreign, foreign  # nothing from another origin (no CDN)

        page.get_by_role("columnheader", name="Best value").click()  # ascending
        page.get_by_role("columnheader", name="Best value ▲").click()  # descending: the best first
        page.locator("th[aria-sort=descending]", has_text="Best value").wait_for()
        best = httpx.get(f"{url}/v1/studies/{sid}/best?k=1").json()["items"][0]
        page.locator(f"table.trials-table tbody tr:first-child[data-trial='{best['trial_id']}']").wait_for()


def test_refine_with_a_preview_then_extend_from_the_study_page(tmp_path: Path, page: Any) -> None:
    app = create_app(settings_for(tmp_path), jobs=FakeJobs())
    definition = SLOW | {"name": "coarse", "fixed": {"epochs": 9}, "budget": {"num_trials": 40, "max_concurrent_trials": 2}}
    parent = synthetic_study(app.state.ctx.store, definition, 40)
    with serve_in_thread(app) as url:
        page.goto(f"{url}/#/studies/{parent}")
        page.get_by_role("button", name="Refine…").click()
        page.get_by_label("top k").fill("3")
        page.get_by_label("trials", exact=True).fill("8")
        page.get_by_role("button", name="Preview the narrowed space").click()
        narrowed = page.locator("[data-testid=narrowed]")
        narrowed.wait_for()
        assert {"x", "y"} & set(narrowed.locator("tr th:first-child").all_inner_texts())
        screenshot(page, "refine")
        assert httpx.get(f"{url}/v1/studies").json()["total"] == 1  # a preview stores nothing
        page.get_by_role("button", name="Create the refined study").click()
        page.locator("[data-testid=parent]", has_text=parent).wait_for()
        child = page.url.rsplit("/", 1)[-1]
        assert child != parent and httpx.get(f"{url}/v1/studies/{child}").json()["parent_id"] == parent
        page.get_by_role("link", name=parent).click()
        page.locator("[data-testid=children] a", has_text="coarse-refine").wait_for()

        page.get_by_role("button", name="Extend…").click()
        page.get_by_label("more trials").fill("5")
        page.get_by_role("button", name="Extend", exact=True).click()
        page.locator(".study-head .badge.queued").wait_for()
        page.locator("[data-testid=counts]", has_text="/ 45").wait_for()
        assert httpx.get(f"{url}/v1/studies/{parent}").json()["definition"]["budget"]["num_trials"] == 45


def test_a_schedule_from_the_submit_page_then_pause_and_delete(tmp_path: Path, page: Any) -> None:
    app = create_app(settings_for(tmp_path), jobs=FakeJobs())
    with serve_in_thread(app) as url:
        page.goto(f"{url}/#/submit")
        page.locator("[data-testid=presets] li").first.wait_for()
        page.fill("#definition", "\n".join(f"{k}: {json.dumps(v)}" for k, v in (SLOW | {"name": "monthly"}).items()))
        page.get_by_label("every").fill("30d")
        page.get_by_role("button", name="Submit").click()
        card = page.locator("section[data-schedule]", has_text="monthly")
        card.wait_for()
        assert "every 30d" in card.inner_text()
        schedules = httpx.get(f"{url}/v1/schedules").json()
        assert [s["name"] for s in schedules] == ["monthly"] and schedules[0]["every_s"] == 30 * 86400
        page.locator("section[data-schedule] tbody tr").first.wait_for()  # its first run started (a queued study)
        card.get_by_role("button", name="Pause").click()
        card.locator(".badge.paused").wait_for()
        assert httpx.get(f"{url}/v1/schedules").json()[0]["paused"] is True
        screenshot(page, "schedules")
        card.get_by_role("button", name="Delete").click()
        page.get_by_text("No schedules.").wait_for()


def test_panda_mode_a_person_adjusts_a_running_trial_from_the_study_page(tmp_path: Path, page: Any) -> None:
    app = create_app(settings_for(tmp_path), jobs=FakeJobs())
    store = app.state.ctx.store
    panda = {"name": "babysit", "trainable": "mlp_bn_softmax", "dataset": {"name": "digits"}, "mode": "panda",
             "search_space": {"lr": {"type": "categorical", "choices": [0.05]}}, "budget": {"num_trials": 1, "max_concurrent_trials": 1}}
    with serve_in_thread(app) as url:
        sid = httpx.post(f"{url}/v1/studies", json=panda).json()["id"]
        store.studies.update(sid, status="running")
        store.trials.upsert(sid, "t1", config={"lr": 0.05}, state="running")
        page.goto(f"{url}/#/studies/{sid}")
        page.get_by_label("knob").select_option("dropout")
        page.get_by_label("new value").fill("1.5")
        page.get_by_role("button", name="Adjust").click()
        page.locator(".panda .error", has_text="dropout").wait_for()  # the field and its rule
        page.get_by_label("knob").select_option("lr")
        page.get_by_label("new value").fill("0.005")
        page.get_by_role("button", name="Adjust").click()
        row = page.locator("[data-testid=interventions] tbody tr", has_text="lr=0.005")
        row.wait_for()
        assert "pending" in row.inner_text()
        screenshot(page, "panda")
        store.adjustments.applied(sid, "t1", [httpx.get(f"{url}/v1/studies/{sid}/trials/t1").json()["interventions"][0]["id"]], 3)
        page.locator("[data-testid=interventions] tbody tr td:last-child", has_text="3").wait_for()  # live, from the event stream

        store.trials.upsert(sid, "t1", trial_dir="trial-dir")
        store.trials.add_epoch(sid, "t1", {"epoch": 1, "val_accuracy": 0.5, "checkpoint": "checkpoint_000000"}, "val_accuracy", "max")
        page.get_by_role("button", name="Fork from here").wait_for()  # live: the first epoch's event shows the fork form
        page.get_by_label("from epoch").fill("1")
        page.get_by_label("fork knob").select_option("lr")
        page.get_by_label("fork value").fill("0.01")
        page.get_by_role("button", name="Fork from here").click()
        page.locator("[data-testid=parent]", has_text=sid).wait_for()
        fork = httpx.get(f"{url}/v1/studies/{page.url.rsplit('/', 1)[-1]}").json()
        assert fork["definition"]["fork"] == {"study": sid, "trial": "t1", "epoch": 1, "checkpoint": "trial-dir/checkpoint_000000",
                                              "changes": {"lr": 0.01}}
        assert fork["definition"]["search_space"]["lr"] == {"type": "categorical", "choices": [0.01]}
        r = httpx.post(f"{url}/v1/studies", json={**panda, "fork": fork["definition"]["fork"]})  # nobody else may name a checkpoint
        assert r.status_code == 422 and r.json()["field"] == "fork"


def test_a_study_with_two_objectives_shows_its_pareto_front(tmp_path: Path, page: Any) -> None:
    app = create_app(settings_for(tmp_path), jobs=FakeJobs())
    definition = {"name": "acc-vs-size", "trainable": "mlp_bn_softmax", "dataset": {"name": "digits"}, "search_space": "seven_key",
                  "fixed": {"epochs": 9}, "objectives": [{"metric": "val_accuracy", "mode": "max"}, {"metric": "param_count", "mode": "min"}],
                  "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 3}}
    sid = synthetic_study(app.state.ctx.store, definition, 300, seed=5)
    single = synthetic_study(app.state.ctx.store, SLOW | {"name": "one"}, 20)
    with serve_in_thread(app) as url:
        want = httpx.get(f"{url}/v1/studies/{sid}/pareto").json()
        page.goto(f"{url}/#/studies/{sid}")
        plot = page.locator("[data-plot=pareto] svg")
        plot.wait_for()
        assert int(plot.get_attribute("data-front") or 0) == len(want["front"]) >= 3
        assert int(plot.get_attribute("data-points") or 0) == len(want["points"])
        drawn = sorted(plot.locator(".front circle").evaluate_all("cs => cs.map(c => c.dataset.trial)"))
        assert drawn == sorted(p["trial_id"] for p in want["front"])
        assert page.get_by_test_id("pareto-summary").inner_text().startswith(f"{len(want['front'])} on the front of {want['trials_considered']}")
        assert page.get_by_test_id("objectives").inner_text() == "max val_accuracy, min param_count"
        plot.scroll_into_view_if_needed()
        screenshot(page, "pareto")
        page.goto(f"{url}/#/studies/{single}")
        page.locator("[data-plot=curves] svg").wait_for()
        assert page.locator("[data-plot=pareto] svg").count() == 0  # one objective: no front card
