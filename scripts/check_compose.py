"""Static checks of docker-compose.yml against the Dockerfile (PyYAML, no engine needed).

Usage (from the repository root)::

    .venv/bin/python scripts/check_compose.py [docker-compose.yml] [Dockerfile]

Prints one ``PASS``/``FAIL`` line per check; exit status 1 if any failed. ``container_test.py``
runs the same checks (:func:`checks`) before it brings the demo profile up with podman-compose.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"

IMAGE = "venice-e2ee-proxy:local"
DEFAULT_SERVICES = {"proxy", "app"}
DEMO_SERVICES = {"simulator", "proxy-demo", "app-demo"}
# The services that run the proxy or the simulator; the example apps only borrow the image.
HARDENED = ("proxy", "simulator", "proxy-demo")


class CheckError(AssertionError):
    """One compose check failed; the message says what."""


def dockerfile_healthcheck(path: Path = DOCKERFILE) -> list[str]:
    """The exec-form command of the Dockerfile's HEALTHCHECK (continuation lines joined)."""
    joined = ""
    collecting = False
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped.startswith("HEALTHCHECK"):
            collecting = True
        if collecting:
            if stripped.startswith("#"):
                continue
            joined += stripped.removesuffix("\\") + " "
            if not stripped.endswith("\\"):
                break
    _, found, exec_form = joined.partition(" CMD ")
    if not found:
        raise CheckError("the Dockerfile has no exec-form HEALTHCHECK")
    command = json.loads(exec_form)
    if not isinstance(command, list) or not all(isinstance(part, str) for part in command):
        raise CheckError(f"HEALTHCHECK CMD is not a list of strings: {exec_form}")
    return command


def load(path: Path = COMPOSE) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(loaded, dict) or not isinstance(loaded.get("services"), dict):
        raise CheckError(f"{path.name}: no services mapping")
    return loaded


def _service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    found = compose["services"].get(name)
    if not isinstance(found, dict):
        raise CheckError(f"no service {name!r}")
    return found


def _env(compose: dict[str, Any], name: str) -> dict[str, str]:
    environment = _service(compose, name).get("environment", {})
    if not isinstance(environment, dict):
        raise CheckError(f"{name}: environment is not a mapping")
    return {str(key): str(value) for key, value in environment.items()}


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckError(message)


def check_services_and_profiles(compose: dict[str, Any], _: list[str]) -> None:
    services = compose["services"]
    _expect(
        set(services) == DEFAULT_SERVICES | DEMO_SERVICES,
        f"services are {sorted(services)}",
    )
    for name in DEFAULT_SERVICES:
        _expect("profiles" not in services[name], f"{name} should run without a profile")
    for name in DEMO_SERVICES:
        _expect(services[name].get("profiles") == ["demo"], f"{name} is not in the demo profile")
    for name, spec in services.items():
        _expect(spec.get("image") == IMAGE, f"{name} does not run {IMAGE}")
        _expect(spec.get("build") == ".", f"{name} does not build the Dockerfile beside it")


def check_health_checks(compose: dict[str, Any], healthcheck: list[str]) -> None:
    for name in ("proxy", "proxy-demo"):
        test = _service(compose, name).get("healthcheck", {}).get("test")
        _expect(test == ["CMD", *healthcheck], f"{name}: not the Dockerfile's HEALTHCHECK")
    test = _service(compose, "simulator").get("healthcheck", {}).get("test")
    _expect(
        isinstance(test, list) and test[:1] == ["CMD"] and "127.0.0.1:8001/api/v1/" in test[-1],
        "simulator: no health check on its own port",
    )
    for name in ("proxy", "simulator", "proxy-demo"):
        check = _service(compose, name)["healthcheck"]
        for key in ("interval", "timeout", "retries"):
            _expect(key in check, f"{name}: health check without {key}")


def check_hardening(compose: dict[str, Any], _: list[str]) -> None:
    for name in HARDENED:
        spec = _service(compose, name)
        _expect(spec.get("read_only") is True, f"{name}: root filesystem not read-only")
        _expect(spec.get("cap_drop") == ["ALL"], f"{name}: capabilities not all dropped")
        _expect("cap_add" not in spec, f"{name}: adds capabilities")
        _expect(
            "no-new-privileges:true" in spec.get("security_opt", []),
            f"{name}: no-new-privileges not set",
        )
        _expect("/tmp" in spec.get("tmpfs", []), f"{name}: no tmpfs for /tmp")  # noqa: S108
        _expect(spec.get("user") in (None, "10001", "10001:10001"), f"{name}: overrides USER")
        _expect(not spec.get("privileged"), f"{name}: privileged")


