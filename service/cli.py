"""The `caviar` command line: serve, submit (and wait), status, trials, best, cancel, catalog."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from service.ci_report import Check, markdown, pairs, progress_line, regression_check, threshold_check
from service.ci_report import junit as junit_report
from service.client import DEFAULT_URL, CaviarError, Client
from service.settings import Settings, load_settings

app = typer.Typer(help="Caviar: caviar-mode hyperparameter tuning as a service.", no_args_is_help=True, add_completion=False,
                  rich_markup_mode=None)  # plain help: no <bool> placeholders, readable in a CI log
token_app = typer.Typer(help="API tokens (run on the server's host: they are written to its database).", no_args_is_help=True,
                        rich_markup_mode=None)
app.add_typer(token_app, name="token")
schedule_app = typer.Typer(help="Scheduled re-tuning: a study run again every period, warm-started from the previous run.",
                           no_args_is_help=True, rich_markup_mode=None)
app.add_typer(schedule_app, name="schedule")
# a line is one line, in a terminal or a CI log; off a terminal, tables are as wide as their content
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 10_000)
err = Console(stderr=True, soft_wrap=True)
_globals: dict[str, str] = {}  # --token and --url given before the command


@app.callback()
def main(
    token: Annotated[str | None, typer.Option("--token", envvar="CAVIAR_TOKEN", metavar="TOKEN", help="API token (needed when the server is not on loopback).")] = None,
    url: Annotated[str | None, typer.Option("--url", envvar="CAVIAR_URL", metavar="URL", help="The Caviar server (also after the command).")] = None,
) -> None:
    if token:
        _globals["token"] = token
    if url:
        _globals["url"] = url


RAY_WORKER_PORTS = (10002, 19999)  # Ray's default min/max worker port
UrlOpt = Annotated[str, typer.Option("--url", envvar="CAVIAR_URL", metavar="URL", help="The Caviar server.")]
TokenOpt = Annotated[str | None, typer.Option("--token", envvar="CAVIAR_TOKEN", metavar="TOKEN", help="API token (needed when the server is not on loopback).")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", envvar="CAVIAR_DATA_DIR", metavar="DIR", help="The server's data directory.")]


def _fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"error: {message}", markup=False, highlight=False)
    raise typer.Exit(code)


def _call(url: str, fn: Any, *args: Any, token: str | None = None, **kw: Any) -> Any:
    """Run one client call against ``url``; an API error is one line on stderr, exit 2. ``--url``
    before the command counts when none is given after it."""
    if url == DEFAULT_URL and "url" in _globals:
        url = _globals["url"]
    with Client(url, token or _globals.get("token")) as client:
        try:
            return fn(client, *args, **kw)
        except CaviarError as exc:
            _fail(exc.detail)


# -- serve ---------------------------------------------------------------------------------------


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _private_ray_token() -> None:
    """The cluster's token in ~/.ray/auth_token (where Ray looks for it), readable by its owner only:
    made when missing (``ray start`` does not make one), narrowed to 0600 when it is wider."""
    path = Path.home() / ".ray" / "auth_token"
    if path.is_file():
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))


def _local_ray_head(settings: Settings, dashboard_port: int, ray_port: int) -> str:
    """The address of a Ray head on loopback at ``dashboard_port``: reused if one answers there, else started."""
    from service.jobs import RayJobs
    from service.local import head_start_args, wait_until

    address = f"http://127.0.0.1:{dashboard_port}"
    if RayJobs(load_settings(data_dir=settings.data_dir, ray_address=address)).ping():
        console.print(f"reusing the Ray head at {address}")
        return address
    console.print(f"starting a local Ray head (dashboard {address})")
    # a temp dir of its own: Ray's jobs find their cluster through <temp dir>/ray_current_cluster,
    # which in the shared /tmp/ray names whichever head started last on this machine
    # with token authentication on: whoever reaches Ray's ports can run code on it
    if "RAY_AUTH_TOKEN" not in os.environ:  # the token lives in ~/.ray/auth_token: make it, or narrow it to 0600
        _private_ray_token()
    subprocess.run(head_start_args(ray_port, dashboard_port, f"/tmp/ray-caviar-{ray_port}"), check=True,
                   env={**os.environ, "RAY_AUTH_MODE": "token"})
    # Ray writes the cluster's token (~/.ray/auth_token) as it starts: read the settings again
    def up() -> bool:  # the dashboard answers before the head has registered its CPUs
        jobs = RayJobs(load_settings(data_dir=settings.data_dir, ray_address=address))
        try:
            return jobs.ping() and jobs.largest_node().get("CPU", 0.0) > 0
        except Exception:
            return False

    try:
        wait_until(up, 60, "the local Ray head", 1.0)
    except TimeoutError:
        _fail(f"the local Ray head at {address} did not answer within 60 s; see /tmp/ray-caviar-{ray_port}/session_latest/logs")
    return address


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Bind address of the API. Anything but loopback needs API tokens (see `caviar token`).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="API port.")] = 8000,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", envvar="CAVIAR_DATA_DIR", metavar="DIR", help="SQLite file, Ray results, datasets/.")] = None,
    ray_address: Annotated[str | None, typer.Option("--ray-address", envvar="RAY_ADDRESS", metavar="URL", help="Ray dashboard/Jobs address of an existing cluster, e.g. http://127.0.0.1:8265.")] = None,
    dashboard_port: Annotated[int, typer.Option(help="Dashboard port of the local Ray head Caviar starts.")] = 8265,
    ray_port: Annotated[int, typer.Option(help="GCS port of the local Ray head (not Ray's 6379, which Redis often holds).")] = 6390,
    insecure: Annotated[bool, typer.Option("--insecure", help="Serve beyond loopback WITHOUT tokens: anyone who reaches the port can submit and read studies.")] = False,
    storage: Annotated[str | None, typer.Option("--storage", envvar="CAVIAR_STORAGE", metavar="PATH|s3://BUCKET/PREFIX",
                                                help="Where trials' checkpoints and Tune's state go: a path every Ray node mounts, or an object "
                                                "store (CAVIAR_STORAGE_ENDPOINT_URL for S3-compatible ones). Default: DATA_DIR/ray_results.")] = None,
    workers: Annotated[int, typer.Option("--workers", envvar="CAVIAR_API_WORKERS", min=1, max=64,
                                         help="API processes sharing the port (one of them dispatches studies to Ray): "
                                         "reads scale with cores, and a worker that dies is started again.")] = 1,
) -> None:
    """Start the API; without --ray-address, start (or reuse) a local Ray head bound to 127.0.0.1."""
    from service.store import Store, migrate

    if ray_address is None:
        for flag, value in (("--ray-port", ray_port), ("--dashboard-port", dashboard_port)):
            if RAY_WORKER_PORTS[0] <= value <= RAY_WORKER_PORTS[1] or not 1024 <= value <= 65535:
                _fail(f"{flag} {value}: choose a port in 1024-65535 outside {RAY_WORKER_PORTS[0]}-{RAY_WORKER_PORTS[1]}, "
                      "which Ray's worker processes use")

    settings = load_settings(data_dir=data_dir, ray_address=ray_address, storage=storage)
    migrate(settings.database_url)
    if _loopback(host):
        auth = "optional"
    elif insecure:
        err.print(f"warning: serving on {host} without authentication (--insecure)", markup=False, highlight=False)
        auth = "optional"
    else:
        if Store(settings.database_url).tokens.active() == 0:
            _fail(f"refusing to serve on {host} without an API token: create one with `caviar token create --owner NAME` "
                  "(or pass --insecure to serve without authentication)")
        auth = "required"
    if ray_address is None:
        ray_address = _local_ray_head(settings, dashboard_port, ray_port)
    settings = load_settings(data_dir=settings.data_dir, ray_address=ray_address, auth=auth, storage=settings.storage)
    from service.api.server import run_server, run_workers

    shown = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, f"[{host}]" if ":" in host else host)
    url = f"http://{shown}:{port}"
    console.print(f"Caviar API on {url}" + ("" if url == DEFAULT_URL else f" (for the CLI: export CAVIAR_URL={url})"))
    if workers > 1:
        run_workers(settings, host, port, workers)
        return
    from service.api.app import create_app

    run_server(create_app(settings, run_migrations=False), host, port, settings.drain_s)


# -- tokens --------------------------------------------------------------------------------------


def _local_store(data_dir: Path | None) -> Any:
    from service.store import Store, migrate

    url = load_settings(data_dir=data_dir).database_url
    migrate(url)
    return Store(url)


@token_app.command("create")
def token_create(
    owner: Annotated[str, typer.Option("--owner", help="Who the token acts for: studies belong to owners.")],
    data_dir: DataDirOpt = None,
) -> None:
    """Create a token for OWNER and print it once (only its hash is stored)."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}", owner):
        _fail("--owner: 1-64 letters, digits, '_', '.', '@' or '-', starting with a letter or digit")
    store = _local_store(data_dir)
    token_id, token = store.tokens.create(owner)
    from sqlalchemy.engine import make_url

    where = make_url(store.url).render_as_string(hide_password=True)
    err.print(f"token {token_id} for owner '{owner}' in {where} (shown once; store it now):", markup=False, highlight=False)
    print(token)


