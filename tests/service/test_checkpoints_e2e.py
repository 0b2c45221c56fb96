"""Checkpoints in an object store, through the real stack: `caviar serve` with CAVIAR_STORAGE=s3://...
(an S3-compatible server, moto, over HTTP), the session's Ray head, real training. A trial whose
worker is killed resumes from the checkpoint it wrote to the bucket; `caviar best ID --download DIR`
saves the best trial's checkpoint and the model loaded from it reproduces the held-out test metric."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pyarrow.fs as pafs
import pytest
import torch

from service.local import LocalHead, LocalServer, wait_until
from tests.conftest import alive_trial_actors, s3_bucket

pytestmark = pytest.mark.ray
EPOCHS, TRIALS = 4, 2


def tune_epochs(fs: pafs.FileSystem, experiment: str) -> dict[str, list[int]]:
    """Each trial's reported epochs, in order, from Tune's result.json files in the bucket (appended
    across retries): a trial restarted from scratch shows epoch 1 twice."""
    out: dict[str, list[int]] = {}
    for info in fs.get_file_info(pafs.FileSelector(experiment, recursive=True)):
        if info.base_name == "result.json":
            with fs.open_input_stream(info.path) as f:
                rows = [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]
            if rows:
                out[rows[0]["trial_id"]] = [int(r["epoch"]) for r in rows]
    return out


def test_a_trial_resumes_from_its_checkpoint_in_the_object_store_and_the_best_one_downloads(
        ray_head: LocalHead, s3_endpoint: str, tmp_path: Path) -> None:
    bucket = s3_bucket(s3_endpoint)
    data = tmp_path / "data"
    api = LocalServer(data, ray_head, env={"CAVIAR_STORAGE": f"s3://{bucket}/caviar", "CAVIAR_STORAGE_ENDPOINT_URL": s3_endpoint}).start()
    try:
        client = api.client()
        sid = client.submit({
            "name": "s3", "trainable": "cnn_bn_softmax", "dataset": {"name": "mnist1d"},
            "search_space": {"lr": {"type": "float", "low": 3e-3, "high": 1e-2, "log": True}},
            "fixed": {"epochs": EPOCHS, "channels": 32, "batch_size": 16, "checkpoint_every": 1}, "scheduler": {"type": "none"},
            "budget": {"num_trials": TRIALS, "max_concurrent_trials": 2, "max_failures": 2},
        })["id"]
        # kill -9 a trial's worker once it has checkpointed twice: Tune retries it from the bucket
        wait_until(lambda: any(t["epochs"] >= 2 and t["state"] == "running" for t in client.trials(sid)), 240, "a trial at epoch 2")
        actors = alive_trial_actors(ray_head)
        assert actors, "no trial actor alive"
        psutil.Process(int(actors[0].pid)).send_signal(signal.SIGKILL)
        wait_until(lambda: any(t["retries"] >= 1 for t in client.trials(sid)), 120, "a retried trial")
        s = wait_until(lambda: (x := client.study(sid))["status"] in ("completed", "failed") and x, 300, "the study's end", interval=1)
        assert s["status"] == "completed", s["error"]

        trials = client.trials(sid)
        assert len(trials) == TRIALS and all(t["state"] == "completed" and t["epochs"] == EPOCHS for t in trials), trials
        assert sum(t["retries"] for t in trials) >= 1
        assert {t["device"] for t in trials} == {"cpu"}  # what each trial reported it trained on
        # everything Tune kept is in the bucket: checkpoints and its result logs; the retried trial
        # went on from its checkpoint (epoch 1 once), and nothing went to the local default
        fs = pafs.S3FileSystem(endpoint_override=s3_endpoint.split("://")[1], scheme="http")
        seen = tune_epochs(fs, f"{bucket}/caviar/{sid}")
        assert set(seen) == {t["trial_id"] for t in trials}
        for trial_id, epochs in seen.items():
            assert epochs.count(1) == 1 and epochs[-1] == EPOCHS, (trial_id, epochs)
        names = [i.base_name for i in fs.get_file_info(pafs.FileSelector(f"{bucket}/caviar/{sid}", recursive=True))]
        assert sum(n.startswith("checkpoint_") for n in names) >= TRIALS
        assert not (data / "ray_results" / sid).exists()

        # the best trial's checkpoint, downloaded by the CLI, loads and reproduces the held-out test metric
        out = tmp_path / "best"
        cli = subprocess.run([str(Path(sys.executable).parent / "caviar"), "--url", api.url, "best", sid, "--download", str(out)],
                             capture_output=True, text=True, timeout=120)
        assert cli.returncode == 0, cli.stderr
        best = client.best(sid, 1)
        assert f"saved the checkpoint of trial {best['items'][0]['trial_id']} in {out}" in cli.stderr
        manifest = json.loads((out / "caviar.json").read_text())
        assert manifest["trial_id"] == best["items"][0]["trial_id"] and manifest["trainable"] == "cnn_bn_softmax"

        from trainables.engine import load_data, load_model

        dataset = load_data(out)
        model = load_model(out, dataset)
        with torch.no_grad():
            predicted = model(torch.from_numpy(dataset.x_test)).argmax(1).numpy()
        accuracy = float((predicted == dataset.y_test).mean())
        assert accuracy == pytest.approx(best["test_metrics"]["test_accuracy"], abs=1e-9), (accuracy, best["test_metrics"])
    finally:
        api.stop()
