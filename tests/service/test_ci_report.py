"""The CI outputs of `caviar submit --wait` (service.ci_report), from the API's JSON: progress
lines, thresholds, the regression check against a baseline, Markdown and JUnit."""

from __future__ import annotations

from typing import Any
from xml.etree import ElementTree

import pytest

from service.ci_report import Check, junit, markdown, progress_line, regression_check, threshold_check


def study(status: str = "running", best: float | None = 0.91, mode: str = "max") -> dict[str, Any]:
    return {
        "id": "abc123", "name": "digits-quick", "status": status, "error": None, "dashboard_url": "http://ray:8265/#/jobs/x",
        "trial_counts": {"pending": 1, "running": 2, "completed": 3, "stopped_early": 5, "failed": 1},
        "best": None if best is None else {"trial_id": "t1", "value": best},
        "definition": {"budget": {"num_trials": 12}, "objective": {"metric": "val_accuracy", "mode": mode}},
    }


def best(value: float | None, mode: str = "max", metric: str = "val_accuracy", **metrics: float) -> dict[str, Any]:
    items = [] if value is None else [{"trial_id": "t1", "value": value, "config": {"lr": 0.0123456, "depth": 3},
                                       "metrics": {metric: value, **metrics}}]
    return {"objective": {"metric": metric, "mode": mode}, "items": items, "test_metrics": {"test_accuracy": 0.9}}


def test_a_progress_line_is_whole_and_names_the_counts_and_best() -> None:
    assert progress_line(study()) == ("study abc123 (digits-quick) running: 9/12 trials done (3 completed, 5 stopped early, 1 failed), "
                                      "2 running, best val_accuracy 0.9100")
    assert progress_line(study("queued", None)).endswith("2 running")


@pytest.mark.parametrize(("mode", "metric", "value", "threshold", "passed"), [
    ("max", "val_accuracy", 0.91, 0.9, True), ("max", "val_accuracy", 0.89, 0.9, False),
    ("min", "val_loss", 0.2, 0.3, True), ("min", "val_loss", 0.4, 0.3, False),
])
def test_thresholds_follow_the_objective_direction(mode: str, metric: str, value: float, threshold: float, passed: bool) -> None:
    got = threshold_check(best(value, mode, metric), metric, threshold)
    assert got.passed is passed and got.name == f"{metric} {'<=' if mode == 'min' else '>='} {threshold:g}"
    assert ("misses the threshold" in got.detail) is not passed


def test_a_threshold_on_another_metric_reads_the_best_trials_metrics() -> None:
    assert threshold_check(best(0.9, val_f1=0.7), "val_f1", 0.6).passed
    assert not threshold_check(best(0.9, val_f1=0.7), "val_f1", 0.8).passed
    missing = threshold_check(best(0.9), "val_f1", 0.5)
    assert not missing.passed and "no metric 'val_f1'" in missing.detail


@pytest.mark.parametrize(("mode", "new", "old", "allowed", "passed"), [
    ("max", 0.90, 0.92, 0.03, True), ("max", 0.88, 0.92, 0.03, False), ("max", 0.95, 0.92, 0.0, True),
    ("min", 0.30, 0.28, 0.03, True), ("min", 0.35, 0.28, 0.03, False), ("min", 0.20, 0.28, 0.0, True),
])
def test_regression_against_a_baseline(mode: str, new: float, old: float, allowed: float, passed: bool) -> None:
    metric = "val_accuracy" if mode == "max" else "val_loss"
    got = regression_check(best(new, mode, metric), best(old, mode, metric), "base1", allowed)
    assert got.passed is passed, got
    assert got.name == f"{metric} within {allowed:g} of baseline base1"


def test_a_baseline_that_optimizes_something_else_or_measured_nothing_fails_the_check() -> None:
    assert "not max val_accuracy" in regression_check(best(0.9), best(0.1, "min", "val_loss"), "b", 1).detail
    assert "no measured trial" in regression_check(best(0.9), best(None), "b", 1).detail
    assert not regression_check(best(None), best(0.9), "b", 1).passed


def test_markdown_and_junit() -> None:
    checks = [Check("study completed", True, "completed"), Check("val_accuracy >= 0.95", False, "val_accuracy = 0.9100 misses the threshold 0.95")]
    md = markdown(study("completed"), best(0.91), checks, "http://caviar:8000")
    assert md.startswith("## ✅ Caviar study `digits-quick`: completed\n")
    assert "| best val_accuracy (max) | **0.9100** (trial `t1`) |" in md and "`lr=0.01235, depth=3`" in md
    assert "| trials | 12: 3 completed, 5 stopped early, 1 failed, 2 running, 1 pending |" in md
    assert "| val_accuracy >= 0.95 | ❌ fail | val_accuracy = 0.9100 misses the threshold 0.95 |" in md
    assert "http://caviar:8000/v1/studies/abc123" in md and "http://ray:8265/#/jobs/x" in md
    failed = markdown({**study("failed"), "error": "all 2 trials failed | boom"}, best(None), [], "u")
    assert failed.startswith("## ❌") and "all 2 trials failed / boom" in failed
    root = ElementTree.fromstring(junit(study("completed"), checks, 12.34))
    suite = root.find("testsuite")
    assert suite is not None and (suite.get("name"), suite.get("tests"), suite.get("failures"), suite.get("time")) == ("caviar.digits-quick", "2", "1", "12.3")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["study completed", "val_accuracy >= 0.95"]
    assert cases[0].find("failure") is None and cases[1].find("failure").get("message").endswith("threshold 0.95")  # type: ignore[union-attr]