@token_app.command("list")
def token_list(data_dir: DataDirOpt = None) -> None:
    """Tokens: id, owner, created, revoked (never the tokens themselves)."""
    table = Table("id", "owner", "created", "revoked")
    for t in _local_store(data_dir).tokens.list_all():
        table.add_row(t.id, t.owner, f"{t.created_at:%Y-%m-%d %H:%M}", f"{t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "-")
    console.print(table)


@token_app.command("revoke")
def token_revoke(token_id: str, data_dir: DataDirOpt = None) -> None:
    """Revoke a token by id: requests with it get 401 from then on."""
    if not _local_store(data_dir).tokens.revoke(token_id):
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


def _wait(client: Client, study: dict[str, Any]) -> dict[str, Any]:
    """Follow the study to its end: a progress bar on a terminal; elsewhere (a CI log) one plain
    line per change of its status, counts or best value, never truncated."""
    if not console.is_terminal:
        last = ""

        def line(s: dict[str, Any]) -> None:
            nonlocal last
            text = progress_line(s)
            if text != last:
                print(text, flush=True)
                last = text

        return client.follow(study["id"], on_update=line)
    total = study["definition"]["budget"]["num_trials"]
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} trials"),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console, transient=False) as bar:
        task = bar.add_task(study["name"], total=total, info="queued")

        def show(s: dict[str, Any]) -> None:
            c = s["trial_counts"]
            done = c["completed"] + c["stopped_early"] + c["failed"]
            best = s["best"]["value"] if s["best"] else None
            info = f"{c['running']} running, {c['stopped_early']} stopped early, {c['failed']} failed" + (f", best {best:.4f}" if best is not None else "")
            bar.update(task, completed=done, info=info if s["status"] == "running" else f"{s['status']}: {info}")

        return client.follow(study["id"], on_update=show)


