"""Kafka TLS/SASL settings: which combinations start, which are refused at start, and what reaches aiokafka.

The embedded broker speaks neither TLS nor SASL, so a SASL login is not tested here; the TLS context is, by a
handshake against a local TLS listener that trusts nothing but the test's own CA.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from pathlib import Path

import pytest
from tollgate_common.config import EnvReader
from tollgate_common.kafka import make_producer
from tollgate_common.kafka_security import KafkaSecurity, kafka_security_from_env


def _read(**env: str) -> tuple[KafkaSecurity, list[str]]:
    reader = EnvReader("METERING", {f"METERING_{k}": v for k, v in env.items()} | {"TOLLGATE_ENV": "production"})
    return kafka_security_from_env(reader), reader.problems


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it, and a client certificate (openssl CLI)."""
    d = tmp_path_factory.mktemp("tls")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=tollgate-test-ca")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", "/CN=127.0.0.1")
        (d / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    (d / "garbage.pem").write_text("not a certificate\n")
    return {p.stem if p.suffix == ".pem" else p.name: p for p in d.iterdir()}


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    security, problems = _read()
    assert problems == []
    assert security.protocol == "PLAINTEXT"
    assert security.client_kwargs() == {}


async def test_sasl_ssl_with_scram_reaches_the_clients(tls_files: dict[str, Path]) -> None:
    security, problems = _read(KAFKA_SECURITY_PROTOCOL="SASL_SSL", KAFKA_SASL_MECHANISM="scram-sha-512",
                               KAFKA_SASL_USERNAME="metering", KAFKA_SASL_PASSWORD="pw-not-in-repr",
                               KAFKA_SSL_CA_FILE=str(tls_files["ca"]))
    assert problems == []
    kwargs = security.client_kwargs()
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("metering", "pw-not-in-repr")
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    assert "pw-not-in-repr" not in repr(security)
    producer = make_producer("127.0.0.1:1", security=security)
    assert producer.client._security_protocol == "SASL_SSL"
    assert producer.client._sasl_mechanism == "SCRAM-SHA-512"
    assert producer.client._ssl_context is kwargs["ssl_context"]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "must be one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p"},
         "METERING_KAFKA_SASL_MECHANISM='' must be one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "GSSAPI", "KAFKA_SASL_USERNAME": "u",
          "KAFKA_SASL_PASSWORD": "p"}, "'GSSAPI' must be one of"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_SASL_USERNAME": "u"},
         "METERING_KAFKA_SASL_PASSWORD is required with METERING_KAFKA_SECURITY_PROTOCOL=SASL_SSL"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_SASL_USERNAME": "u",
          "KAFKA_SASL_PASSWORD": "p"}, "sends the password in clear"),
        ({"KAFKA_SASL_USERNAME": "u"}, "METERING_KAFKA_SASL_USERNAME is set but"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
          "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p", "KAFKA_SSL_CA_FILE": "/etc/hostname"},
         "METERING_KAFKA_SSL_CA_FILE is set but METERING_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT does not use TLS"),
        ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_FILE": "/nonexistent/ca.pem"}, "no such file"),
        ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERT_FILE": "client"}, "go together"),
        ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_FILE": "garbage"}, "Kafka TLS files do not load"),
    ],
)
def test_bad_combinations_are_refused_at_start(
    env: dict[str, str], expected: str, tls_files: dict[str, Path]
) -> None:
    env = {k: str(tls_files[v]) if v in tls_files else v for k, v in env.items()}
    _, problems = _read(**env)
    assert any(expected in p for p in problems), problems
    assert not any("p" == p for p in problems)


def test_sasl_plain_without_tls_is_allowed_in_development_only() -> None:
    env = {"METERING_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "METERING_KAFKA_SASL_MECHANISM": "PLAIN",
           "METERING_KAFKA_SASL_USERNAME": "u", "METERING_KAFKA_SASL_PASSWORD": "p"}
    reader = EnvReader("METERING", env)
    assert kafka_security_from_env(reader).uses_sasl
    assert reader.problems == []


def test_a_service_exits_2_on_a_bad_combination() -> None:
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("METERING_", "TOLLGATE_"))}
    env |= {"METERING_KAFKA_SECURITY_PROTOCOL": "SSL", "METERING_KAFKA_SASL_MECHANISM": "PLAIN"}
    done = subprocess.run([sys.executable, "-m", "tollgate_metering"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2, done.stderr
    assert "METERING_KAFKA_SASL_MECHANISM is set but METERING_KAFKA_SECURITY_PROTOCOL=SSL" in done.stderr


async def test_the_tls_context_is_used_for_the_broker_connection(tls_files: dict[str, Path]) -> None:
    """A producer with SSL and the test CA completes a TLS handshake with a listener whose certificate that CA
    signed (and sends its first Kafka request inside it); the default (plaintext) one does not."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(tls_files["server"], tls_files["server.key"])
    handshakes: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            handshakes.append(await asyncio.wait_for(reader.read(4), 5))  # the request's length prefix
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    security, problems = _read(KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_CA_FILE=str(tls_files["ca"]))
    assert problems == []
    async with server:
        for chosen in (security, None):
            producer = make_producer(f"127.0.0.1:{port}", security=chosen)
            producer.client._request_timeout_ms = 2000
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.start(), 5)
            with contextlib.suppress(Exception):
                await producer.stop()
            if chosen is security:
                assert handshakes and len(handshakes[0]) == 4, "no Kafka request arrived over TLS"
                count = len(handshakes)
        assert all(not h for h in handshakes[count:]), "a plaintext client cannot complete the TLS handshake"
