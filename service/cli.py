"""The `caviar` command line: serve, submit (and wait), status, trials, best, cancel, catalog."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(help="Caviar: caviar-mode hyperparameter tuning as a service.", no_args_is_help=True, add_completion=False)
console = Console()
err = Console(stderr=True)

UrlOpt = Annotated[str, typer.Option("--url", envvar="CAVIAR_URL", help="The Caviar server.")]
DEFAULT_URL = "http://127.0.0.1:8000"


def _fail(message: str, code: int = 2) -> None:
    err.print(f"error: {message}", markup=False, highlight=False)
    raise typer.Exit(code)


def _request(method: str, url: str, **kw: Any) -> Any:
    try:
        r = httpx.request(method, url, timeout=30, **kw)
    except httpx.HTTPError as exc:
        _fail(f"cannot reach Caviar at {url}: {exc}")
    if r.status_code >= 400:
        try:
            body = r.json()
            _fail(body.get("detail") or body.get("title") or r.text)
        except ValueError:
            _fail(f"HTTP {r.status_code}: {r.text[:200]}")
    return r.json()


# -- serve ---------------------------------------------------------------------------------------


def _ray_up(address: str) -> bool:
    try:
        from service.ray_adapter import RayJobs

        return RayJobs(address).ping()
    except Exception:
        return False


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Bind address of the API. Anything but loopback exposes it.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="API port.")] = 8000,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", envvar="CAVIAR_DATA_DIR", help="SQLite file, Ray results, datasets/.")] = None,
    ray_address: Annotated[str | None, typer.Option("--ray-address", envvar="RAY_ADDRESS", help="Ray dashboard/Jobs address of an existing cluster, e.g. http://127.0.0.1:8265.")] = None,
    dashboard_port: Annotated[int, typer.Option(help="Dashboard port of the local Ray head Caviar starts.")] = 8265,
    ray_port: Annotated[int, typer.Option(help="GCS port of the local Ray head (not Ray's 6379, which Redis often holds).")] = 6390,
) -> None:
    """Start the API; without --ray-address, start (or reuse) a local Ray head bound to 127.0.0.1."""
    import uvicorn

    if data_dir:
        os.environ["CAVIAR_DATA_DIR"] = str(data_dir.expanduser().resolve())
    if ray_address is None:
        ray_address = f"http://127.0.0.1:{dashboard_port}"
        if not _ray_up(ray_address):
            ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
            console.print(f"starting a local Ray head (dashboard {ray_address})")
            # loopback only: whoever reaches Ray's ports can run code on it
            subprocess.run(
                [ray_bin, "start", "--head", f"--port={ray_port}", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
                 f"--dashboard-port={dashboard_port}", "--include-dashboard=true", "--disable-usage-stats"],
                check=True,
            )
            for _ in range(60):
                if _ray_up(ray_address):
                    break
                time.sleep(1)
        else:
            console.print(f"reusing the Ray head at {ray_address}")
    os.environ["RAY_ADDRESS"] = ray_address
    from service.app import create_app

    uvicorn.run(create_app(), host=host, port=port, log_level="info")


# -- studies -------------------------------------------------------------------------------------


def _parse_threshold(value: str | None) -> tuple[str, float] | None:
    if value is None:
        return None
    metric, sep, number = value.partition("=")
    try:
        if not sep or not metric:
            raise ValueError
        return metric.strip(), float(number)
    except ValueError:
        _fail(f"--fail-under: expected METRIC=VALUE, e.g. val_accuracy=0.95, got '{value}'")
    return None


def _wait(url: str, study: dict[str, Any]) -> dict[str, Any]:
    total = study["definition"]["budget"]["num_trials"]
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} trials"),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console, transient=False) as bar:
        task = bar.add_task(study["name"], total=total, info="queued")
        while True:
            study = _request("GET", f"{url}/v1/studies/{study['id']}")
            c = study["trial_counts"]
            done = c["completed"] + c["stopped_early"] + c["failed"]
            best = study["best"]["value"] if study["best"] else None
            info = f"{c['running']} running, {c['stopped_early']} stopped early, {c['failed']} failed" + (f", best {best:.4f}" if best is not None else "")
            bar.update(task, completed=done, info=f"{study['status']}: {info}")
            if study["status"] in ("completed", "failed", "cancelled"):
                return study
            time.sleep(1.0)


@app.command()
def submit(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Study definition (YAML or JSON).")],
    url: UrlOpt = DEFAULT_URL,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the study until it ends, with a progress bar.")] = False,
    fail_under: Annotated[str | None, typer.Option("--fail-under", help="With --wait: exit 1 unless best METRIC >= VALUE (<= for min objectives).")] = None,
) -> None:
    """Submit a study. Exit codes with --wait: 0 success, 1 threshold missed, 2 study failed or cancelled."""
    threshold = _parse_threshold(fail_under)
    if threshold and not wait:
        _fail("--fail-under needs --wait")
    text = file.read_text()
    study = _request("POST", f"{url}/v1/studies", content=text.encode(), headers={"Content-Type": "application/yaml"})
    console.print(f"study {study['id']} {study['status']}")
    if not wait:
        return
    study = _wait(url, study)
    if study["status"] != "completed":
        _fail(f"study {study['id']} {study['status']}" + (f": {study['error']}" if study.get("error") else ""), 2)
    best = _request("GET", f"{url}/v1/studies/{study['id']}/best", params={"k": 1})
    if not best["items"]:
        _fail(f"study {study['id']} completed without a measured trial", 2)
    top = best["items"][0]
    console.print(f"best trial {top['trial_id']}: {best['objective']['metric']} = {top['value']:.4f}")
    console.print_json(json.dumps(top["config"]))
    if best.get("test_metrics"):
        console.print(f"held-out test: {best['test_metrics']}")
    if threshold:
        metric, value = threshold
        got = (top["metrics"] or {}).get(metric) if metric != best["objective"]["metric"] else top["value"]
        if not isinstance(got, (int, float)):
            _fail(f"--fail-under: the best trial has no metric '{metric}'", 2)
            return
        minimize = best["objective"]["mode"] == "min" and metric == best["objective"]["metric"]
        missed = got > value if minimize else got < value
        if missed:
            _fail(f"{metric} = {got:.4f} misses the threshold {value}", 1)


@app.command()
def status(study_id: str, url: UrlOpt = DEFAULT_URL) -> None:
    """A study's status, trial counts and best so far."""
    s = _request("GET", f"{url}/v1/studies/{study_id}")
    console.print(yaml.safe_dump({k: s[k] for k in ("id", "name", "status", "trial_counts", "best", "ray_job_id", "dashboard_url", "error")}, sort_keys=False))


