"""The dispatcher: reconciles the store with Ray, in an API process (``run``, started by ``app.lifespan``).

However many API processes share the database (``caviar serve --workers N``, API replicas), one runs
the dispatcher at a time: the holder of the store's ``dispatcher`` lease (service.store.leases),
renewed every tick. The others take it over when it lapses (its holder killed or stalled: after
``settings.dispatch_lease_s``), is released (its holder stopped cleanly), or is held by a process of
their own host (same boot) and pid namespace that no longer runs (an API restarted in place after a
crash, a worker killed under ``--workers``): at their next tick. A restarted container has a new pid
namespace: it waits for the lease to lapse. A study is recorded with its Ray job only while it has
none, and a driver runs its study only when the store records its own job (service.runner), so even
two dispatchers (one whose lease lapsed mid-tick) never run a study twice: the one that loses that
race stops the job it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from datetime import timedelta
from pathlib import Path

from service.api import schedules
from service.api.studies import Context
from service.definition import ACTIVE, FINISHED, StudyStatus
from service.jobs import JobState
from service.store import DISPATCHER, now

log = logging.getLogger("caviar.dispatch")
RESTOP_WINDOW = timedelta(hours=1)
WAKE_CHECK_S = 0.2  # how often the leading dispatcher looks for studies stored by other API processes
STOP_WAIT_S = 10.0  # how long a shutdown waits for a tick stuck on Ray before it releases the lease anyway


_INCARNATION = uuid.uuid4().hex[:8]  # this process, among those that had its pid


def holder_name() -> str:
    """An app, as a lease holder: host (name, and the kernel's boot id: identical hosts' names and
    namespace numbers repeat), pid namespace, pid, this process's incarnation, and the app (tests
    run several apps in one process)."""
    return f"{socket.gethostname()[:48]}.{_boot_id()}:{_pid_namespace()}:{os.getpid()}:{_INCARNATION}:{uuid.uuid4().hex[:6]}"


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid").removeprefix("pid:[").removesuffix("]")
    except OSError:  # not Linux
        return "-"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:12]
    except OSError:  # not Linux
        return "-"


def gone(holder: str) -> bool:
    """Whether ``holder`` is a process of this host and pid namespace that no longer runs: an API
    restarted after a crash (or a worker started again) takes the lease over at once instead of
    waiting for it to lapse. Anything else (another host, another container) may be alive: False."""
    host, ns, pid, incarnation, _ = [*holder.rsplit(":", 4), "", "", "", "", ""][:5]
    here = f"{socket.gethostname()[:48]}.{_boot_id()}"
    if host != here or here.endswith(".-") or ns != _pid_namespace() or ns == "-" or not pid.isdigit():
        return False
    if int(pid) == os.getpid():  # this process, or an earlier one that had its pid (a container's pid 1)
        return incarnation != _INCARNATION
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        pass
    return False


async def run(ctx: Context, holder: str) -> None:
    """The dispatcher loop: every ``settings.dispatch_interval_s``, take or renew the lease and, while
    holding it, reconcile (``dispatch_once``, in a worker thread). A submission to this process wakes
    it at once (``ctx.dispatch_now``); one stored by another process, within ``WAKE_CHECK_S``."""
    leading = False
    while True:
        ctx.dispatch_now.clear()
        leading, ok = await asyncio.to_thread(_tick, ctx, holder, leading)
        await _wait(ctx, leading and ok)


def _tick(ctx: Context, holder: str, was: bool) -> tuple[bool, bool]:
    """One tick under ``ctx.dispatch_lock``: (whether this process leads now, whether it dispatched
    without an error). A cancelled loop's thread runs its tick to the end; ``stop`` waits for it."""
    with ctx.dispatch_lock:
        leading = was
        try:
            leases, ttl = ctx.store.leases, ctx.settings.dispatch_lease_s
            leading = was and leases.hold(DISPATCHER, holder, ttl)  # the holder renews
            if not leading:  # the others read first: a write each tick would queue behind the drivers' on SQLite
                current = leases.holder(DISPATCHER)
                if current is None or current[0] == holder:  # free, lapsed, or (a restarted loop) its own
                    leading = leases.hold(DISPATCHER, holder, ttl)
                elif gone(current[0]):
                    leading = leases.hold(DISPATCHER, holder, ttl, replacing=current[0])
            if leading != was:
                log.warning("%s: %s the dispatcher (lease %s)", holder, "now runs" if leading else "no longer runs", DISPATCHER)
            if was and not leading:  # its warm driver would wait beside the new leader's: stop it
                ctx.jobs.close()
            if leading:
                dispatch_once(ctx)
            return leading, leading
        except Exception as exc:  # Ray down or restarting, the store unreachable: try again next tick
            log.warning("dispatch: %s", exc)
            ctx.jobs.reset()
            return leading, False


