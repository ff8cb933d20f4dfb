from __future__ import annotations

import pytest
from tollgate_common.config import ConfigError, EnvReader, load_or_exit


def test_reads_prefixed_values_with_defaults() -> None:
    env = EnvReader("billing", {"BILLING_GRPC_PORT": "6000", "BILLING_DEBUG": "yes"})
    assert env.port("GRPC_PORT", 1) == 6000
    assert env.bool("DEBUG", False) is True
    assert env.str("DATABASE_URL", "sqlite:///x") == "sqlite:///x"
    env.check()


def test_collects_every_problem_at_once() -> None:
    env = EnvReader("router", {"ROUTER_GRPC_PORT": "seventy", "ROUTER_TIMEOUT": "-1", "ROUTER_FLAG": "maybe"})
    env.port("GRPC_PORT", 1)
    env.float("TIMEOUT", 1.0, minimum=0.0)
    env.bool("FLAG", False)
    env.str("TOKEN", required=True)
    with pytest.raises(ConfigError) as err:
        env.check()
    assert len(err.value.problems) == 4
    assert "ROUTER_GRPC_PORT='seventy' is not an integer" in err.value.problems


def test_load_or_exit_exits_2_with_a_readable_message(capsys: pytest.CaptureFixture[str]) -> None:
    def bad() -> None:
        raise ConfigError(["INGRESS_ADMIN_TOKEN is required"])

    with pytest.raises(SystemExit) as exit_:
        load_or_exit(bad, "ingress")
    assert exit_.value.code == 2
    assert "INGRESS_ADMIN_TOKEN is required" in capsys.readouterr().err