@app.command()
def trials(study_id: str, url: UrlOpt = DEFAULT_URL) -> None:
    """The study's trials."""
    rows = _request("GET", f"{url}/v1/studies/{study_id}/trials")
    table = Table("trial", "state", "epochs", "best", "config")
    for t in rows:
        table.add_row(t["trial_id"], t["state"], str(t["epochs"]), f"{t['best_value']:.4f}" if t["best_value"] is not None else "-", json.dumps(t["config"])[:80])
    console.print(table)


@app.command()
def best(study_id: str, k: int = 5, url: UrlOpt = DEFAULT_URL) -> None:
    """Top-k configurations, best first."""
    console.print_json(json.dumps(_request("GET", f"{url}/v1/studies/{study_id}/best", params={"k": k})))


@app.command()
def cancel(study_id: str, url: UrlOpt = DEFAULT_URL) -> None:
    """Cancel a queued or running study."""
    s = _request("POST", f"{url}/v1/studies/{study_id}/cancel")
    console.print(f"study {s['id']} {s['status']}")


@app.command("trainables")
def list_trainables_cmd(url: UrlOpt = DEFAULT_URL) -> None:
    """Registered trainables."""
    for t in _request("GET", f"{url}/v1/trainables"):
        console.print(f"[bold]{t['name']}[/bold]  {t['description']}")


@app.command()
def spaces(url: UrlOpt = DEFAULT_URL) -> None:
    """Search-space presets."""
    for s in _request("GET", f"{url}/v1/search-spaces"):
        console.print(f"[bold]{s['name']}[/bold]  {', '.join(s['parameters'])}")


if __name__ == "__main__":
    app()
