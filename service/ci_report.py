"""What `caviar submit --wait` leaves for CI: plain progress lines, a Markdown summary (for
``$GITHUB_STEP_SUMMARY``), a JUnit XML file (one test case per check). Pure functions of the API's
JSON, so the CLI stays commands only and these are tested without a server."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Check:
    """One thing CI asserts about a study: its name, whether it held, and what was measured."""

    name: str
    passed: bool
    detail: str


def _num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def pairs(d: dict[str, Any] | None, skip: tuple[str, ...] = ()) -> str:
    """``lr=0.01235, depth=3``: a mapping as a person reads it (floats to 4 significant digits); the CLI's tables use it too."""
    return ", ".join(f"{k}={_num(v)}" for k, v in (d or {}).items() if k not in skip)


def progress_line(study: dict[str, Any]) -> str:
    """One plain line for a CI log: ``study 3f2a (digits-quick) running: 5/12 trials done (2 completed,
    3 stopped early, 0 failed), 2 running, best val_accuracy 0.9412``."""
    c = study["trial_counts"]
    total = study["definition"]["budget"]["num_trials"]
    done = c["completed"] + c["stopped_early"] + c["failed"]
    best = study.get("best")
    metric = study["definition"]["objective"]["metric"]
    tail = f", best {metric} {best['value']:.4f}" if best else ""
    return (f"study {study['id']} ({study['name']}) {study['status']}: {done}/{total} trials done ({c['completed']} completed, "
            f"{c['stopped_early']} stopped early, {c['failed']} failed), {c['running']} running{tail}")


def threshold_check(best: dict[str, Any], metric: str, value: float) -> Check:
    """``--fail-under METRIC=VALUE``: the best trial's METRIC at least VALUE (at most, for the
    objective of a ``min`` study)."""
    top = best["items"][0] if best["items"] else None
    objective = best["objective"]
    got = None if top is None else (top["value"] if metric == objective["metric"] else (top["metrics"] or {}).get(metric))
    minimize = objective["mode"] == "min" and metric == objective["metric"]
    name = f"{metric} {'<=' if minimize else '>='} {value:g}"
    if not isinstance(got, (int, float)):
        return Check(name, False, f"the best trial has no metric '{metric}'")
    passed = got <= value if minimize else got >= value
    return Check(name, passed, f"{metric} = {got:.4f}" + ("" if passed else f" misses the threshold {value:g}"))


def regression_check(best: dict[str, Any], baseline: dict[str, Any], baseline_id: str, max_regression: float) -> Check:
    """``--baseline ID --max-regression X``: the new best objective is no worse than the baseline
    study's best by more than X (in the objective's units)."""
    objective = best["objective"]
    name = f"{objective['metric']} within {max_regression:g} of baseline {baseline_id}"
    if baseline["objective"]["metric"] != objective["metric"] or baseline["objective"]["mode"] != objective["mode"]:
        return Check(name, False, f"baseline {baseline_id} optimizes {baseline['objective']['mode']} {baseline['objective']['metric']}, "
                                  f"not {objective['mode']} {objective['metric']}")
    if not baseline["items"]:
        return Check(name, False, f"baseline {baseline_id} has no measured trial")
    if not best["items"]:
        return Check(name, False, "this study has no measured trial")
    new, old = float(best["items"][0]["value"]), float(baseline["items"][0]["value"])
    worse_by = (old - new) if objective["mode"] == "max" else (new - old)
    passed = worse_by <= max_regression
    verdict = "better or equal" if worse_by <= 0 else f"worse by {worse_by:.4f}"
    return Check(name, passed, f"{new:.4f} against {old:.4f}: {verdict}" + ("" if passed else f" (more than {max_regression:g})"))


def markdown(study: dict[str, Any], best: dict[str, Any] | None, checks: list[Check], api_url: str) -> str:
    """A summary fit for ``$GITHUB_STEP_SUMMARY``."""
    c = study["trial_counts"]
    total = sum(c.values())
    icon = {"completed": "✅", "failed": "❌", "cancelled": "⏹️"}.get(study["status"], "⏳")
    lines = [f"## {icon} Caviar study `{study['name']}`: {study['status']}", "", "| | |", "|---|---|",
             f"| study | `{study['id']}` ({api_url}/v1/studies/{study['id']}) |"]
    objective = study["definition"]["objective"]
    top = best["items"][0] if best and best["items"] else None
    if top:
        lines.append(f"| best {objective['metric']} ({objective['mode']}) | **{top['value']:.4f}** (trial `{top['trial_id']}`) |")
        lines.append(f"| configuration | `{pairs(top['config'])}` |")
    if best and best.get("test_metrics"):
        lines.append(f"| held-out test | {pairs(best['test_metrics'])} |")
    lines.append(f"| trials | {total}: {c['completed']} completed, {c['stopped_early']} stopped early, {c['failed']} failed, "
                 f"{c['running']} running, {c['pending']} pending |")
    if study.get("error"):
        lines.append(f"| error | {study['error'].replace('|', '/')} |")
    if study.get("dashboard_url"):
        lines.append(f"| Ray dashboard | {study['dashboard_url']} |")
    if checks:
        lines += ["", "| check | result | measured |", "|---|---|---|"]
        lines += [f"| {ch.name} | {'✅ pass' if ch.passed else '❌ fail'} | {ch.detail} |" for ch in checks]
    return "\n".join(lines) + "\n"


def junit(study: dict[str, Any], checks: list[Check], seconds: float) -> str:
    """JUnit XML: a suite named after the study, one test case per check (the first: the study completed)."""
    root = ET.Element("testsuites")
    suite = ET.SubElement(root, "testsuite", name=f"caviar.{study['name']}", tests=str(len(checks)),
                       failures=str(sum(not ch.passed for ch in checks)), time=f"{seconds:.1f}")
    for ch in checks:
        case = ET.SubElement(suite, "testcase", classname=f"caviar.{study['name']}", name=ch.name, time="0")
        if ch.passed:
            ET.SubElement(case, "system-out").text = ch.detail
        else:
            ET.SubElement(case, "failure", message=ch.detail).text = ch.detail
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
