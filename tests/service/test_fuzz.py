"""Fuzz the whole HTTP API from its own OpenAPI schema with Schemathesis (every check it has), against the real server.

``caviar serve`` runs in a subprocess (uvicorn over HTTP, a fresh data dir, SQLite) with ``RAY_ADDRESS``
pointing at a closed port: no Ray head is started, submitted studies stay ``queued`` and /readyz
answers 503 (expected here, and the only 5xx tolerated). Every request carries the bearer token of
an owner created with ``caviar token create`` (so requests reach the handlers instead of stopping at
401), and the owner's quotas are raised so that valid submissions are not all 429 after the 8th.
Schemathesis runs in-process through its public Python API:

1. every operation, positive and negative cases (``APIOperation.as_strategy`` under Hypothesis);
2. stateful sequences (``schema.as_state_machine()``): Schemathesis infers links from the schema
   (POST /v1/studies -> GET/cancel /v1/studies/{study_id} ...), so ids flow from one call to the next;
   suites repeat, each with its own seed, until the case budget is spent.

Every response goes through every check Schemathesis has (server errors, status codes, content
types, headers, response schemas, negative data rejected, positive data accepted, missing
required headers, unsupported methods and their Allow header, use after free, resource
availability, ignored auth, object-level authorization); the one intended failure class is listed in
``INTENDED`` with its reason and counted apart. Failures are collected rather than raised, so one run reports all of them, each with a curl command
(Authorization shows as [Filtered]: use ``Bearer <token>``). The test asserts: the OpenAPI document
has no dangling ``$ref``, no unexpected 5xx, no schema violations, and at least 1,000 cases ran.

Knobs (environment): ``CAVIAR_FUZZ_CASES`` (default 1500; e.g. 20000 for a long run),
``CAVIAR_FUZZ_SEED`` (default 0: the CI run is reproducible; ``random`` for a fresh one).
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import hypothesis
import pytest
import requests
import schemathesis
import schemathesis.checks
from hypothesis.errors import Flaky, Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.errors import FailureGroup, NoLinksFound

from service.api.longpoll import MAX_WAIT_S
from service.local import BIN, LocalServer

schemathesis.checks.load_all_checks()
MIN_CASES = 1000
TARGET = int(os.environ.get("CAVIAR_FUZZ_CASES") or 1500)
_seed = os.environ.get("CAVIAR_FUZZ_SEED") or "0"
SEED = random.SystemRandom().randrange(2**32) if _seed == "random" else int(_seed)
UNIT_SHARE = 0.6  # of TARGET for phase 1; the state machine fills the rest
STEPS_PER_SCENARIO = 8
SCENARIOS_PER_SUITE = 25
REQUEST_TIMEOUT_S = 30
CHECKS = list(schemathesis.checks.CHECKS.get_all())  # every check Schemathesis has (load_all_checks below)
# Failures that are intended, each with why; counted and shown, not failed on:
INTENDED = {
    ("POST /v1/studies", "RejectedPositiveData"):
        "a schema-valid definition can still break a rule the schema cannot state: the trainable's knobs "
        "(search_space and fixed keys), the metric it reports, the file on disk, the cluster's resources",
    ("POST /v1/schedules", "RejectedPositiveData"):
        "its definition is checked as POST /v1/studies checks one (see above), and `every` must lie between 60 s and 366 d",
    ("POST /v1/studies/{study_id}/trials/{trial_id}/adjust", "RejectedPositiveData"):
        "what may be adjusted depends on the study (panda mode) and its trainable's declared knobs, which the schema cannot state",
}
# Ray is deliberately unreachable: /readyz says so with its (documented) 503; no other 5xx is expected.
EXPECTED_5XX = {("GET /readyz", 503)}


def _settings(max_examples: int, **kw: Any) -> hypothesis.settings:
    return hypothesis.settings(
        max_examples=max_examples, database=None, deadline=None, print_blob=False,
        phases=[hypothesis.Phase.generate],  # no shrinking: failures are collected, never raised
        suppress_health_check=list(hypothesis.HealthCheck), verbosity=hypothesis.Verbosity.quiet, **kw,
    )


def _is_server_error(failure: BaseException) -> bool:
    return getattr(failure, "code", None) == "ST101"  # what `not_a_server_error` raises (codes are never reused)


@dataclass
class Finding:
    count: int
    curl: str
    response: str
    message: str


@dataclass
class Report:
    """What ran and what failed; failures are deduplicated by (operation, failure, status code)."""

    base_url: str
    token: str
    cases: int = 0
    unit_cases: int = 0
    stateful_steps: int = 0
    stateful_scenarios: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    server_errors: int = 0  # unexpected 5xx responses
    expected_5xx: int = 0
    violations: int = 0  # responses that break the schema (status code, content type, headers, body)
    errors: list[str] = field(default_factory=list)  # dangling $refs, broken operations, transport errors
    server_gone: bool = False  # a request failed at the transport level: stop fuzzing
    findings: dict[tuple[str, str, int], Finding] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    intended: dict[tuple[str, str], int] = field(default_factory=dict)  # failures listed in INTENDED

    def call_kwargs(self) -> dict[str, Any]:
        # explicit headers win over the Authorization value Schemathesis generates from the security scheme
        return {"base_url": self.base_url, "headers": {"Authorization": f"Bearer {self.token}"}, "timeout": REQUEST_TIMEOUT_S}

    def call(self, case: Any) -> Any:
        wait = (case.query or {}).get("wait_s")
        if isinstance(wait, (int, float)) and not isinstance(wait, bool) and 1 < wait <= MAX_WAIT_S:
            # a long poll (GET /v1/studies/{id}?wait_s=) of a study that does not end (queued, no Ray) holds
            # its answer for wait_s by design: a valid wait is cut to 1 s so that it fits the request
            # timeout (out-of-range waits still go as generated: 422); tests/service/test_long_poll.py covers it
            case.query["wait_s"] = 1.0
        try:
            return case.call(**self.call_kwargs())
        except requests.RequestException as exc:
            self.errors.append(f"{case.operation.label}: {type(exc).__name__}: {exc}\n    reproduce: {self.curl(case)}")
            self.server_gone = True
            raise

    def curl(self, case: Any) -> str:
        # the token shows as [Filtered]: any token of `caviar token create`, or no header at all (owner 'local')
        return str(case.as_curl_command(headers=self.call_kwargs()["headers"], base_url=self.base_url))

    def record(self, case: Any, response: Any, recorder: Any = None) -> None:
        """Count one case and run the checks on its response; failures are kept, not raised."""
        self.cases += 1
        label, status = case.operation.label, response.status_code
        self.statuses[status] = self.statuses.get(status, 0) + 1
        expected_5xx = (label, status) in EXPECTED_5XX
        if status >= 500:
            if expected_5xx:
                self.expected_5xx += 1
            else:
                self.server_errors += 1
        try:
            case.validate_response(response, checks=CHECKS, transport_kwargs=self.call_kwargs(), recorder=recorder)
        except FailureGroup as group:
            failures = list(group.exceptions)
            if expected_5xx:  # tolerated as a 5xx; the rest of the checks still apply
                failures = [f for f in failures if not _is_server_error(f)]
            elif status >= 500:  # reported once, as a 5xx, not also as "undocumented status code 500"
                failures = [f for f in failures if _is_server_error(f)]
            intended = [f for f in failures if (label, type(f).__name__) in INTENDED]
            for f in intended:
                self.intended[(label, type(f).__name__)] = self.intended.get((label, type(f).__name__), 0) + 1
            failures = [f for f in failures if f not in intended]
            if any(not _is_server_error(f) for f in failures):
                self.violations += 1
            for failure in failures:
                key = (label, f"{getattr(failure, 'code', '?')} {failure.title}", status)
                if key in self.findings:
                    self.findings[key].count += 1
                    continue
                content_type = ", ".join(response.headers.get("content-type", ["?"]))
                self.findings[key] = Finding(count=1, curl=self.curl(case), response=f"[{content_type}] {response.text[:400]}",
                                             message=failure.message.strip()[:1200])

    def render(self) -> str:
        lines = [
            f"schemathesis {schemathesis.__version__}, hypothesis {hypothesis.__version__}, seed {SEED}",
            f"cases run: {self.cases} (target {TARGET}; per operation: {self.unit_cases}, stateful steps: "
            f"{self.stateful_steps} in {self.stateful_scenarios} scenarios)",
            f"status codes: {dict(sorted(self.statuses.items()))}",
            f"unexpected 5xx: {self.server_errors}; expected 5xx (/readyz without Ray): {self.expected_5xx}",
            f"responses violating the schema: {self.violations}",
            f"errors: {len(self.errors)}",
            *(f"intended: {label} {check} x{n}: {INTENDED[(label, check)]}" for (label, check), n in sorted(self.intended.items())),
            *(f"note: {n}" for n in self.notes),
            *(f"ERROR {e}" for e in self.errors),
        ]
        for (label, what, status), f in sorted(self.findings.items()):
            lines += [f"FAIL {label}: {what} (HTTP {status}, seen {f.count}x)", f"    reproduce: {f.curl}",
                      f"    response:  {f.response}", *(f"    | {line}" for line in f.message.splitlines())]
        return "\n".join(lines)


# -- server ----------------------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    token: str
    log: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`caviar serve` on a fresh data dir and SQLite, with no Ray at all (studies stay queued)."""
    data = tmp_path_factory.mktemp("fuzz-data")
    (data / "datasets").mkdir()
    env = {"CAVIAR_QUOTA_ACTIVE_STUDIES": "1000000", "CAVIAR_QUOTA_CONCURRENT_TRIALS": "1000000000", "CAVIAR_DRAIN_S": "0"}
    made = subprocess.run([str(BIN / "caviar"), "token", "create", "--owner", "fuzz"], env={**os.environ, "CAVIAR_DATA_DIR": str(data)},
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0 and made.stdout.strip(), made.stderr
    api = LocalServer(data, None, env=env).start()
    try:
        yield Server(url=api.url, token=made.stdout.strip(), log=api.log_path)
    finally:
        api.stop()


# -- the schema itself -----------------------------------------------------------------------------


def dangling_refs(document: dict[str, Any]) -> list[str]:
    """Local `$ref`s that point at nothing (Schemathesis skips what they describe, with only a warning)."""

    def resolves(pointer: str) -> bool:
        node: Any = document
        for part in pointer.removeprefix("#/").split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    found: list[str] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/") and not resolves(ref):
                found.append(f"{where}: $ref {ref} resolves to nothing")
            for k, v in node.items():
                walk(v, f"{where}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}/{i}")

    walk(document, "#")
    return found


# -- phase 1: every operation, positive and negative ----------------------------------------------


def fuzz_operations(schema: Any, report: Report, per_pair: int, seed: int, exhausted: set[tuple[str, str]]) -> int:
    """Up to ``per_pair`` cases per (operation, mode); returns how many ran. Pairs that Hypothesis
    exhausts (small input spaces, e.g. GET /healthz) or cannot negate (only free-form strings) are
    added to ``exhausted`` and skipped by later rounds."""
    ran = 0
    for i, result in enumerate(schema.get_all_operations()):
        try:
            operation = result.ok()
        except Exception as exc:  # this operation's schema is broken
            report.errors.append(f"Schemathesis cannot use an operation: {exc}")
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            pair = (operation.label, mode.value)
            if pair in exhausted:
                continue
            before = report.cases

            @hypothesis.seed(seed * 1000 + i * 2 + (mode is GenerationMode.NEGATIVE))
            @_settings(per_pair)
            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                report.record(case, report.call(case))

            try:
                run()
            except Unsatisfiable:
                exhausted.add(pair)
            except requests.RequestException:  # the server died or hangs: the error is recorded, stop
                ran += report.cases - before
                break
            except Exception as exc:  # Schemathesis cannot generate or send this operation's cases
                report.errors.append(f"{operation.label} ({mode.value}): {type(exc).__name__}: {str(exc)[:2000]}")
                exhausted.add(pair)
            n = report.cases - before
            ran += n
            if n < per_pair:
                exhausted.add(pair)
        if report.server_gone:
            break
    report.unit_cases += ran
    return ran


# -- phase 2: stateful sequences -------------------------------------------------------------------


def _inconsistent_replay(exc: BaseException) -> bool:
    """Hypothesis asserts (rather than raising Flaky) when the server's answers change what a replay draws."""
    tb: TracebackType | None = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return isinstance(exc, AssertionError) and tb is not None and str(tb.tb_frame.f_globals.get("__name__")).startswith("hypothesis.")


def fuzz_stateful(schema: Any, report: Report, budget: int, deadline: float) -> None:
    """State-machine suites, a fresh seed each, until ``budget`` steps ran (or ``deadline``)."""
    try:
        base = schema.as_state_machine()
    except NoLinksFound as exc:
        report.notes.append(f"stateful testing skipped: {exc}")
        return

    class Machine(base):  # type: ignore[misc, valid-type]
        def setup(self) -> None:
            report.stateful_scenarios += 1
            super().setup()

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return report.call_kwargs()

        def call(self, case: Any, **kwargs: Any) -> Any:
            return report.call(case)

        def validate_response(self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any) -> None:
            report.record(case, response, recorder=getattr(self, "recorder", None))
            report.stateful_steps += 1

    suites, replays, start = 0, 0, report.stateful_steps
    while report.stateful_steps - start < budget and time.monotonic() < deadline:
        before = report.stateful_steps
        suites += 1
        try:
            hypothesis.seed(SEED * 1000 + 500 + suites)(Machine).run(
                settings=_settings(SCENARIOS_PER_SUITE, stateful_step_count=STEPS_PER_SCENARIO))
        except Flaky:  # the server's state changed what a replay drew (ids, bundles): go on with a fresh suite
            replays += 1
        except requests.RequestException:  # recorded by report.call
            return
        except Exception as exc:
            if not _inconsistent_replay(exc):
                report.errors.append(f"stateful testing: {type(exc).__name__}: {str(exc)[:2000]}")
                return
            replays += 1
        if report.stateful_steps == before:
            report.notes.append(f"stateful suite {suites} ran no step; stopping the stateful phase")
            break
    report.notes.append(f"stateful: {suites} suites ({replays} ended early on an inconsistent replay)")


# -- the test --------------------------------------------------------------------------------------


def test_fuzz_the_whole_api_from_its_openapi_schema(server: Server) -> None:
    started = time.monotonic()
    report = Report(base_url=server.url, token=server.token)
    auth = {"Authorization": f"Bearer {server.token}"}
    document = httpx.get(f"{server.url}/openapi.json", headers=auth, timeout=30).json()
    report.errors += [f"OpenAPI document: {d}" for d in dangling_refs(document)]

    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", config=schemathesis.Config(seed=SEED), headers=auth)
    # the event stream of a study that does not end (here: queued, no Ray) stays open by design, so
    # each case would wait out the request timeout; tests/service/test_events.py covers it over HTTP
    schema = schema.exclude(path="/v1/studies/{study_id}/events")
    operations = sum(1 for _ in schema.get_all_operations())
    per_pair = max(1, math.ceil(TARGET * UNIT_SHARE / (2 * operations)))
    exhausted: set[tuple[str, str]] = set()
    fuzz_operations(schema, report, per_pair, SEED, exhausted)
    if not report.server_gone:
        # a generous cap (10 cases/s, where ~80/s is usual) so a server slowing to a crawl cannot hang CI
        fuzz_stateful(schema, report, TARGET - report.cases, deadline=started + 30 + TARGET / 10)
    # short of the target (no links, or the deadline): more rounds of phase 1, fresh seeds, while they add cases
    rounds = 0
    while report.cases < TARGET and rounds < 20 and not report.server_gone:
        rounds += 1
        live = max(1, 2 * operations - len(exhausted))
        if fuzz_operations(schema, report, math.ceil((TARGET - report.cases) / live), SEED + rounds, exhausted) == 0:
            break

    summary = report.render()
    print(f"\n--- schemathesis fuzz of {server.url} ({operations} operations) in {time.monotonic() - started:.1f}s "
          f"(server log: {server.log}) ---\n{summary}")
    problems = [
        *([f"only {report.cases} cases ran"] if report.cases < min(MIN_CASES, TARGET) else []),
        *([f"{len(report.errors)} errors"] if report.errors else []),
        *([f"{report.server_errors} unexpected 5xx responses"] if report.server_errors else []),
        *([f"{report.violations} responses violate the OpenAPI schema"] if report.violations else []),
    ]
    assert not problems, f"{'; '.join(problems)} (server log: {server.log}):\n{summary}"
