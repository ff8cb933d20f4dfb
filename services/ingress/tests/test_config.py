"""Settings from INGRESS_* variables: defaults from docs/architecture.md, every problem reported at once."""

from __future__ import annotations

import pytest
from tollgate_common.config import ConfigError
from tollgate_ingress.config import Settings


def test_defaults_match_the_architecture_page() -> None:
    s = Settings.from_env({"INGRESS_ADMIN_TOKEN": "t0ken"})
    assert (s.host, s.port) == ("127.0.0.1", 8080)
    assert (s.billing_addr, s.policy_addr, s.router_addr) == ("127.0.0.1:50053", "127.0.0.1:50052", "127.0.0.1:50051")
    assert s.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert s.outbox_database_url == "sqlite:///var/ingress-outbox.db"
    assert s.log_level == "INFO"


def test_every_problem_is_reported() -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"INGRESS_PORT": "http", "INGRESS_LOG_LEVEL": "loud", "INGRESS_RPC_TIMEOUT_SECONDS": "-1"})
    text = str(err.value)
    expected_names = ("INGRESS_ADMIN_TOKEN is required", "INGRESS_PORT", "INGRESS_LOG_LEVEL",
                      "INGRESS_RPC_TIMEOUT_SECONDS")
    for expected in expected_names:
        assert expected in text


def test_values_are_read() -> None:
    s = Settings.from_env({"INGRESS_ADMIN_TOKEN": "t", "INGRESS_PORT": "9000", "INGRESS_LOG_LEVEL": "debug",
                           "INGRESS_KAFKA_SEND_TIMEOUT_SECONDS": "0.5"})
    assert (s.port, s.log_level, s.kafka_send_timeout_seconds) == (9000, "DEBUG", 0.5)


def test_a_short_admin_token_is_refused_outside_development() -> None:
    production = {"TOLLGATE_ENV": "production", "TOLLGATE_INTERNAL_SECRET": "s" * 32,
                  "INGRESS_POLICY_HASH_KEY": "h" * 32}
    with pytest.raises(ConfigError) as err:
        Settings.from_env({**production, "INGRESS_ADMIN_TOKEN": "a" * 31})
    assert "INGRESS_ADMIN_TOKEN must be at least 32 characters outside development" in str(err.value)
    assert Settings.from_env({**production, "INGRESS_ADMIN_TOKEN": "a" * 32}).admin_token == "a" * 32
    assert Settings.from_env({"INGRESS_ADMIN_TOKEN": "short"}).admin_token == "short"  # development


def test_deciding_dlp_in_process_needs_policys_hash_key_outside_development() -> None:
    production = {"TOLLGATE_ENV": "production", "TOLLGATE_INTERNAL_SECRET": "s" * 32, "INGRESS_ADMIN_TOKEN": "a" * 32}
    with pytest.raises(ConfigError) as err:
        Settings.from_env(production)
    assert "INGRESS_POLICY_HASH_KEY (= policy's POLICY_HASH_KEY) is required outside development" in str(err.value)
    settings = Settings.from_env({**production, "INGRESS_POLICY_HASH_KEY": "h" * 32})
    assert settings.policy_in_process and settings.policy_hash_key == "h" * 32
    assert "h" * 32 not in repr(settings)  # a secret, never in a log line of the settings
    # Asking policy per request needs no key here (policy hashes), and development falls back to the public one.
    assert not Settings.from_env({**production, "INGRESS_POLICY_IN_PROCESS": "false"}).policy_in_process
    assert Settings.from_env({"INGRESS_ADMIN_TOKEN": "x"}).policy_hash_key == ""
