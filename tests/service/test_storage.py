"""The study storage (service.storage): a local path or an S3-compatible object store (moto's
server over HTTP), the newest checkpoint of a trial, the download archive; the setting's checks;
the download endpoint through the in-process API."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import httpx
import pyarrow.fs as pafs
import pytest

from service.api.app import create_app
from service.settings import Settings, load_settings
from service.storage import MANIFEST, Storage, open_storage
from tests.conftest import s3_bucket
from tests.service.fakes import GOOD, FakeJobs, serve_in_thread, settings_for


def put(storage: Storage, path: str, data: bytes) -> None:
    storage.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with storage.fs.open_output_stream(path) as out:
        out.write(data)


def checkpoints(storage: Storage, study: str = "s1", trial: str = "train_abc_00000") -> str:
    base = f"{storage.experiment(study)}/{trial}"
    for n in (3, 11, 7):  # Tune's names sort by number; 11 is the newest
        put(storage, f"{base}/checkpoint_{n:06d}/state.pt", f"state {n}".encode())
    put(storage, f"{base}/checkpoint_000011/nested/extra.bin", b"\x00\x01")
    put(storage, f"{base}/result.json", b"{}")
    return base


def members(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def check_newest_and_archive(storage: Storage) -> None:
    base = checkpoints(storage)
    newest = storage.latest_checkpoint("s1", "train_abc_00000")
    assert newest == f"{base}/checkpoint_000011"
    assert storage.latest_checkpoint("s1", "no_such_trial") is None
    assert storage.latest_checkpoint("no_such_study", "train_abc_00000") is None
    with storage.checkpoint_archive(newest, {"trainable": "x"}) as f:
        got = members(f.read())
    assert got == {"state.pt": b"state 11", "nested/extra.bin": b"\x00\x01", MANIFEST: json.dumps({"trainable": "x"}, indent=2).encode()}


def test_local_storage_default_and_explicit_path(tmp_path: Path) -> None:
    default = open_storage(Settings(data_dir=tmp_path))
    assert default.local and default.root == str(tmp_path / "ray_results") and (tmp_path / "ray_results").is_dir()
    assert default.tune_args() == {"storage_path": str(tmp_path / "ray_results")}
    shared = open_storage(Settings(data_dir=tmp_path, storage=str(tmp_path / "nfs" / "caviar")))
    assert shared.root == str(tmp_path / "nfs" / "caviar")
    check_newest_and_archive(shared)


def test_object_store_storage_on_an_s3_compatible_server(tmp_path: Path, s3_endpoint: str) -> None:
    bucket = s3_bucket(s3_endpoint)
    storage = open_storage(Settings(data_dir=tmp_path, storage=f"s3://{bucket}/studies/", storage_endpoint_url=s3_endpoint))
    assert not storage.local and storage.root == f"{bucket}/studies" and storage.uri == f"s3://{bucket}/studies"
    assert storage.tune_args()["storage_filesystem"] is storage.fs
    check_newest_and_archive(storage)
    # the objects are in the bucket, seen by another client of the same server
    other = pafs.S3FileSystem(endpoint_override=s3_endpoint.split("://")[1], scheme="http")
    assert other.get_file_info(f"{bucket}/studies/s1/train_abc_00000/checkpoint_000011/state.pt").size == len(b"state 11")
    assert not (tmp_path / "ray_results").exists()  # nothing went to the local default


@pytest.mark.parametrize(("values", "variable", "rule"), [
    ({"CAVIAR_STORAGE": "gs://bucket/x"}, "CAVIAR_STORAGE", "a path or s3://bucket/prefix"),
    ({"CAVIAR_STORAGE": "s3://"}, "CAVIAR_STORAGE", "needs a bucket"),
    ({"CAVIAR_STORAGE_ENDPOINT_URL": "minio:9000"}, "CAVIAR_STORAGE_ENDPOINT_URL", "http:// or https://"),
])
def test_a_bad_storage_setting_is_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch, values: dict[str, str],
                                                               variable: str, rule: str) -> None:
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit) as exc:
        load_settings()
    assert str(exc.value).startswith(f"caviar: {variable}: ") and rule in str(exc.value) and "\n" not in str(exc.value)


def test_relative_storage_path_is_resolved_and_reaches_the_driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.jobs import driver_env

    monkeypatch.chdir(tmp_path)
    s = Settings(data_dir=tmp_path, storage="shared/runs", storage_endpoint_url="")
    assert s.storage == str(tmp_path / "shared" / "runs")
    env = driver_env(s)
    assert env["CAVIAR_STORAGE"] == s.storage and "CAVIAR_STORAGE_ENDPOINT_URL" not in env
    s3 = Settings(data_dir=tmp_path, storage="s3://b/p", storage_endpoint_url="http://minio:9000/")
    env = driver_env(s3)
    assert env["CAVIAR_STORAGE"] == "s3://b/p" and env["CAVIAR_STORAGE_ENDPOINT_URL"] == "http://minio:9000"
    assert not any(k.startswith("AWS_") for k in env)  # credentials are the nodes' own, never in the job


def test_checkpoint_download_endpoint(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path), jobs=FakeJobs())
    ctx = app.state.ctx  # the app's own store: one SQLite connection pool in this process
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as client:
        sid = client.post("/v1/studies", json=GOOD).json()["id"]
        ctx.store.trials.upsert(sid, "t1", config={"lr": 0.01, "epochs": 3}, state="completed", trial_dir="train_t1_00000")
        ctx.store.trials.add_epoch(sid, "t1", {"epoch": 3, "val_accuracy": 0.9}, "val_accuracy", "max")
        ctx.store.trials.upsert(sid, "t2", config={"lr": 0.02}, state="running", trial_dir="train_t2_00001")

        r = client.get(f"/v1/studies/{sid}/trials/t2/checkpoint")  # started, nothing saved yet
        assert r.status_code == 404 and "no checkpoint" in r.json()["detail"]
        assert client.get(f"/v1/studies/{sid}/trials/nope/checkpoint").status_code == 404
        assert client.get("/v1/studies/nope/trials/t1/checkpoint").status_code == 404

        checkpoints(open_storage(ctx.settings), sid, "train_t1_00000")
        r = client.get(f"/v1/studies/{sid}/trials/t1/checkpoint")
        assert r.status_code == 200 and r.headers["content-type"] == "application/gzip"
        assert f'filename="{sid}-t1-checkpoint_000011.tar.gz"' in r.headers["content-disposition"]
        got = members(r.content)
        assert got["state.pt"] == b"state 11"
        manifest = json.loads(got[MANIFEST])
        assert manifest["trainable"] == GOOD["trainable"] and manifest["trial_id"] == "t1" and manifest["study_id"] == sid
        assert manifest["config"]["lr"] == 0.01 and manifest["config"]["dataset"]["name"] == GOOD["dataset"]["name"]
        assert manifest["metrics"]["val_accuracy"] == 0.9 and manifest["checkpoint"] == "checkpoint_000011"


def test_the_driver_niceness_reaches_the_driver_and_lowers_its_priority(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from service.jobs import driver_env

    assert driver_env(Settings(data_dir=tmp_path))["CAVIAR_DRIVER_NICE"] == "0"
    assert driver_env(Settings(data_dir=tmp_path, driver_nice=5))["CAVIAR_DRIVER_NICE"] == "5"
    code = "import os; from service.runner import lower_priority; before = os.nice(0); lower_priority(5); print(os.nice(0) - before)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ})
    assert out.stdout.strip() == "5"


def test_reporting_ahead_reaches_the_driver_and_the_trial_process(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from service.jobs import driver_env

    assert driver_env(Settings(data_dir=tmp_path))["CAVIAR_REPORT_AHEAD"] == "true"
    assert driver_env(Settings(data_dir=tmp_path, report_ahead=False))["CAVIAR_REPORT_AHEAD"] == "false"
    # in a fresh process: a trial run as Caviar's runner runs it may report ahead, the value passes through
    code = """
from service.runner import as_trial
from trainables.report import _AHEAD
def train(config):
    return dict(config, allowed=_AHEAD["allowed"])
print(_AHEAD["allowed"], as_trial(train, ahead=True)({"x": 1}), as_trial(train, ahead=False)({"x": 2}), train.__name__)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ})
    assert out.stdout.split() == ["False", "{'x':", "1,", "'allowed':", "True}", "{'x':", "2,", "'allowed':", "False}", "train"]
