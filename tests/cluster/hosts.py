"""Several hosts on one machine, each running one Ray node, the way docker/compose.yaml lays them out.

- :class:`NetnsHosts`: each host is a Linux network namespace with an address of its own on a bridge
  (a veth pair per host), as compose puts each container on its network. Its Ray node is started
  with the container's own script (``sh docker/start-head.sh`` / ``start-worker.sh``) inside the
  namespace (``ip netns exec``). Needs root and iproute2 (CI runs as root).
- :class:`LoopbackHosts`: where namespaces cannot be made: several ``ray start`` nodes on loopback
  addresses (127.0.A.x, Linux), each with its own ports and temp dir. The docker scripts do not take
  Ray's per-node ports, so this runs ``ray start`` itself, with the flags the scripts pass.

Both share the filesystem, so a directory under the test's tmp_path is the compose volume every
node mounts (the data directory: Tune's experiment state and checkpoints). Each host knows the
processes it started and kills only those: ``ip netns pids`` for a namespace (everything in it was
started by the test), the process tree plus the processes naming the host's own Ray temp dir on
loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from service.local import free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
BIN = Path(sys.executable).parent
GCS_PORT, DASHBOARD_PORT = 6379, 8265  # the scripts' defaults (compose: ray-head:6379, http://ray-head:8265)


@dataclass
class Host:
    """One host: its role (``head``, ``w1`` ...), its IP and the Ray node running on it."""

    role: str
    ip: str
    log: Path
    temp_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths
    ns: str | None = None  # the network namespace (NetnsHosts)
    proc: subprocess.Popen[bytes] | None = None
    gcs_port: int = GCS_PORT
    dashboard_port: int = DASHBOARD_PORT

    @property
    def gcs(self) -> str:
        return f"{self.ip}:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://{self.ip}:{self.dashboard_port}"


def _run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be made here (None: they can): tries one, with a veth pair."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    probe = f"caviar-probe-{os.getpid()}"
    try:
        _run("ip", "netns", "add", probe)
        _run("ip", "link", "add", f"cvp{os.getpid()}", "type", "veth", "peer", "name", "eth0", "netns", probe)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot make a network namespace with a veth pair: {exc}"
    finally:
        subprocess.run(["ip", "link", "del", f"cvp{os.getpid()}"], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    return None


class Hosts:
    """The hosts of one test and the Ray nodes on them; ``close()`` removes all of it."""

    gateway: str  # where the hosts reach services of this machine's own network (the API, PostgreSQL)

    def __init__(self, log_dir: Path, token: str) -> None:
        self.log_dir, self.token = log_dir, token
        self.hosts: list[Host] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    # -- to implement ------------------------------------------------------------------------------

    def add(self, role: str) -> Host:
        raise NotImplementedError

    def start_head(self, host: Host, env: dict[str, str]) -> None:
        raise NotImplementedError

    def start_worker(self, host: Host, head: Host, num_cpus: int, env: dict[str, str]) -> None:
        raise NotImplementedError

    def pids(self, host: Host) -> set[int]:
        """The processes running on ``host`` (all of them started by this test)."""
        raise NotImplementedError

    def _remove(self, host: Host) -> None:
        """Remove what ``add`` made for the host (its processes are gone)."""

    def _close(self) -> None:
        """Remove what the constructor made."""

    # -- shared ------------------------------------------------------------------------------------

    def environment(self, extra: dict[str, str]) -> dict[str, str]:
        """A node's environment: this process's (the session's PYTHONPATH with the test plug-ins) with
        the cluster's Ray token and Caviar's venv first on PATH (the image has it on PATH)."""
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", RAY_AUTH_TOKEN=self.token, RAY_USAGE_STATS_ENABLED="0")
        env.update(extra)
        return env

    def _popen(self, host: Host, argv: list[str], env: dict[str, str]) -> None:
        with open(host.log, "ab") as log:  # the child keeps its own descriptor
            host.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)

    def exited(self, host: Host) -> str | None:
        """The tail of the node's log if its ``ray start --block`` has exited, else None."""
        if host.proc is None or host.proc.poll() is None:
            return None
        return f"the Ray node on {host.role} exited ({host.proc.returncode}):\n{host.log.read_text(errors='replace')[-3000:]}"

    def kill(self, host: Host) -> int:
        """``kill -9`` every process of ``host``'s Ray node, as a crash of the host would; returns how many."""
        killed: set[int] = set()

        def gone() -> bool:
            found = self.pids(host) - {os.getpid()}
            for pid in found:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            killed.update(found)
            return not found

        wait_until(gone, 30, f"every process on {host.role} to die", interval=0.1)
        if host.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                host.proc.wait(timeout=10)
        return len(killed)

    def close(self, keep_logs: bool = True) -> None:
        """Kill every process on every host, remove the hosts, their Ray temp dirs and the network.
        ``keep_logs``: first copy each node's Ray logs beside the hosts' logs (for a failed test)."""
        errors = []
        for host in reversed(self.hosts):
            try:
                self.kill(host)
                self._remove(host)
            except Exception as exc:  # go on removing the others
                errors.append(f"{host.role}: {exc}")
            logs = Path(host.temp_dir) / "session_latest" / "logs"
            if keep_logs and logs.is_dir():
                shutil.copytree(logs, self.log_dir / f"{host.role}-ray-logs", ignore_dangling_symlinks=True, dirs_exist_ok=True)
            shutil.rmtree(host.temp_dir, ignore_errors=True)
        try:
            self._close()
        except Exception as exc:
            errors.append(str(exc))
        if errors:
            raise RuntimeError("cleaning up the hosts: " + "; ".join(errors))


class NetnsHosts(Hosts):
    """Hosts as network namespaces on a bridge: 10.A.B.1 is this machine's side (the gateway),
    10.A.B.2, .3, ... the hosts in the order they are added. Names carry this process's id."""

    def __init__(self, log_dir: Path, token: str) -> None:
        super().__init__(log_dir, token)
        self.tag = f"cv{os.getpid()}"  # interface names: at most 15 characters
        self.bridge = f"{self.tag}br"
        used = _run("ip", "-4", "addr") + _run("ip", "-4", "route")
        prefix = next(p for p in (f"10.{random.randint(64, 250)}.{random.randint(0, 255)}." for _ in range(100)) if p not in used)
        self.prefix, self.gateway = prefix, f"{prefix}1"
        self._links: list[str] = []
        try:
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            self._links.append(self.bridge)
            _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
        except Exception:
            self._close()
            raise

    def add(self, role: str) -> Host:
        host = Host(role, f"{self.prefix}{len(self.hosts) + 2}", self.log_dir / f"{role}.log", ns=f"caviar-{os.getpid()}-{role}")
        self.hosts.append(host)
        assert host.ns is not None
        veth = f"{self.tag}{role}"
        _run("ip", "netns", "add", host.ns)
        _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", host.ns)
        self._links.append(veth)
        _run("ip", "link", "set", veth, "master", self.bridge, "up")
        _run("ip", "-n", host.ns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
        _run("ip", "-n", host.ns, "link", "set", "eth0", "up")
        _run("ip", "-n", host.ns, "link", "set", "lo", "up")
        return host

    def _script(self, host: Host, script: str, env: dict[str, str]) -> None:
        assert host.ns is not None
        self._popen(host, ["ip", "netns", "exec", host.ns, "sh", str(DOCKER / script)], env)

    def start_head(self, host: Host, env: dict[str, str]) -> None:
        self._script(host, "start-head.sh", self.environment({**env, "RAY_NODE_IP": host.ip, "RAY_TEMP_DIR": host.temp_dir}))

    def start_worker(self, host: Host, head: Host, num_cpus: int, env: dict[str, str]) -> None:
        self._script(host, "start-worker.sh", self.environment({**env, "RAY_HEAD": head.gcs, "RAY_NUM_CPUS": str(num_cpus),
                                                                "RAY_NODE_IP": host.ip, "RAY_TEMP_DIR": host.temp_dir}))

    def pids(self, host: Host) -> set[int]:
        assert host.ns is not None
        done = subprocess.run(["ip", "netns", "pids", host.ns], capture_output=True, text=True, timeout=30)
        return {int(p) for p in done.stdout.split()}

    def _remove(self, host: Host) -> None:
        assert host.ns is not None
        subprocess.run(["ip", "netns", "del", host.ns], capture_output=True, timeout=30)

    def _close(self) -> None:
        for link in reversed(self._links):  # a namespace's veth goes with it; the bridge is ours to delete
            subprocess.run(["ip", "link", "del", link], capture_output=True, timeout=30)
        left = [link for link in self._links if subprocess.run(["ip", "link", "show", link], capture_output=True).returncode == 0]
        if left:
            raise RuntimeError(f"links left behind: {left}")


class LoopbackHosts(Hosts):
    """Hosts as loopback addresses: 127.0.0.1 is the gateway, 127.0.A.2, .3, ... the hosts (Linux
    routes all of 127/8 to loopback). Every node gets free ports of its own."""

    gateway = "127.0.0.1"

    def __init__(self, log_dir: Path, token: str) -> None:
        super().__init__(log_dir, token)
        self.prefix = f"127.0.{random.randint(1, 250)}."

    def usable(self) -> bool:
        """Whether this machine routes 127.0.A.x to loopback (Linux does; macOS has 127.0.0.1 only)."""
        with socket.socket() as s:
            try:
                s.bind((f"{self.prefix}2", 0))
                return True
            except OSError:
                return False

    def add(self, role: str) -> Host:
        host = Host(role, f"{self.prefix}{len(self.hosts) + 2}", self.log_dir / f"{role}.log", gcs_port=free_port(),
                    dashboard_port=free_port())
        self.hosts.append(host)
        return host

    def _own_ports(self, host: Host) -> list[str]:
        return [f"--node-ip-address={host.ip}", f"--temp-dir={host.temp_dir}", "--disable-usage-stats",
                f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]

    def start_head(self, host: Host, env: dict[str, str]) -> None:
        # start-head.sh's flags, on this host's own ports
        argv = [str(BIN / "ray"), "start", "--head", "--block", f"--port={host.gcs_port}", f"--dashboard-host={host.ip}",
                f"--dashboard-port={host.dashboard_port}", "--include-dashboard=true", "--num-cpus=0", "--num-gpus=0",
                f"--ray-client-server-port={free_port()}", *self._own_ports(host)]
        self._popen(host, argv, self.environment({**env, "RAY_AUTH_MODE": "token"}))

    def start_worker(self, host: Host, head: Host, num_cpus: int, env: dict[str, str]) -> None:
        argv = [str(BIN / "ray"), "start", f"--address={head.gcs}", "--block", f"--num-cpus={num_cpus}", *self._own_ports(host)]
        self._popen(host, argv, self.environment({**env, "RAY_AUTH_MODE": "token"}))

    def pids(self, host: Host) -> set[int]:
        """The node's process tree, and every process that names the host's own Ray temp dir (Ray's
        workers do, through their session dir, and may outlive their raylet as orphans)."""
        found: set[int] = set()
        if host.proc is not None and host.proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(host.proc.pid)
                found |= {root.pid, *(p.pid for p in root.children(recursive=True))}
        for p in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                if any(host.temp_dir in part for part in (p.info["cmdline"] or [])) and p.status() != psutil.STATUS_ZOMBIE:
                    found.add(p.pid)
        return found


class TcpForwarder:
    """``listen_host:port`` -> ``target``, from a thread of this process: PostgreSQL listens on
    127.0.0.1 only, and the hosts reach it at the bridge's address, as compose's containers reach
    their ``postgres`` service."""

    def __init__(self, listen_host: str, target: tuple[str, int]) -> None:
        self.listen_host, self.target = listen_host, target
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="tcp-forwarder", daemon=True)
        self.server: asyncio.Server | None = None
        self.port = 0
        self.connections = 0

    def start(self) -> TcpForwarder:
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(self._serve(), self.loop).result(10)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self

    async def _serve(self) -> asyncio.Server:
        return await asyncio.start_server(self._connection, self.listen_host, 0)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(1 << 16):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.close()

        with contextlib.suppress(asyncio.CancelledError):  # cancelled by close(): the end, not an error
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def close(self) -> None:
        if not self.thread.is_alive():
            return

        async def stop() -> None:
            if self.server is not None:
                self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def ray_nodes(head: Host, token: str) -> list[dict[str, Any]]:
    """The cluster's nodes as Ray's State API lists them (node_ip, state, resources_total, ...)."""
    from ray.util.state import StateApiClient
    from ray.util.state.common import ListApiOptions, StateResource

    found: list[Any] = StateApiClient(head.dashboard, headers={"Authorization": f"Bearer {token}"}).list(
        StateResource.NODES, options=ListApiOptions(limit=1000, detail=True), raise_on_missing_output=False)
    return [n if isinstance(n, dict) else vars(n) for n in found]


def alive_nodes(head: Host, token: str) -> dict[str, dict[str, float]]:
    """IP -> total resources of each alive node (an empty mapping while the head does not answer)."""
    try:
        nodes = ray_nodes(head, token)
    except Exception:
        return {}
    return {str(n["node_ip"]): dict(n.get("resources_total") or {}) for n in nodes if n.get("state") == "ALIVE"}