async def _wait(ctx: Context, check_store: bool) -> None:
    """Until the next tick, a submission to this process, or (``check_store``: leading, and the last
    tick handed every study a job) a study without a job in the store."""
    deadline = time.monotonic() + ctx.settings.dispatch_interval_s
    while (left := deadline - time.monotonic()) > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctx.dispatch_now.wait(), min(left, WAKE_CHECK_S) if check_store else left)
            return
        if check_store:
            try:
                if await asyncio.to_thread(ctx.store.studies.awaiting_job):
                    return
            except Exception as exc:  # the store is briefly unreachable: the tick comes anyway
                log.debug("dispatch: could not look for new studies: %s", exc)


async def stop(ctx: Context, holder: str) -> None:
    """On shutdown, once the tick in flight has ended: give the lease up (another API process takes
    over at its next tick) and stop the warm driver no study was handed to."""
    await asyncio.to_thread(_stop, ctx, holder)


def _stop(ctx: Context, holder: str) -> None:
    locked = ctx.dispatch_lock.acquire(timeout=STOP_WAIT_S)
    if not locked:
        log.warning("the dispatcher's last tick is still running after %.0f s (Ray unreachable?): stopping anyway", STOP_WAIT_S)
    try:
        try:
            ctx.store.leases.release(DISPATCHER, holder)
        except Exception as exc:  # the store is gone: the lease lapses by itself
            log.warning("could not release the dispatcher lease: %s", exc)
        ctx.jobs.close()
    finally:
        if locked:
            ctx.dispatch_lock.release()


def dispatch_once(ctx: Context) -> None:
    """Reconcile the store with Ray. Runs at start-up and every ``settings.dispatch_interval_s`` in the API process
    that holds the dispatcher lease (in a worker thread); idempotent, so a killed and restarted API picks up where it was:

    - hand studies without a job (queued, or running whose job died) to Ray: a study's driver
      resumes from Tune's saved experiment state when there is one;
    - stop jobs of cancelled studies (again, if a stop failed);
    - a study whose job died (driver killed, Ray head restarted) is resumed, up to ``max_resumes``
      times, then failed; a job stopped outside Caviar fails its study;
    - trials still pending/running in a finished study (zombies: no process behind them) are failed.
    """
    schedules.fire_due(ctx)  # scheduled re-tuning: due runs become queued studies, handed to Ray below
    for row in ctx.store.studies.with_zombies():
        n = ctx.store.trials.mark_zombies(row.id, f"no process behind this trial: its study is {row.status}")
        if n:
            log.warning("study %s (%s): %d zombie trials marked failed", row.id, row.status, n)
    for row in ctx.store.studies.with_status(*ACTIVE):
        if row.ray_job_id:
            continue
        job_id = ctx.jobs.submit(row.id)
        if not ctx.store.studies.update(row.id, only_if=ACTIVE, only_job=None, ray_job_id=job_id):
            ctx.jobs.stop(job_id)  # cancelled while we submitted, or handed to Ray by another dispatcher
    # a warm driver ready for the next study (settings.warm_driver), started while no study runs or
    # starts (a queued study handed to a driver that has not marked it running yet): its start-up
    # (imports, a second of CPU or more, and its trial processes' PyTorch) does not slow a study's
    if not ctx.store.studies.with_status(*ACTIVE):
        ctx.jobs.warm()
    # a cancel whose stop request failed (Ray busy or down) is retried until the job has ended
    for row in ctx.store.studies.with_status(StudyStatus.CANCELLED.value, finished_after=now() - RESTOP_WINDOW):
        if row.ray_job_id:
            state = ctx.jobs.status(row.ray_job_id)
            if state is not None and not state.terminal:
                ctx.jobs.stop(row.ray_job_id)
    for row in ctx.store.studies.with_status(*ACTIVE):
        if not row.ray_job_id:
            continue
        state = ctx.jobs.status(row.ray_job_id)
        if state is not None and not state.terminal:
            continue
        fresh = ctx.store.studies.get(row.id)
        if fresh is None or StudyStatus(fresh.status) in FINISHED or fresh.ray_job_id != row.ray_job_id:
            continue  # the driver finished it (or it was cancelled) before its job ended
        # FAILED without the driver marking the study: the driver died (kill -9, OOM, node lost);
        # unknown (None): the Ray cluster was restarted and forgot the job
        if state in (JobState.FAILED, None) and fresh.resumes < ctx.settings.max_resumes:
            # only while the dead job is still its job: another dispatcher may have resumed it already
            if ctx.store.studies.update(row.id, only_if=(fresh.status,), only_job=row.ray_job_id, ray_job_id=None, resumes=fresh.resumes + 1):
                log.warning("study %s: its Ray job %s ended as %s; resuming (resume %d)", row.id, row.ray_job_id, state or "unknown", fresh.resumes + 1)
            continue
        why = "was stopped outside Caviar" if state == JobState.STOPPED else f"ended as {state or 'unknown'}"
        extra = f" after {fresh.resumes} resumes" if fresh.resumes else ""
        ctx.store.studies.finish(row.id, StudyStatus.FAILED, error=f"the study's Ray job {why} before the study finished{extra}")
