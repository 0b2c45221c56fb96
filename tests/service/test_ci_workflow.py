"""examples/github-actions.yml, its steps' scripts run as GitHub's runner would run them, against
the session's real `caviar serve` (the CAVIAR_URL-secret path): the study is keyed by the commit
SHA, the summary lands in $GITHUB_STEP_SUMMARY, the JUnit file is written, a re-run follows the same
study, and a missed threshold fails the step."""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
import yaml

from service.local import LocalServer

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / "examples" / "github-actions.yml"


def run_steps(env: dict[str, str], cwd: Path) -> list[subprocess.CompletedProcess[str]]:
    """Each `run:` step with bash -e, as the runner does ($GITHUB_ENV lines carried to later steps);
    `uses:` steps are GitHub's own, and `make setup` has run already (this is the repository's venv)."""
    workflow = yaml.safe_load(WORKFLOW.read_text())
    job = workflow["jobs"]["tune"]
    done = []
    for step in job["steps"]:
        if "run" not in step or step["run"].strip() == "make setup":
            continue
        extra = dict(line.split("=", 1) for line in Path(env["GITHUB_ENV"]).read_text().splitlines() if "=" in line)
        r = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=cwd, env={**env, **extra}, capture_output=True, text=True, timeout=600)
        done.append(r)
        if r.returncode != 0:
            break
    return done


def test_the_github_actions_workflow_runs_a_study_keyed_by_the_commit(api: LocalServer, tmp_path: Path) -> None:
    job_env = yaml.safe_load(WORKFLOW.read_text())["jobs"]["tune"]["env"]
    assert set(job_env) == {"CAVIAR_URL", "CAVIAR_TOKEN", "STUDY", "THRESHOLD"} and (ROOT / job_env["STUDY"]).is_file()
    study = tmp_path / "tiny.yaml"  # the workflow's STUDY, smaller
    study.write_text(yaml.safe_dump({
        "name": "ci-tiny", "trainable": "mlp_bn_softmax", "dataset": {"name": "digits"},
        "search_space": {"lr": {"type": "float", "low": 0.01, "high": 0.05, "log": True}},
        "fixed": {"epochs": 3}, "scheduler": {"type": "none"}, "budget": {"num_trials": 2, "max_concurrent_trials": 2},
    }))
    work = tmp_path / "runner"
    work.mkdir()
    (work / ".venv").symlink_to(ROOT / ".venv")
    sha = secrets.token_hex(20)

    def env(threshold: str) -> dict[str, Any]:
        (work / "env").write_text("")
        return {**os.environ, "CAVIAR_URL": api.url, "CAVIAR_TOKEN": "", "STUDY": str(study), "THRESHOLD": threshold,
                "GITHUB_SHA": sha, "GITHUB_ENV": str(work / "env"), "GITHUB_STEP_SUMMARY": str(work / "summary.md")}

    steps = run_steps(env("val_accuracy=0.5"), work)
    assert [r.returncode for r in steps] == [0, 0], [r.stderr for r in steps]
    study_id = steps[-1].stdout.split()[1]
    assert api.client().study(study_id)["status"] == "completed"
    summary = (work / "summary.md").read_text()
    assert summary.startswith("## ✅ Caviar study `ci-tiny`: completed") and f"`{study_id}`" in summary
    suite = ElementTree.parse(work / "caviar-junit.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "0"

    # the job re-run for the same commit follows the same study (no second one); a stricter
    # threshold fails the step with exit 1 and says so in the summary
    before = api.client().studies(limit=200)["total"]
    again = run_steps(env("val_accuracy=1.01"), work)
    assert again[-1].returncode == 1 and again[-1].stdout.split()[1] == study_id
    assert "misses the threshold" in again[-1].stderr
    assert api.client().studies(limit=200)["total"] == before
    assert "| val_accuracy >= 1.01 | ❌ fail |" in (work / "summary.md").read_text()
