"""`caviar dashboard ID`: optuna-dashboard on a finished study's Optuna journal, read back through
optuna-dashboard's own HTTP API: every trial is there, ASHA-stopped ones as PRUNED."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest

from service.local import LocalServer, free_port, wait_until

CAVIAR = str(Path(sys.executable).parent / "caviar")
STUDY = {"name": "dash", "trainable": "busy_work", "dataset": {"name": "digits"},
         "search_space": {"x": {"type": "float", "low": 0, "high": 1}, "y": {"type": "float", "low": 0, "high": 1}},
         "fixed": {"epochs": 9, "seconds_per_epoch": 0.02},
         "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 3},
         "sampler": {"type": "random", "seed": 3},
         "budget": {"num_trials": 9, "max_concurrent_trials": 1}}


@pytest.mark.ray
def test_caviar_dashboard_serves_the_study_with_stopped_trials_as_pruned(api: LocalServer, caviar_data_dir: Path) -> None:
    with api.client() as client:
        sid = client.submit(STUDY)["id"]
        study = wait_until(lambda: (s := client.study(sid))["status"] in ("completed", "failed") and s, 300, "the study to finish", interval=1)
        assert study["status"] == "completed", study
        ours = Counter(t["state"] for t in client.trials(sid))
    assert ours["stopped_early"] >= 1, ours  # ASHA cut some: the point of the check

    missing = subprocess.run([CAVIAR, "dashboard", "nosuchstudy", "--data-dir", str(caviar_data_dir)], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "no Optuna journal for study 'nosuchstudy'" in missing.stderr

    port = free_port()
    proc = subprocess.Popen([CAVIAR, "dashboard", sid, "--port", str(port), "--data-dir", str(caviar_data_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ, start_new_session=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(f"optuna-dashboard for study {sid}: http://127.0.0.1:{port}/dashboard/studies/"), line
        number = int(line.rsplit("/", 1)[-1])
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{base}/api/meta", timeout=2).status_code == 200, 60, "optuna-dashboard", interval=0.2)
        studies = httpx.get(f"{base}/api/studies").json()["study_summaries"]
        assert any(s["study_id"] == number and s["study_name"] == f"caviar-{sid}" for s in studies)
        detail = httpx.get(f"{base}/api/studies/{number}").json()
        theirs = Counter(t["state"] for t in detail["trials"])
        assert theirs == Counter({"Complete": ours["completed"], "Pruned": ours["stopped_early"], "Fail": ours["failed"]}) - Counter(), (theirs, ours)
        assert httpx.get(f"{base}/dashboard/studies/{number}").status_code == 200  # the page itself
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
