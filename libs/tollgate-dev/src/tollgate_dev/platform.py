"""Start the whole platform as separate processes: the broker, the mock upstream and the five services.

DEVELOPMENT AND TESTS ONLY. ``make run`` (``tollgate_dev.run``), the end-to-end tests and the benchmark all start
Tollgate through this one class, so what the tests exercise is what a developer runs.

Each child's output is prefixed with its name (``[billing] …``), copied to ``var/logs/<name>.log`` and, when
``echo`` is on, to the terminal. A child that dies while the platform runs is reported.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .broker import EmbeddedBroker
from .ports import free_port, wait_for_port

__all__ = ["PROVIDER_KEY_VARS", "SERVICES", "Platform", "PlatformConfig"]

SERVICES = ("metering", "billing", "policy", "router", "ingress")
#: Metering first (billing loads its price book at start), ingress last (its readiness checks its peers).
START_WAVES = (("metering",), ("billing", "policy", "router"), ("ingress",))
GRPC_SERVICES = ("metering", "billing", "policy", "router")
#: Real provider credentials: given to the router only, and only by ``make run``.
PROVIDER_KEY_VARS = (
    "OPENAI_API_KEY",
    "DEEPSEEK_API_KEY",
    "ANTHROPIC_API_KEY",
    "GEMINI_API_KEY",
    "MOONSHOT_API_KEY",
    "DASHSCOPE_API_KEY",
    "OPENROUTER_API_KEY",
)
_OUR_PREFIXES = ("INGRESS_", "ROUTER_", "POLICY_", "BILLING_", "METERING_", "KAFKA_BOOTSTRAP_SERVERS")


#: Where each service serves /metrics under ``make run`` (on 127.0.0.1, never on its API port); a platform on
#: free ports (tests: ``ports`` of 0) gets free metrics ports too.
METRICS_PORTS = {"ingress": 9464, "router": 9465, "policy": 9466, "billing": 9467, "metering": 9468}


def _ports_default() -> dict[str, int]:
    return {"ingress": 8080, "router": 50051, "policy": 50052, "billing": 50053, "metering": 50054, "mock": 8090,
            "broker": 9092}


@dataclass
class PlatformConfig:
    var_dir: Path
    admin_token: str
    #: Port per process name (ingress, router, policy, billing, metering, mock, broker); 0 picks a free one.
    ports: dict[str, int] = field(default_factory=_ports_default)
    #: A Kafka the user runs; None starts the embedded broker.
    kafka_bootstrap: str | None = None
    #: Database URL per service (billing, metering, policy, ingress); default SQLite files under var_dir.
    database_urls: dict[str, str] = field(default_factory=dict)
    #: Extra environment per service name, e.g. real provider keys for "router".
    extra_env: dict[str, dict[str, str]] = field(default_factory=dict)
    #: Route to the mock upstream (always true in tests; ``make run`` keeps it for models no real key covers).
    use_mock: bool = True
    echo: bool = False
    #: e.g. "0": run every Tollgate process (and the broker) under ``taskset -c 0`` (the benchmark).
    cpu_list: str | None = None
    mock_cpu_list: str | None = None
    #: The internal-plane secret every service gets as TOLLGATE_INTERNAL_SECRET: a fresh one per run, so internal
    #: calls are authenticated in development and tests exactly as in production.
    internal_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)


class Platform:
    def __init__(self, config: PlatformConfig) -> None:
        self.config = config
        self.ports = {name: (port or free_port()) for name, port in config.ports.items()}
        #: The /metrics port of each service process (``metrics_url``).
        self.metrics_ports = {name: (port if config.ports.get(name) else free_port())
                              for name, port in METRICS_PORTS.items()}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.broker: EmbeddedBroker | None = None
        self.bootstrap = config.kafka_bootstrap or ""
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._out_lock = threading.Lock()
        self.logs_dir = config.var_dir / "logs"
        self.deaths: list[tuple[str, int]] = []

    # --- addresses ----------------------------------------------------------------------------------------------
    @property
    def ingress_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['ingress']}"

    @property
    def mock_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['mock']}"

    def metrics_url(self, process: str) -> str:
        """The Prometheus endpoint of a service process (``billing``, ``ingress#2``…)."""
        return f"http://127.0.0.1:{self.metrics_ports[process]}/metrics"

    def grpc_addr(self, service: str) -> str:
        return f"127.0.0.1:{self.ports[service]}"

    def caller_metadata(self, caller: str = "ops") -> tuple[tuple[str, str], ...]:
        """gRPC metadata that authenticates a direct call to a service as ``caller`` (tests and operator tools)."""
        from tollgate_common.internal_auth import CALLER_KEY, mint_token

        return ((CALLER_KEY, mint_token(self.config.internal_secret, caller)),)

    def database_url(self, service: str) -> str:
        default = f"sqlite:///{self.config.var_dir / (service + '.db')}"
        if service == "ingress":
            default = f"sqlite:///{self.config.var_dir / 'ingress-outbox.db'}"
        return self.config.database_urls.get(service, default)

    # --- lifecycle ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.config.var_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        try:
            if not self.bootstrap:
                self.broker = EmbeddedBroker(self.ports["broker"], log_path=self.logs_dir / "broker.log")
                self.bootstrap = self.broker.start()
                self._say(f"embedded Kafka-compatible broker (Tansu, memory only) on {self.bootstrap}")
            else:
                self._say(f"using Kafka at {self.bootstrap}")
            self._create_topics()
            if self.config.use_mock:
                self._spawn("mock", [sys.executable, "-m", "tollgate_dev.mock_upstream", "--host", "127.0.0.1",
                                     "--port", str(self.ports["mock"])], cpu_list=self.config.mock_cpu_list)
                wait_for_port(self.ports["mock"], timeout=30)
            for wave in START_WAVES:  # each wave starts together; the next waits until it is ready
                for name in wave:
                    self._spawn(name, [sys.executable, "-m", f"tollgate_{name}"], env=self._env(name))
                for name in wave:
                    self._wait_ready(name)
            watcher = threading.Thread(target=self._watch, name="platform-watch", daemon=True)
            watcher.start()
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM in reverse start order (ingress first, so nothing new arrives), then wait; SIGKILL stragglers."""
        self._stopping = True
        for name in reversed(list(self.processes)):
            proc = self.processes[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._say(f"{name} did not stop within {timeout}s; killing it")
                    proc.kill()
                    proc.wait()
        if self.broker:
            self.broker.stop()
        for thread in self._threads:
            thread.join(timeout=2)

    def kill(self, name: str) -> None:
        """``kill -9`` one process (for crash tests)."""
        proc = self.processes[name]
        proc.kill()
        proc.wait()

    def restart(self, name: str) -> None:
        old = self.processes[name]
        if old.poll() is None:
            old.send_signal(signal.SIGTERM)
            old.wait(20)
        self._spawn(name, [sys.executable, "-m", f"tollgate_{name}"], env=self._env(name))
        self._wait_ready(name)

    def add_replica(self, name: str, env: dict[str, str] | None = None) -> str:
        """Start one more process of service ``name`` beside the first (same database, same broker), as a second
        Kubernetes replica would run; ``env`` overrides its variables (e.g. a second ingress pointed at the second
        billing). Returns the replica's process name (``billing#2``: its port is ``ports[that name]``, its log
        ``logs/billing#2.log``). An ingress replica gets its own outbox database."""
        replica = f"{name}#{sum(1 for n in self.processes if n.split('#')[0] == name) + 1}"
        port = free_port()
        self.ports[replica] = port
        variables = self._env(name)
        self.metrics_ports[replica] = free_port()
        variables[f"{name.upper()}_METRICS_PORT"] = str(self.metrics_ports[replica])
        if name == "ingress":
            variables["INGRESS_PORT"] = str(port)
            outbox = self.config.var_dir / f"ingress-outbox-{replica.split('#')[1]}.db"
            variables["INGRESS_OUTBOX_DATABASE_URL"] = f"sqlite:///{outbox}"
        else:
            variables[f"{name.upper()}_GRPC_PORT"] = str(port)
        variables.update(env or {})
        self._spawn(replica, [sys.executable, "-m", f"tollgate_{name}"], env=variables)
        self._wait_ready(replica)
        return replica

    def url_of(self, ingress: str) -> str:
        """The HTTP address of an ingress process (``ingress`` or a replica such as ``ingress#2``)."""
        return f"http://127.0.0.1:{self.ports[ingress]}"

    def __enter__(self) -> Platform:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- internals ----------------------------------------------------------------------------------------------
    def _create_topics(self) -> None:
        import asyncio

        from tollgate_common.events import Topics
        from tollgate_common.kafka import ensure_topics

        asyncio.run(ensure_topics(self.bootstrap, Topics.ALL))

    def _env(self, name: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(_OUR_PREFIXES) and k not in PROVIDER_KEY_VARS}
        env["PYTHONUNBUFFERED"] = "1"
        env["TOLLGATE_INTERNAL_SECRET"] = self.config.internal_secret
        env.pop("TOLLGATE_INTERNAL_SECRET_PREVIOUS", None)
        p = self.ports
        if name == "ingress":
            env.update(
                INGRESS_HOST="127.0.0.1",
                INGRESS_PORT=str(p["ingress"]),
                INGRESS_BILLING_ADDR=self.grpc_addr("billing"),
                INGRESS_POLICY_ADDR=self.grpc_addr("policy"),
                INGRESS_ROUTER_ADDR=self.grpc_addr("router"),
                INGRESS_METERING_ADDR=self.grpc_addr("metering"),  # usage analytics
                INGRESS_KAFKA_BOOTSTRAP_SERVERS=self.bootstrap,
                INGRESS_OUTBOX_DATABASE_URL=self.database_url("ingress"),
                INGRESS_ADMIN_TOKEN=self.config.admin_token,
            )
        elif name == "router":
            env.update(
                ROUTER_GRPC_PORT=str(p["router"]),
                ROUTER_DATABASE_URL=self.database_url("router"),
                ROUTER_KAFKA_BOOTSTRAP_SERVERS=self.bootstrap,
                ROUTER_METERING_ADDR=self.grpc_addr("metering"),  # the start-up price check
            )
            if self.config.use_mock:
                env["ROUTER_MOCK_BASE_URL"] = f"{self.mock_url}/v1"
        elif name == "policy":
            env.update(
                POLICY_GRPC_PORT=str(p["policy"]),
                POLICY_DATABASE_URL=self.database_url("policy"),
                POLICY_KAFKA_BOOTSTRAP_SERVERS=self.bootstrap,
            )
        elif name == "billing":
            env.update(
                BILLING_GRPC_PORT=str(p["billing"]),
                BILLING_DATABASE_URL=self.database_url("billing"),
                BILLING_KAFKA_BOOTSTRAP_SERVERS=self.bootstrap,
                BILLING_METERING_ADDR=self.grpc_addr("metering"),
            )
        elif name == "metering":
            env.update(
                METERING_GRPC_PORT=str(p["metering"]),
                METERING_DATABASE_URL=self.database_url("metering"),
                METERING_KAFKA_BOOTSTRAP_SERVERS=self.bootstrap,
            )
        if name in self.metrics_ports:
            env[f"{name.upper()}_METRICS_PORT"] = str(self.metrics_ports[name])
        env.update(self.config.extra_env.get(name, {}))
        return env

    def _spawn(self, name: str, argv: list[str], *, env: dict[str, str] | None = None,
               cpu_list: str | None = None) -> None:
        cpus = cpu_list if cpu_list is not None else self.config.cpu_list
        if cpus and _has_taskset():
            argv = ["taskset", "-c", cpus, *argv]
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env if env is not None else {**os.environ, "PYTHONUNBUFFERED": "1"},
            cwd=self.config.var_dir.parent if self.config.var_dir.name == "var" else None,
            # Its own session: a Ctrl-C in the terminal reaches only the supervisor, which then stops the children
            # in order, instead of every child at once (and each reported as having died).
            start_new_session=True,
        )
        self.processes[name] = proc
        log_file = open(self.logs_dir / f"{name}.log", "ab")
        thread = threading.Thread(target=self._pump, args=(name, proc.stdout, log_file), daemon=True)
        thread.start()
        self._threads.append(thread)

    def _pump(self, name: str, stream: IO[bytes] | None, log_file: IO[bytes]) -> None:
        assert stream is not None
        prefix = f"[{name}] ".encode()
        with log_file:
            for line in stream:
                log_file.write(line)
                log_file.flush()
                if self.config.echo:
                    with self._out_lock:
                        sys.stdout.buffer.write(prefix + line)
                        sys.stdout.flush()

    def _wait_ready(self, name: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            proc = self.processes[name]
            if proc.poll() is not None:
                tail = self.log_tail(name)
                raise RuntimeError(f"{name} exited with status {proc.returncode} while starting:\n{tail}")
            if self._ready(name):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not ready after {timeout}s:\n{self.log_tail(name)}")
            time.sleep(0.1)

    def _ready(self, name: str) -> bool:
        if name.split("#")[0] in GRPC_SERVICES:
            import grpc
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            with grpc.insecure_channel(self.grpc_addr(name)) as channel:
                try:
                    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                except grpc.RpcError:
                    return False
                return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
        try:
            with urllib.request.urlopen(f"{self.url_of(name)}/readyz", timeout=1.0) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _watch(self) -> None:
        reported: set[int] = set()  # pids: a restarted process that dies again is reported again
        while not self._stopping:
            for name, proc in list(self.processes.items()):
                code = proc.poll()
                if code is not None and proc.pid not in reported and not self._stopping:
                    reported.add(proc.pid)
                    self.deaths.append((name, code))
                    self._say(f"{name} DIED with exit status {code} (see {self.logs_dir / (name + '.log')})")
            time.sleep(0.5)

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.logs_dir / f"{name}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _say(self, message: str) -> None:
        line = f"[supervisor] {message}\n"
        with open(self.logs_dir / "supervisor.log", "a") as f:
            f.write(line)
        if self.config.echo:
            with self._out_lock:
                sys.stdout.write(line)
                sys.stdout.flush()

    # --- admin helpers (the public admin API, as an operator would call it) ----------------------------------
    def admin(self, method: str, path: str, body: dict[str, object] | None = None) -> dict[str, object]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"{self.ingress_url}{path}",
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.config.admin_token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"{}")  # type: ignore[no-any-return]


def _has_taskset() -> bool:
    from shutil import which

    return which("taskset") is not None