def check_loopback_ports(compose: dict[str, Any], _: list[str]) -> None:
    host_ports: list[str] = []
    for name, spec in compose["services"].items():
        _expect(spec.get("network_mode") != "host", f"{name}: host networking")
        for port in spec.get("ports", []):
            _expect(isinstance(port, str), f"{name}: use the string form for ports")
            parts = port.split(":")
            _expect(
                len(parts) == 3 and parts[0] == "127.0.0.1",
                f"{name}: {port} is published beyond 127.0.0.1",
            )
            host_ports.append(parts[1])
        _expect("expose" not in spec, f"{name}: expose")
    _expect(len(set(host_ports)) == len(host_ports), f"host ports clash: {host_ports}")
    _expect(
        _service(compose, "proxy").get("ports") == ["127.0.0.1:8000:8000"],
        "proxy is not published on 127.0.0.1:8000",
    )
    _expect(bool(_service(compose, "proxy-demo").get("ports")), "proxy-demo is not published")
    for name in ("simulator", "app", "app-demo"):
        _expect(not _service(compose, name).get("ports"), f"{name} should not be published")


def check_demo_wiring(compose: dict[str, Any], _: list[str]) -> None:
    simulator = _service(compose, "simulator")
    _expect(
        simulator.get("command", [])[:2] == ["venice-e2ee-proxy", "simulate"]
        and simulator["command"][-2:] == ["--port", "8001"],
        "simulator: not `venice-e2ee-proxy simulate ... --port 8001`",
    )
    proxy_demo = _env(compose, "proxy-demo")
    _expect(
        proxy_demo.get("VENICE_PROXY_UPSTREAM__BASE_URL") == "http://simulator:8001/api/v1",
        "proxy-demo: upstream is not the simulator",
    )
    allowed = json.loads(proxy_demo.get("VENICE_PROXY_SERVER__ALLOWED_HOSTS", "[]"))
    _expect("proxy-demo" in allowed, "proxy-demo: its own service name is not an allowed Host")
    _expect(
        _env(compose, "app-demo").get("OPENAI_BASE_URL") == "http://proxy-demo:8000/v1",
        "app-demo: does not use proxy-demo",
    )
    for client, server in (("proxy-demo", "simulator"), ("app-demo", "proxy-demo")):
        _expect(
            _service(compose, client).get("depends_on")
            == {server: {"condition": "service_healthy"}},
            f"{client}: does not wait for a healthy {server}",
        )
    _expect(
        "/chat/completions" in " ".join(_service(compose, "app-demo").get("command", [])),
        "app-demo: sends no chat request",
    )


CHECKS: tuple[tuple[str, Callable[[dict[str, Any], list[str]], None]], ...] = (
    ("compose: services, demo profile, one locally built image", check_services_and_profiles),
    ("compose: health checks (proxy ones = the Dockerfile's HEALTHCHECK)", check_health_checks),
    ("compose: read-only, capabilities dropped, no-new-privileges", check_hardening),
    ("compose: ports published on 127.0.0.1 only", check_loopback_ports),
    ("compose: demo profile wiring app-demo -> proxy-demo -> simulator", check_demo_wiring),
)


def checks(
    compose_path: Path = COMPOSE, dockerfile_path: Path = DOCKERFILE
) -> list[tuple[str, str | None]]:
    """Every check as (name, None) when it passed or (name, what is wrong)."""
    try:
        compose = load(compose_path)
        healthcheck = dockerfile_healthcheck(dockerfile_path)
    except (OSError, ValueError, yaml.YAMLError, CheckError) as exc:
        return [("compose: parse docker-compose.yml and the Dockerfile", str(exc))]
    results: list[tuple[str, str | None]] = []
    for name, check in CHECKS:
        try:
            check(compose, healthcheck)
        except (CheckError, KeyError, TypeError, AttributeError, ValueError) as exc:
            results.append((name, str(exc) or type(exc).__name__))
        else:
            results.append((name, None))
    return results


def main(argv: list[str]) -> int:
    compose_path = Path(argv[0]) if argv else COMPOSE
    dockerfile_path = Path(argv[1]) if len(argv) > 1 else DOCKERFILE
    results = checks(compose_path, dockerfile_path)
    for name, problem in results:
        print(f"PASS {name}" if problem is None else f"FAIL {name}: {problem}")
    failed = sum(problem is not None for _, problem in results)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
