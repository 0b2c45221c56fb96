"""Warm trial processes: the warm driver (``python -m service.runner --standby``) asks each node's
raylet to start its job's worker processes before the study exists, and each of them imports what
a built-in trainable needs (PyTorch, the training engine) as it starts.
Tune's trial actors then land in processes that are up and warm, instead of paying a Python start,
Ray's and PyTorch's imports at the study's first trials (about 1.5 s each on a CPU node).

``setup`` is the job's ``worker_process_setup_hook`` (``service.jobs.TRIAL_SETUP_HOOK``, set on the
warm driver's job when ``settings.warm_trials`` is on; Ray runs it in every worker process of that
job); ``prestart`` asks the raylets. Ray has no public call for the
second: it is the raylet's own ``PrestartWorkers`` RPC (what Ray's core worker calls), reached
through Ray's gRPC helpers, so it is best-effort. When it fails (another Ray, a node gone) the
trials start as they would have, in fresh processes, and the driver's log says why. When Ray's
runtime-environment string for Tune's actors stops matching (a Ray upgrade), trials start cold
again without an error: tests/service/test_warm_driver_e2e.py checks that they land in these
processes on the installed Ray. The hook's module is Caviar's own, which every node that runs
trials has installed already (trials import ``service.runner``).
"""

from __future__ import annotations

import importlib
import json
import logging
import time
from typing import Any

from service.runner import freeze_imports

log = logging.getLogger("caviar.warm")

MAX_PER_NODE = 16  # the most warm processes one node keeps for a study not yet submitted


def setup() -> None:
    """Run by Ray in each worker process of the warm driver's job as it starts, before any trial:
    import what the built-in trainables import. Never raises: a worker that failed here would not start."""
    start = time.perf_counter()
    try:
        # PyTorch with the training loop, the trainables resolved by name (the datasets split with
        # NumPy alone: no scikit-learn in a trial process)
        import trainables.engine
        import trainables.registry  # noqa: F401
    except Exception as exc:  # a trainable's own import errors are reported by its trial, not here
        log.warning("warming this trial process failed after %.1f s: %s", time.perf_counter() - start, exc)
    freeze_imports()  # a trial's collections walk what it allocates, not PyTorch's modules


def per_node(resources: dict[str, float]) -> int:
    """How many warm processes a node gets: one per CPU (a trial takes at least one), at most MAX_PER_NODE."""
    return max(0, min(int(resources.get("CPU", 0.0)), MAX_PER_NODE))


def trial_runtime_env() -> str:
    """The runtime environment Tune's trial actors of this job get, serialized as Ray's core worker
    serializes it: a worker serves an actor only when the two strings match. That is the job's
    environment with Tune's own for trainable actors laid over it (Tune's actor class cache adds
    environment variables), merged as Ray merges them, in compact sorted JSON."""
    import ray
    from ray.runtime_env.runtime_env import _merge_runtime_env
    from ray.tune.execution.class_cache import _ActorClassCache

    class _Probe:  # what Tune's cache makes of any trainable class
        pass

    worker: Any = ray._private.worker.global_worker  # Ray's internals are untyped
    job = json.loads(worker.core_worker.get_current_runtime_env())
    tune: Any = _ActorClassCache().get(_Probe)._default_options.get("runtime_env") or {}
    return json.dumps(_merge_runtime_env(job, tune, override=True), sort_keys=True, separators=(",", ":"))


def prestart(keep_alive_s: float) -> int:
    """Ask every alive node's raylet to start warm processes for this job (``per_node`` each), kept
    alive ``keep_alive_s`` while idle. Returns how many were asked for; 0 when it could not (logged)."""
    try:
        import ray
        from ray._private.grpc_utils import init_grpc_channel
        from ray._private.utils import get_runtime_env_info
        from ray.core.generated import node_manager_pb2_grpc
        from ray.runtime_env import RuntimeEnv

        common: Any = importlib.import_module("ray.core.generated.common_pb2")  # generated protobuf modules: untyped
        messages: Any = importlib.import_module("ray.core.generated.node_manager_pb2")
        context = ray.get_runtime_context()
        serialized = trial_runtime_env()
        env = get_runtime_env_info(RuntimeEnv(**json.loads(serialized)))
        env.serialized_runtime_env = serialized
        asked = 0
        for node in ray.nodes():
            n = per_node(node.get("Resources") or {})
            if not node.get("Alive") or n == 0:
                continue
            address = f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}"
            channel = init_grpc_channel(address)
            try:
                node_manager_pb2_grpc.NodeManagerServiceStub(channel).PrestartWorkers(messages.PrestartWorkersRequest(
                    language=common.PYTHON, job_id=bytes.fromhex(context.get_job_id()), runtime_env_info=env,
                    keep_alive_duration_secs=int(keep_alive_s), num_workers=n), timeout=10)
                asked += n
            except Exception as exc:  # that node's trials start in fresh processes; the others' are warm
                log.warning("could not start trial processes ahead on %s (%s: %s)", address, type(exc).__name__, exc)
            finally:
                channel.close()
        return asked
    except Exception as exc:
        log.warning("could not start trial processes ahead (%s: %s); the study's trials start in fresh ones", type(exc).__name__, exc)
        return 0