@app.command()
def submit(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, metavar="FILE", help="Study definition (YAML or JSON).")],
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the study until it ends: a progress bar on a terminal, plain lines in a CI log.")] = False,
    fail_under: Annotated[str | None, typer.Option("--fail-under", metavar="METRIC=VALUE", help="With --wait: exit 1 unless best METRIC >= VALUE (<= for min objectives).")] = None,
    idempotency_key: Annotated[str | None, typer.Option("--idempotency-key", metavar="KEY", help="Retry-safe submit: the same key and file give the same study (CI: the commit SHA).")] = None,
    baseline: Annotated[str | None, typer.Option("--baseline", metavar="STUDY_ID", help="With --wait: compare the best value with this earlier study's.")] = None,
    max_regression: Annotated[float | None, typer.Option("--max-regression", metavar="X", min=0, help="With --baseline: exit 1 when the best is worse than the baseline's by more than X (objective units).")] = None,
    summary_md: Annotated[Path | None, typer.Option("--summary-md", metavar="FILE", help="With --wait: append a Markdown summary to FILE (e.g. $GITHUB_STEP_SUMMARY).")] = None,
    junit_xml: Annotated[Path | None, typer.Option("--junit", metavar="FILE", help="With --wait: write JUnit XML to FILE, one test case per check.")] = None,
) -> None:
    """Submit a study. Exit codes with --wait: 0 success, 1 a threshold or the regression check missed, 2 study failed or cancelled."""
    threshold = _parse_threshold(fail_under)
    for flag, given in (("--fail-under", threshold), ("--baseline", baseline), ("--summary-md", summary_md), ("--junit", junit_xml)):
        if given and not wait:
            _fail(f"{flag} needs --wait")
    if (baseline is None) != (max_regression is None):
        _fail("--baseline and --max-regression go together")
    text, _ = _read_definition(file)
    base = _call(url, Client.best, baseline, 1, token=token) if baseline else None  # a wrong id fails now, not after the study
    study = _call(url, Client.submit, text, idempotency_key=idempotency_key, token=token)
    console.print(f"study {study['id']} {study['status']}")
    if not wait:
        return
    started = time.monotonic()
    study = _call(url, _wait, study, token=token)
    completed = study["status"] == "completed"
    best = _call(url, Client.best, study["id"], 1, token=token)
    checks = [Check("study completed", completed and bool(best["items"]),
                    study["status"] + (f": {study['error']}" if study.get("error") else "") if not completed
                    else ("completed" if best["items"] else "completed without a measured trial"))]
    if best["items"]:
        top = best["items"][0]
        console.print(f"best trial {top['trial_id']}: {best['objective']['metric']} = {top['value']:.4f}")
        console.print(f"config: {pairs(top['config'])}")
        if best.get("test_metrics"):
            console.print(f"held-out test: {pairs(best['test_metrics'])}")
        if threshold:
            checks.append(threshold_check(best, *threshold))
        if base is not None and max_regression is not None and baseline is not None:
            checks.append(regression_check(best, base, baseline, max_regression))
    if summary_md:
        with summary_md.open("a") as f:
            f.write(markdown(study, best, checks, _globals.get("url", url) if url == DEFAULT_URL else url))
    if junit_xml:
        junit_xml.write_text(junit_report(study, checks, time.monotonic() - started))
    if not checks[0].passed:
        _fail(f"study {study['id']} {checks[0].detail}", 2)
    for ch in checks[1:]:
        if not ch.passed:
            _fail(f"{ch.name}: {ch.detail}", 1)


