"""The `caviar` command line: serve, submit (and wait), status, trials, best, cancel, catalog."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import httpx
import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(help="Caviar: caviar-mode hyperparameter tuning as a service.", no_args_is_help=True, add_completion=False)
token_app = typer.Typer(help="API tokens (run on the server's host: they are written to its database).", no_args_is_help=True)
app.add_typer(token_app, name="token")
console = Console()
err = Console(stderr=True)
_auth: dict[str, str] = {}


@app.callback()
def main(
    token: Annotated[str | None, typer.Option("--token", envvar="CAVIAR_TOKEN", help="API token (needed when the server is not on loopback).")] = None,
) -> None:
    if token:
        _auth["Authorization"] = f"Bearer {token}"

UrlOpt = Annotated[str, typer.Option("--url", envvar="CAVIAR_URL", help="The Caviar server.")]
DEFAULT_URL = "http://127.0.0.1:8000"


def _fail(message: str, code: int = 2) -> None:
    err.print(f"error: {message}", markup=False, highlight=False)
    raise typer.Exit(code)


def _request(method: str, url: str, **kw: Any) -> Any:
    headers = {**_auth, **kw.pop("headers", {})}
    for attempt in range(6):
        try:
            r = httpx.request(method, url, timeout=30, headers=headers, **kw)
        except httpx.HTTPError as exc:
            _fail(f"cannot reach Caviar at {url}: {exc}")
        # 503 (store busy) and 409 for an Idempotency-Key still in flight are safe to retry
        retry = r.status_code == 503 or (r.status_code == 409 and "Idempotency-Key" in headers)
        if not retry or attempt == 5:
            break
        time.sleep(min(float(r.headers.get("Retry-After", "1")), 10.0))
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


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _run_server(app_obj: Any, host: str, port: int, drain_s: float) -> None:
    """uvicorn with a graceful SIGTERM: /readyz turns 503 (draining) at once, the server stops
    accepting ``drain_s`` later, in-flight requests get up to 20 s, then the process exits 0.
    Running studies are Ray jobs: they keep running. A second signal exits at once."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if getattr(app_obj.state, "draining", False) or sig == signal.SIGINT:
                self.should_exit = True
                self.force_exit = self.force_exit or getattr(app_obj.state, "draining", False)
                return
            app_obj.state.draining = True
            print(f"caviar: {signal.Signals(sig).name}: draining for {drain_s:g} s, then stopping", file=sys.stderr, flush=True)
            threading.Timer(drain_s, lambda: setattr(self, "should_exit", True)).start()

    config = uvicorn.Config(app_obj, host=host, port=port, log_level="info", timeout_graceful_shutdown=20)
    DrainingServer(config).run()


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Bind address of the API. Anything but loopback needs API tokens (see `caviar token`).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="API port.")] = 8000,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", envvar="CAVIAR_DATA_DIR", help="SQLite file, Ray results, datasets/.")] = None,
    ray_address: Annotated[str | None, typer.Option("--ray-address", envvar="RAY_ADDRESS", help="Ray dashboard/Jobs address of an existing cluster, e.g. http://127.0.0.1:8265.")] = None,
    dashboard_port: Annotated[int, typer.Option(help="Dashboard port of the local Ray head Caviar starts.")] = 8265,
    ray_port: Annotated[int, typer.Option(help="GCS port of the local Ray head (not Ray's 6379, which Redis often holds).")] = 6390,
    insecure: Annotated[bool, typer.Option("--insecure", help="Serve beyond loopback WITHOUT tokens: anyone who reaches the port can submit and read studies.")] = False,
) -> None:
    """Start the API; without --ray-address, start (or reuse) a local Ray head bound to 127.0.0.1."""
    if data_dir:
        os.environ["CAVIAR_DATA_DIR"] = str(data_dir.expanduser().resolve())
    from service.settings import Settings
    from service.store import Store, migrate

    settings = Settings.from_env()
    migrate(settings.database_url)
    if _loopback(host):
        os.environ["CAVIAR_AUTH"] = "optional"
    elif insecure:
        err.print(f"warning: serving on {host} without authentication (--insecure)", markup=False, highlight=False)
        os.environ["CAVIAR_AUTH"] = "optional"
    else:
        if Store(settings.database_url).active_tokens() == 0:
            _fail(f"refusing to serve on {host} without an API token: create one with `caviar token create --owner NAME` "
                  "(or pass --insecure to serve without authentication)")
        os.environ["CAVIAR_AUTH"] = "required"
    if ray_address is None:
        ray_address = f"http://127.0.0.1:{dashboard_port}"
        if not _ray_up(ray_address):
            ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
            console.print(f"starting a local Ray head (dashboard {ray_address})")
            # loopback only: whoever reaches Ray's ports can run code on it
            subprocess.run(
                [ray_bin, "start", "--head", f"--port={ray_port}", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
                 f"--dashboard-port={dashboard_port}", "--include-dashboard=true", "--disable-usage-stats",
                 # a temp dir of its own: Ray's jobs find their cluster through <temp dir>/ray_current_cluster,
                 # which in the shared /tmp/ray names whichever head started last on this machine
                 f"--temp-dir=/tmp/ray-caviar-{ray_port}"],
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

    _run_server(create_app(run_migrations=False), host, port, Settings.from_env().drain_s)


# -- tokens --------------------------------------------------------------------------------------


def _local_store() -> Any:
    from service.settings import Settings
    from service.store import Store, migrate

    url = Settings.from_env().database_url
    migrate(url)
    return Store(url)


@token_app.command("create")
def token_create(
    owner: Annotated[str, typer.Option("--owner", help="Who the token acts for: studies belong to owners.")],
    data_dir: Annotated[Path | None, typer.Option("--data-dir", envvar="CAVIAR_DATA_DIR", help="The server's data directory.")] = None,
) -> None:
    """Create a token for OWNER and print it once (only its hash is stored)."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}", owner):
        _fail("--owner: 1-64 letters, digits, '_', '.', '@' or '-', starting with a letter or digit")
    if data_dir:
        os.environ["CAVIAR_DATA_DIR"] = str(data_dir.expanduser().resolve())
    token_id, token = _local_store().create_token(owner)
    err.print(f"token {token_id} for owner '{owner}' (shown once; store it now):", markup=False, highlight=False)
    print(token)


@token_app.command("list")
def token_list(
    data_dir: Annotated[Path | None, typer.Option("--data-dir", envvar="CAVIAR_DATA_DIR", help="The server's data directory.")] = None,
) -> None:
    """Tokens: id, owner, created, revoked (never the tokens themselves)."""
    if data_dir:
        os.environ["CAVIAR_DATA_DIR"] = str(data_dir.expanduser().resolve())
    table = Table("id", "owner", "created", "revoked")
    for t in _local_store().tokens():
        table.add_row(t.id, t.owner, f"{t.created_at:%Y-%m-%d %H:%M}", f"{t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "-")
    console.print(table)


@token_app.command("revoke")
def token_revoke(
    token_id: str,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", envvar="CAVIAR_DATA_DIR", help="The server's data directory.")] = None,
) -> None:
    """Revoke a token by id: requests with it get 401 from then on."""
    if data_dir:
        os.environ["CAVIAR_DATA_DIR"] = str(data_dir.expanduser().resolve())
    if not _local_store().revoke_token(token_id):
        _fail(f"no active token '{token_id}'")
    console.print(f"token {token_id} revoked")


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
    idempotency_key: Annotated[str | None, typer.Option("--idempotency-key", help="Retry-safe submit: the same key and file give the same study (CI: the commit SHA).")] = None,
) -> None:
    """Submit a study. Exit codes with --wait: 0 success, 1 threshold missed, 2 study failed or cancelled."""
    threshold = _parse_threshold(fail_under)
    if threshold and not wait:
        _fail("--fail-under needs --wait")
    text = file.read_text()
    headers = {"Content-Type": "application/yaml", **({"Idempotency-Key": idempotency_key} if idempotency_key else {})}
    study = _request("POST", f"{url}/v1/studies", content=text.encode(), headers=headers)
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
