"""The deploy files agree with the code: every `codeproxy` command they run parses, every
CODEPROXY_* variable they set is a setting, the images copy every package, and the reverse
proxy points at services that exist. (Docker itself is not run here.)"""

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from codeproxy.cli import build_parser
from executor.settings import ExecutorSettings
from proxy.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
COMPOSE_FILES = sorted(DEPLOY.glob("compose*.yaml"))
UNITS = sorted(DEPLOY.glob("*.service"))


def setting_names() -> set[str]:
    names = set()
    for model in (Settings, ExecutorSettings):
        for name, info in model.model_fields.items():
            names.add(f"CODEPROXY_{name.upper()}")
            alias = info.validation_alias
            for choice in getattr(alias, "choices", []):
                names.add(str(choice))
    return names


def variables_in(text: str) -> set[str]:
    return set(re.findall(r"\bCODEPROXY_[A-Z0-9_]+\b", text))


def codeproxy_commands(compose: dict[str, Any]) -> list[list[str]]:
    commands = []
    for service in compose["services"].values():
        command = service.get("command")
        if isinstance(command, list) and command and command[0] == "codeproxy":
            commands.append(command[1:])
    return commands


def test_every_variable_in_the_docs_and_deploy_files_is_a_setting() -> None:
    known = setting_names()
    files = [*DEPLOY.iterdir(), REPO / "README.md"]
    for path in files:
        unknown = variables_in(path.read_text()) - known
        assert not unknown, f"{path.name} names unknown settings: {sorted(unknown)}"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_files(path: Path) -> None:
    compose = yaml.safe_load(path.read_text())
    services = compose["services"]
    parser = build_parser()
    for args in codeproxy_commands(compose):
        parser.parse_args(args)  # exits (fails the test) on an unknown command
    for service in services.values():
        for dependency in service.get("depends_on", []):
            assert dependency in services
        build = service.get("build")
        if build is not None:
            assert (path.parent / build["context"] / build["dockerfile"]).exists()
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (path.parent / source).exists(), volume
            else:
                assert source in compose.get("volumes", {}), volume


def test_the_scaled_shape() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.scale.yaml").read_text())
    services = compose["services"]
    proxies = [n for n in services if n.startswith("proxy-")]
    executors = [n for n in services if n.startswith("executor-")]
    assert len(proxies) == 2 and len(executors) == 2
    for name in proxies:
        env = services[name]["environment"]
        urls = env["CODEPROXY_EXECUTOR_URL"].split(",")
        assert [u.split("//")[1].split(":")[0] for u in urls] == executors
        assert env["CODEPROXY_DATABASE_URL"].startswith("postgresql+asyncpg://")
        assert env["CODEPROXY_BLOB_URL"].startswith("s3://")
        assert env["CODEPROXY_AUTO_MIGRATE"] == "false"
        assert "migrate" in services[name]["depends_on"]
    assert services["migrate"]["command"] == ["codeproxy", "db", "upgrade"]
    # The reverse proxy sends traffic to exactly the proxy replicas.
    caddy = (DEPLOY / "Caddyfile").read_text()
    upstreams = re.search(r"reverse_proxy ([^{]+)\{", caddy)
    assert upstreams is not None
    assert sorted(u.split(":")[0] for u in upstreams.group(1).split()) == sorted(proxies)
    assert "flush_interval -1" in caddy  # streamed replies are not buffered


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_systemd_units_run_real_commands(path: Path) -> None:
    text = path.read_text()
    [start] = re.findall(r"^ExecStart=(.+)$", text, re.M)
    argv = shlex.split(start)
    assert argv[0] == "/opt/codeproxy/.venv/bin/codeproxy"
    build_parser().parse_args(argv[1:])
    for required in re.findall(r"^Requires=(.+)$", text, re.M):
        for unit in required.split():
            assert (DEPLOY / unit).exists(), unit


@pytest.mark.parametrize("name", ["proxy.Dockerfile", "executor.Dockerfile"])
def test_images_copy_every_package(name: str) -> None:
    text = (DEPLOY / name).read_text()
    for package in ("codeproxy", "proxy", "executor", "storage"):
        assert f"COPY {package} {package}" in text, package