@app.command()
def status(study_id: str, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None) -> None:
    """A study's status, trial counts and best so far."""
    s = _call(url, Client.study, study_id, token=token)
    console.print(yaml.safe_dump({k: s[k] for k in ("id", "name", "status", "trial_counts", "best", "ray_job_id", "dashboard_url", "error")}, sort_keys=False))




JsonOpt = Annotated[bool, typer.Option("--json", help="Print the API's JSON instead of a table.")]


@app.command()
def trials(study_id: str, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """The study's trials: state, epochs, best value, retries, configuration and error."""
    rows = _call(url, Client.trials, study_id, token=token)
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table("trial", "state", "epochs", "best", "retries", "node", "config", "error")
    for t in rows:
        best = f"{t['best_value']:.4f}" if t["best_value"] is not None else "-"
        table.add_row(t["trial_id"], t["state"], str(t["epochs"]), best, str(t["retries"]), _where(t), pairs(t["config"]),
                      t["error"] or "")
    console.print(table)


def _where(trial: dict[str, Any]) -> str:
    """The node, and the device when it is not the CPU: ``10.0.0.2 cuda:0 (NVIDIA H200, physical 3)``."""
    device = trial.get("device")
    return " ".join(x for x in (trial.get("node") or "-", device if device and device != "cpu" else "") if x)


@app.command()
def best(study_id: str, k: int = 5, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False,
         download: Annotated[Path | None, typer.Option("--download", metavar="DIR", help="Also save the best trial's newest checkpoint "
                                                       "into DIR (load it: trainables.engine.load_model(DIR)).")] = None) -> None:
    """Top-k configurations, best first, with the best one's held-out test metrics."""
    top = _call(url, Client.best, study_id, k, token=token)
    if download is not None:
        if not top["items"]:
            _fail(f"study {study_id} has no trial with a result yet: nothing to download")
        where = _call(url, Client.download_checkpoint, study_id, top["items"][0]["trial_id"], download, token=token)
        print(f"saved the checkpoint of trial {top['items'][0]['trial_id']} in {where}", file=sys.stderr)
    if as_json:
        console.print_json(json.dumps(top))
        return
    metric = top["objective"]["metric"]
    table = Table("rank", "trial", metric, "metrics", "config")
    for i, item in enumerate(top["items"], 1):
        table.add_row(str(i), item["trial_id"], f"{item['value']:.4f}", pairs(item["metrics"], skip=(metric, "reported_at")), pairs(item["config"]))
    console.print(table)
    if top.get("test_metrics"):
        console.print(f"held-out test (best trial): {pairs(top['test_metrics'])}")


@app.command()
def pareto(study_id: str, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """The Pareto front of a study with several objectives: the completed trials no other beats in all of them."""
    out = _call(url, Client.pareto, study_id, token=token)
    if as_json:
        console.print_json(json.dumps(out))
        return
    names = [f"{o['metric']} ({o['mode']})" for o in out["objectives"]]
    table = Table("trial", *names, "config")
    for p in out["front"]:
        table.add_row(p["trial_id"], *("-" if v is None else f"{v:.6g}" for v in p["values"].values()), pairs(p["config"] or {}))
    console.print(table)
    console.print(f"{len(out['front'])} on the front of {out['trials_considered']} completed trials")


@app.command()
def cancel(study_id: str, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None) -> None:
    """Cancel a queued or running study."""
    s = _call(url, Client.cancel, study_id, token=token)
    console.print(f"study {s['id']} {s['status']}")


def _read_definition(file: Path) -> tuple[str, Any]:
    """The file's text and its parsed YAML/JSON; a syntax error names file, line and column (the server checks the rest)."""
    text = file.read_text()
    try:
        return text, yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        _fail(f"{file}:{mark.line + 1}:{mark.column + 1}: {exc.problem or exc.context}" if mark else f"{file}: {exc}")
    except yaml.YAMLError as exc:
        _fail(f"{file}: {exc}")


@schedule_app.command("create")
def schedule_create(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A study definition (YAML or JSON).")],
    every: Annotated[str, typer.Option(help="How often: 30d, 12h, 1w (at least 60 s).")],
    top_k: Annotated[int, typer.Option("--top-k", help="The previous run's best configurations that run first (re-evaluated).")] = 5,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
) -> None:
    """Run FILE's study now and every EVERY, each run warm-started from the previous one."""
    _, definition = _read_definition(file)
    if not isinstance(definition, dict):
        _fail(f"{file}: a study definition is a mapping")
    s = _call(url, Client.create_schedule, definition, every, top_k=top_k, token=token)
    console.print(f"schedule {s['id']} ({s['name']}) every {s['every']}, next run {s['next_run_at']}", markup=False, highlight=False)


@schedule_app.command("list")
def schedule_list(url: UrlOpt = DEFAULT_URL, token: TokenOpt = None) -> None:
    """The schedules, their last run and its drift."""
    for s in _call(url, Client.schedules, token=token):
        last = s["runs"][-1] if s["runs"] else None
        drift = f", drift {last['drift']:+.4f}" if last and last["drift"] is not None else ""
        state = "paused" if s["paused"] else f"next {s['next_run_at']}"
        console.print(f"{s['id']}  {s['name']}  every {s['every']}  {state}  runs {len(s['runs'])}"
                      + (f", last {last['study_id']} ({last['status']}){drift}" if last else "")
                      + (f"  error: {s['last_error']}" if s["last_error"] else ""), markup=False, highlight=False)


@schedule_app.command("pause")
def schedule_pause(schedule_id: str, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None) -> None:
    """No run starts until it is resumed."""
    _call(url, Client.pause_schedule, schedule_id, token=token)
    console.print(f"schedule {schedule_id} paused", markup=False)


@schedule_app.command("resume")
def schedule_resume(schedule_id: str, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None) -> None:
    """Resume (a run overdue meanwhile starts now)."""
    s = _call(url, Client.resume_schedule, schedule_id, token=token)
    console.print(f"schedule {schedule_id} resumed, next run {s['next_run_at']}", markup=False)


@schedule_app.command("delete")
def schedule_delete(schedule_id: str, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None) -> None:
    """Delete it (the studies it started stay)."""
    _call(url, Client.delete_schedule, schedule_id, token=token)
    console.print(f"schedule {schedule_id} deleted", markup=False)


def _pairs(items: list[str]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for pair in items:
        knob, sep, value = pair.partition("=")
        if not sep or not knob:
            _fail(f"'{pair}' is not KNOB=VALUE")
        parsed[knob] = yaml.safe_load(value)
    return parsed


@app.command()
def fork(
    study_id: str, trial_id: str,
    from_epoch: Annotated[int, typer.Option("--from-epoch", help="Start from the trial's checkpoint at this epoch.")],
    changes: Annotated[list[str] | None, typer.Argument(help="KNOB=VALUE pairs that differ from then on, e.g. lr=0.003.")] = None,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
) -> None:
    """Panda mode's "try something else from here": a new study from TRIAL's checkpoint at --from-epoch."""
    s = _call(url, Client.fork, study_id, trial_id, from_epoch, _pairs(changes or []), token=token)
    console.print(f"study {s['id']} {s['status']} ({s['name']}: trial {trial_id} of {study_id} from epoch {from_epoch})", markup=False, highlight=False)


@app.command()
def adjust(
    study_id: str, trial_id: str,
    changes: Annotated[list[str], typer.Argument(help="KNOB=VALUE pairs, e.g. lr=0.003 dropout=0.2.")],
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
) -> None:
    """Panda mode: change a running trial's knobs; they apply from its next epoch on."""
    a = _call(url, Client.adjust, study_id, trial_id, _pairs(changes), token=token)
    console.print(f"adjustment {a['id']} of trial {trial_id}: {pairs(a['changes'])} (applies after its current epoch)", markup=False, highlight=False)


@app.command()
def refine(
    study_id: str,
    top_k: Annotated[int, typer.Option("--top-k", help="Narrow around this many best trials (they run first).")] = 5,
    num_trials: Annotated[int, typer.Option("--num-trials", help="The new study's trials.")] = 16,
    margin: Annotated[float, typer.Option(help="Pads the top-k's span by this fraction on each side.")] = 0.25,
    name: Annotated[str | None, typer.Option(help="The new study's name (default: <name>-refine).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the narrowed space; submit nothing.")] = False,
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
) -> None:
    """Coarse to fine: a new study in ID's space narrowed around its top-k, warm-started with them."""
    extra = {"name": name} if name else {}
    out = _call(url, Client.refine, study_id, top_k=top_k, num_trials=num_trials, dry_run=dry_run, margin=margin, token=token, **extra)
    if dry_run:
        for param, change in out["narrowed"].items():
            before, after = change["before"], change["after"]
            console.print(f"{param}: {_range(before)} -> {_range(after) if after else 'dropped'}", markup=False, highlight=False)
        if not out["narrowed"]:
            console.print("nothing narrowed: the top-k span the whole space", markup=False)
        return
    console.print(f"study {out['id']} {out['status']} ({out['name']}, refined from {study_id})", markup=False, highlight=False)


def _range(p: dict[str, Any]) -> str:
    if p.get("type") == "categorical":
        return "{" + ", ".join(map(str, p["choices"])) + "}"
    return f"[{p['low']:.4g}, {p['high']:.4g}]" + (" log" if p.get("log") else "")


@app.command()
def extend(
    study_id: str,
    num_trials: Annotated[int, typer.Option("--num-trials", help="How many more trials.")],
    url: UrlOpt = DEFAULT_URL, token: TokenOpt = None,
) -> None:
    """Run more trials in a finished study (same id, the sampler keeps its history)."""
    s = _call(url, Client.extend, study_id, num_trials, token=token)
    console.print(f"study {s['id']} {s['status']}: {s['definition']['budget']['num_trials']} trials in all", markup=False, highlight=False)


@app.command("trainables")
def list_trainables_cmd(url: UrlOpt = DEFAULT_URL, token: TokenOpt = None) -> None:
    """Registered trainables."""
    for t in _call(url, Client.trainables, token=token):
        console.print(f"[bold]{t['name']}[/bold]  {escape(t['description'])}  [dim](metrics: {', '.join(t['metrics'])})[/dim]")


@app.command()
def spaces(url: UrlOpt = DEFAULT_URL, token: TokenOpt = None) -> None:
    """Search-space presets."""
    for s in _call(url, Client.search_spaces, token=token):
        console.print(f"[bold]{s['name']}[/bold]  {', '.join(s['parameters'])}")


@app.command()
def dashboard(
    study_id: str,
    host: Annotated[str, typer.Option(help="Bind address of optuna-dashboard.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Its port.")] = 8080,
    data_dir: DataDirOpt = None,
    database_url: Annotated[str | None, typer.Option("--database-url", envvar="CAVIAR_DATABASE_URL", metavar="URL",
                                                     help="Caviar's database (where Optuna keeps its trials with CAVIAR_OPTUNA_STORAGE=database).")] = None,
) -> None:
    """Open the study's Optuna storage in optuna-dashboard and print its URL (Ctrl-C stops it).

    Run it where the study's Optuna storage is: the data directory of the node that ran the study's
    driver (the journal, by default), or anywhere that reaches the database (CAVIAR_OPTUNA_STORAGE=database).
    Trials the scheduler stopped early show as PRUNED."""
    import optuna
    import optuna_dashboard

    from service.runner.optuna_storage import optuna_journal, optuna_storage

    settings = load_settings(data_dir=data_dir, database_url=database_url)
    name = f"caviar-{study_id}"
    if settings.optuna_storage == "journal" and not optuna_journal(settings.data_dir, study_id).exists():
        _fail(f"no Optuna journal for study '{study_id}' at {optuna_journal(settings.data_dir, study_id)}: run this where the study's "
              "driver ran (its data directory: --data-dir), or use CAVIAR_OPTUNA_STORAGE=database", 1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna_storage(settings.optuna_storage, settings.database_url, settings.data_dir, study_id)
    try:
        number = storage.get_study_id_from_name(name)
    except KeyError:
        _fail(f"no Optuna study '{name}' in the {settings.optuna_storage} storage (has the study started?)", 1)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    print(f"optuna-dashboard for study {study_id}: http://{shown}:{port}/dashboard/studies/{number}", flush=True)
    optuna_dashboard.run_server(storage, host=host, port=port)


if __name__ == "__main__":
    app()
