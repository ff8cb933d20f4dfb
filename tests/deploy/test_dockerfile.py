"""The root Dockerfile, checked without Docker (none on CI or this machine).

Its own shell steps run here against the real tree: the SERVICE check accepts exactly the services the chart
deploys and refuses anything else with a message naming them; the image's command starts the chosen service's module
as the container's main process; the image's environment makes every service listen on all interfaces, read by the
service's own ``Settings.from_env``. The uv and protoc steps themselves are verified by running them outside Docker
(see deploy/helm/tollgate/README.md); they need the network and minutes, too much for this suite.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
CHART_VALUES = yaml.safe_load((ROOT / "deploy/helm/tollgate/values.yaml").read_text())
CHART_SERVICES = sorted(CHART_VALUES["services"])
#: What a service needs besides the image's environment before its settings load (not listening-related).
REQUIRED = {"ingress": {"INGRESS_ADMIN_TOKEN": "t"}, "router": {"ROUTER_MOCK_BASE_URL": "http://127.0.0.1:1"}}


@dataclass
class Stage:
    """One FROM ... block: its name and its instructions, continuation lines joined, comments dropped."""

    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def stages() -> list[Stage]:
    found: list[Stage] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1]  # as Docker does: the backslash and the newline go
            continue
        keyword, _, args = (pending + line).strip().partition(" ")
        pending = ""
        if keyword == "FROM":
            alias = re.search(r"\s+AS\s+(\S+)$", args, re.IGNORECASE)
            found.append(Stage(alias.group(1) if alias else "final"))
        elif found:
            found[-1].instructions.append((keyword, args.strip()))
    return found


def stage(name: str) -> Stage:
    return next(s for s in stages() if s.name == name)


def service_check() -> str:
    """The build stage's RUN that validates SERVICE (the one that prints the choices)."""
    (script,) = [run for run in stage("build").all("RUN") if "not a Tollgate service" in run]
    return script


def image_environment(service: str) -> dict[str, str]:
    """The final stage's ENV for ``--build-arg SERVICE=<service>`` (ARG substitution only; PATH left out)."""
    env: dict[str, str] = {}
    for args in stage("final").all("ENV"):
        for key, value in re.findall(r"(\w+)=(\S+)", args):
            env[key] = value.replace("${SERVICE}", service)
    env.pop("PATH", None)
    return env


def run_check(service: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", service_check()],
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], "SERVICE": service},
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("service", CHART_SERVICES)
def test_every_chart_service_builds_its_own_workspace_package(service: str) -> None:
    assert run_check(service).returncode == 0, run_check(service).stderr
    # `uv sync --package tollgate-$SERVICE` installs the member of that name.
    (sync,) = [run for run in stage("build").all("RUN") if "uv sync" in run]
    assert '--package "tollgate-$SERVICE"' in sync and "--no-dev" in sync and "--frozen" in sync
    project = tomllib.loads((ROOT / "services" / service / "pyproject.toml").read_text())["project"]
    assert project["name"] == f"tollgate-{service}"


def test_every_image_ships_the_tollgate_ops_command() -> None:
    """The chart's ops Job runs ``tollgate`` from the service image: uv installs tollgate-ops alongside, and that
    package declares the console script (uv checked offline that two --package flags install both)."""
    (sync,) = [run for run in stage("build").all("RUN") if "uv sync" in run]
    assert "--package tollgate-ops" in sync.split("&&")[-1]
    project = tomllib.loads((ROOT / "libs/tollgate-ops/pyproject.toml").read_text())["project"]
    assert project["name"] == "tollgate-ops" and project["scripts"]["tollgate"] == "tollgate_ops.cli:main"


@pytest.mark.parametrize("bad", ["", "nope", "INGRESS", "../libs", "ingress;true", "tollgate_ingress"])
def test_an_unknown_service_stops_the_build_naming_the_choices(bad: str) -> None:
    result = run_check(bad)
    assert result.returncode != 0
    assert f"SERVICE='{bad}' is not a Tollgate service" in result.stderr
    assert result.stderr.split("Use one of:")[1].split() == CHART_SERVICES


@pytest.mark.parametrize("service", CHART_SERVICES)
def test_the_command_execs_the_chosen_service(service: str, tmp_path: Path) -> None:
    """CMD runs ``python -m tollgate_<service>`` as the same process (exec), so SIGTERM reaches Python itself."""
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\necho "$$ $*"\n')
    fake.chmod(0o755)
    (cmd,) = stage("final").all("CMD")
    env = {**image_environment(service), "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    process = subprocess.Popen(json.loads(cmd), env=env, stdout=subprocess.PIPE, text=True)
    out, _ = process.communicate(timeout=30)
    assert out.split() == [str(process.pid), "-m", f"tollgate_{service}"]
    assert importlib.util.find_spec(f"tollgate_{service}.__main__") is not None


@pytest.mark.parametrize("service", CHART_SERVICES)
def test_the_image_listens_on_every_interface(service: str) -> None:
    """Without the chart (plain ``docker run``) loopback would be unreachable from outside the container; ingress
    and router default to 127.0.0.1 for laptops, so the image must override it."""
    config = importlib.import_module(f"tollgate_{service}.config")
    settings = config.Settings.from_env({**image_environment(service), **REQUIRED.get(service, {})})
    assert (settings.host if service == "ingress" else settings.grpc_host) == "0.0.0.0"


def test_the_image_user_is_the_one_the_chart_runs_as() -> None:
    """Numeric, so Kubernetes can verify runAsNonRoot, and the same IDs the chart's securityContext names."""
    pod = CHART_VALUES["podSecurityContext"]
    assert stage("final").all("USER") == [f"{pod['runAsUser']}:{pod['runAsGroup']}"]
