"""docker/: the image, the compose file, the KubeRay manifests and the start scripts, checked
statically (no Docker engine runs here and no base image can be pulled: docs/deploy.md says what
was and was not run). The scripts themselves run up to the point where they need a cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
BIN = Path(sys.executable).parent
RAY_SERVICES = ("ray-head", "ray-worker")


def test_the_dockerfile_passes_hadolint_and_builds_one_non_root_image_for_every_role() -> None:
    r = subprocess.run([str(BIN / "hadolint"), "--failure-threshold", "info", str(DOCKER / "Dockerfile")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    text = (DOCKER / "Dockerfile").read_text()
    assert "ARG VARIANT=cpu" in text and 'if [ "$VARIANT" = "gpu" ]' in text  # a CPU and a GPU variant
    assert "USER 10001:10001" in text and "HEALTHCHECK" in text
    assert "--constraint docker/constraints.txt" in text  # the versions CI tested
    for line in text.splitlines():  # what it copies exists
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert list(ROOT.glob(src)), f"COPY {src}: nothing there"
    assert "TOKEN=" not in text and "PASSWORD" not in text  # no secrets baked in


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return data


def test_the_compose_file_is_valid_and_publishes_only_the_api() -> None:
    r = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(DOCKER / "compose.yaml")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    services = compose()["services"]
    assert {"postgres", "ray-head", "ray-worker", "api", "optuna-dashboard"} <= set(services)
    assert [name for name, s in services.items() if s.get("ports")] == ["api"]
    for name in (*RAY_SERVICES, "api"):  # one shared data directory on every node and the API
        assert "caviar-data:/data" in services[name]["volumes"], name
        assert "ray_token" in services[name]["secrets"], name  # token auth everywhere, from a secret
        assert services[name]["image"] == "caviar:${CAVIAR_VARIANT:-cpu}"  # one image
    assert services["ray-head"]["command"] == ["/opt/caviar/docker/start-head.sh"]
    assert services["ray-worker"]["command"] == ["/opt/caviar/docker/start-worker.sh"]
    assert services["api"]["environment"]["RAY_ADDRESS"] == "http://ray-head:8265"
    assert compose()["networks"]["internal"]["internal"] is True  # Ray's ports never leave it
    assert set(services["ray-head"]["networks"]) == {"internal"}


def _documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DOCKER / "k8s" / name).read_text()) if d]


@pytest.mark.parametrize("name", ["api.yaml", "storage.yaml", "secret.example.yaml"])
def test_the_kubernetes_objects_validate_strictly(name: str) -> None:
    for doc in _documents(name):
        kubernetes_validate.validate(doc, "1.37.0", strict=True)


def test_the_raycluster_has_a_head_without_trials_and_autoscaled_cpu_and_gpu_workers() -> None:
    (cluster,) = _documents("raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    spec = cluster["spec"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0" and spec["enableInTreeAutoscaling"] is True
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    assert all(g["minReplicas"] <= g["replicas"] <= g["maxReplicas"] for g in groups.values())
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1" and gpu["image"].endswith("-gpu")
    # KubeRay's CRD is not among kubernetes-validate's schemas: each pod template is checked as a
    # core PodTemplate, and each carries the cluster's token from the Secret and the shared volume
    templates = [spec["headGroupSpec"]["template"], *(g["template"] for g in groups.values())]
    for template in templates:
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template},
                                     "1.37.0", strict=True)
        container = template["spec"]["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "caviar", "key": "ray-token"}
        assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
        assert template["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "caviar-data"


def _script(name: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "CAVIAR_"))}
    return subprocess.run(["sh", str(DOCKER / name)], capture_output=True, text=True, timeout=60, env={**clean, **env})


@pytest.mark.parametrize("name", ["start-head.sh", "start-worker.sh", "start-api.sh"])
def test_every_start_script_refuses_to_run_without_the_cluster_token(name: str, tmp_path: Path) -> None:
    r = _script(name, RAY_AUTH_TOKEN_FILE=str(tmp_path / "absent"))
    assert r.returncode == 2 and "no Ray token" in r.stderr, r.stderr


def test_the_worker_and_api_scripts_name_what_they_need(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t0k3n")
    r = _script("start-worker.sh", RAY_AUTH_TOKEN_FILE=str(token))
    assert r.returncode != 0 and "set RAY_HEAD" in r.stderr
    r = _script("start-api.sh", RAY_AUTH_TOKEN_FILE=str(token))
    assert r.returncode != 0 and "set RAY_ADDRESS" in r.stderr


def test_the_api_script_serves_the_api(tmp_path: Path) -> None:
    """What the image's default command runs, up to a served API (no Ray here: studies stay queued)."""
    import httpx

    from service.local import free_port, wait_until

    token = tmp_path / "token"
    token.write_text("t0k3n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "CAVIAR_"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", RAY_AUTH_TOKEN_FILE=str(token), CAVIAR_DATA_DIR=str(tmp_path),
               RAY_ADDRESS=f"http://127.0.0.1:{free_port()}", CAVIAR_HOST="127.0.0.1", CAVIAR_PORT=str(port))
    proc = subprocess.Popen(["sh", str(DOCKER / "start-api.sh")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def healthy() -> bool:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, 60, "the API started by docker/start-api.sh", interval=0.2)
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").json()["ray"] is False  # it reads RAY_ADDRESS, as told
    finally:
        proc.terminate()
        proc.wait(30)


def test_the_monitoring_profile_scrapes_the_api_with_a_token_and_provisions_the_dashboard() -> None:
    services = compose()["services"]
    prom, grafana = services["prometheus"], services["grafana"]
    assert prom["profiles"] == grafana["profiles"] == ["monitoring"] and not prom.get("ports") and not grafana.get("ports")
    config = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    job = config["scrape_configs"][0]
    assert job["static_configs"][0]["targets"] == ["api:8000"] and job["metrics_path"] == "/metrics"
    assert job["authorization"]["credentials_file"] == "/run/secrets/scrape_token" and "scrape_token" in prom["secrets"]
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prom["volumes"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    assert (DOCKER / mounts["./grafana/caviar-dashboard.json"].replace("/var/lib/grafana/dashboards", "grafana")).exists()
    provider = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/caviar.yaml").read_text())["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"  # where the dashboard JSON is mounted
    source = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yaml").read_text())["datasources"][0]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
