"""The command line's own logic, called in-process: the arguments each command takes, the
settings it builds, the uvicorn configuration, the exit codes and the lines it prints and logs.

Nothing here serves: where a command would start a server, fork or run the simulator, the
function that would is replaced by a recorder (the real servers are driven by test_cli.py, in a
subprocess as a user runs them)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import uvicorn
from pydantic import SecretStr

import proxy.cli.verify as verify_module
import proxy.http.services as services_module
import proxy.simulator as simulator_module
from proxy.attestation import AttestationPolicy, AttestationReport
from proxy.attestation.report import CheckResult
from proxy.cli import main as cli
from proxy.core.errors import AttestationError, UpstreamError
from proxy.http.header_deadline import HeaderDeadlineProtocol
from proxy.http.services import attestation_policy
from proxy.http.shutdown import DrainingServer
from proxy.observability.logs import configure_logging, get_logger
from proxy.service.catalog import ModelInfo
from proxy.service.trust_state import FORMAT, STATE_FILE, TrustState, default_state_dir
from proxy.settings import (
    DEFAULT_BASE_URL,
    Settings,
    SettingsError,
    load_settings,
    resolve_api_key,
    weakenings,
)
from proxy.simulator import SIMULATED_MEASUREMENTS
from tests.conftest import _LOG_BUFFER
from tests.support.fixtures import FIXTURES_DIR

GLM = FIXTURES_DIR / "attestations" / "attestation_glm_5_1.json"
KEY = "venice-key-for-cli-tests"
SIGNALS = [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGTERM, id="SIGTERM")]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("VENICE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in handlers.items():
        signal.signal(signum, handler)
    # A command configured logging: give it back to the suite's captured stream.
    configure_logging("debug", "json", stream=_LOG_BUFFER)


@pytest.fixture
def logging_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Each ``configure_logging(level, format)`` a command makes; the lines go to the suite's
    captured stream (read with ``log_lines``)."""
    calls: list[tuple[str, str]] = []

    def record(level: Any = "info", fmt: Any = "auto", stream: Any = None) -> bool:
        calls.append((level, fmt))
        return configure_logging(level, fmt, stream=_LOG_BUFFER)

    monkeypatch.setattr(cli, "configure_logging", record)
    return calls


def make(**sections: Any) -> Settings:
    """Settings with these sections (the environment holds no VENICE_ variable here)."""
    return load_settings(overrides=sections)


def records(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines if line.startswith("{")]


def events(lines: list[str]) -> dict[str, dict[str, Any]]:
    return {record["event"]: record for record in records(lines)}


def state_home(tmp_path: Path) -> Path:
    return tmp_path / "state" / "venice-e2ee-proxy"


# --- the arguments ------------------------------------------------------------------------------


def test_each_command_s_defaults() -> None:
    parse = cli._parser().parse_args
    assert vars(parse(["serve"])) == {
        "command": "serve",
        "host": None,
        "port": None,
        "config": None,
    }
    assert vars(parse(["simulate"])) == {"command": "simulate", "host": "127.0.0.1", "port": 8001}
    assert vars(parse(["verify"])) == {
        "command": "verify",
        "model": None,
        "json": False,
        "config": None,
        "offline": False,
        "attestation": None,
        "nonce": None,
        "collateral": None,
        "nras_response": None,
        "nras_jwks": None,
        "at": None,
        "no_dcap": False,
        "no_nras": False,
        "allow_gateway": False,
    }
    assert vars(parse(["pins", "m"])) == {
        "command": "pins",
        "model": "m",
        "config": None,
        "offline": False,
        "attestation": None,
        "nonce": None,
    }
    assert vars(parse(["trust", "show"])) == {
        "command": "trust",
        "action": "show",
        "model": None,
        "level": "gateway",
        "config": None,
    }
    assert vars(parse(["models"])) == {"command": "models", "config": None, "json": False}


def test_each_command_s_options_take_their_types() -> None:
    parse = cli._parser().parse_args
    serve = parse(["serve", "--host", "::1", "--port", "9000", "--config", "p.toml"])
    assert (serve.host, serve.port, serve.config) == ("::1", 9000, Path("p.toml"))
    assert vars(parse(["simulate", "--host", "0.0.0.0", "--port", "9001"])) == {
        "command": "simulate",
        "host": "0.0.0.0",
        "port": 9001,
    }
    every = parse(
        [
            "verify",
            "m",
            "--json",
            "--config",
            "c.toml",
            "--offline",
            "--attestation",
            "a.json",
            "--nonce",
            "ab" * 32,
            "--collateral",
            "c.json",
            "--nras-response",
            "n.json",
            "--nras-jwks",
            "j.json",
            "--at",
            "1700000000",
            "--no-dcap",
            "--no-nras",
            "--allow-gateway",
        ]
    )
    assert vars(every) == {
        "command": "verify",
        "model": "m",
        "json": True,
        "config": Path("c.toml"),
        "offline": True,
        "attestation": Path("a.json"),
        "nonce": "ab" * 32,
        "collateral": Path("c.json"),
        "nras_response": Path("n.json"),
        "nras_jwks": Path("j.json"),
        "at": 1700000000,
        "no_dcap": True,
        "no_nras": True,
        "allow_gateway": True,
    }
    pins = parse(["pins", "m", "--config", "c.toml", "--offline", "--attestation", "a.json"])
    assert (pins.config, pins.offline, pins.attestation) == (Path("c.toml"), True, Path("a.json"))
    assert parse(["pins", "m", "--nonce", "cd"]).nonce == "cd"
    trust = parse(["trust", "accept", "m", "--level", "enclave", "--config", "c.toml"])
    assert (trust.action, trust.model, trust.level, trust.config) == (
        "accept",
        "m",
        "enclave",
        Path("c.toml"),
    )
    assert parse(["trust", "accept", "m", "--level", "gateway"]).level == "gateway"
    models = parse(["models", "--config", "c.toml", "--json"])
    assert (models.config, models.json) == (Path("c.toml"), True)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["serve", "--port", "eighty"],
        ["simulate", "--port", "x"],
        ["verify", "--at", "yesterday"],
        ["pins"],
        ["trust"],
        ["trust", "forget"],
        ["trust", "accept", "m", "--level", "host"],
        ["launch"],
    ],
)
def test_bad_arguments_are_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(argv)
    assert caught.value.code == 2
    assert capsys.readouterr().err.startswith("usage: venice-e2ee-proxy")


HELP = {
    (): [
        "Local OpenAI-compatible privacy proxy for Venice AI's E2EE models.",
        "serve run the proxy",
        "simulate run the simulated Venice server",
        "verify attest a model and print the report",
        "pins print a model's measurements as [attestation.pins]",
        "trust show or accept the remembered trust levels",
        "models list the upstream's models",
    ],
    ("serve",): [
        "--host HOST bind address (default 127.0.0.1)",
        "--port PORT port (default 8000)",
        "--config CONFIG TOML settings file",
    ],
    ("verify",): [
        "model model id (online; optional offline)",
        "--json print JSON",
        "--offline check a saved attestation",
        "--attestation ATTESTATION saved attestation (offline)",
        "--nonce NONCE the 64-hex nonce it was fetched with (offline)",
        "--collateral COLLATERAL DCAP collateral JSON (offline)",
        "--nras-response NRAS_RESPONSE saved NRAS answer (offline)",
        "--nras-jwks NRAS_JWKS saved NRAS JWKS (offline)",
        "--at AT verify as of this unix time (offline)",
        "--no-dcap offline: knowingly skip DCAP (else no --collateral is a failure)",
        "--no-nras offline: knowingly skip NRAS (else no --nras-response is a failure)",
        "--allow-gateway accept gateway trust for this check "
        '(as attestation.gateway_models = "allow")',
    ],
    ("pins",): [
        "model model id",
        "--offline read a saved attestation",
        "--attestation ATTESTATION saved attestation (offline)",
        "--nonce NONCE the 64-hex nonce it was fetched with (offline)",
    ],
    ("trust",): [
        "usage: venice-e2ee-proxy trust [-h] [--level {gateway,enclave}] [--config CONFIG] "
        "{show,accept} [model]",
        "model model id (accept)",
    ],
}


@pytest.mark.parametrize("command", list(HELP))
def test_help_describes_every_option(
    command: tuple[str, ...], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # one line per option
    with pytest.raises(SystemExit) as caught:
        cli.main([*command, "--help"])
    assert caught.value.code == 0
    text = " " + " ".join(capsys.readouterr().out.split()) + " "
    assert text.startswith(f" usage: {' '.join(['venice-e2ee-proxy', *command])} ")
    for line in HELP[command]:
        assert f" {line} " in text


@pytest.mark.parametrize("command", ["serve", "simulate", "verify", "pins", "trust", "models"])
def test_main_runs_the_command_named(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[tuple[str, Any]] = []

    def handler(name: str) -> Callable[[Any], int]:
        def run(args: Any) -> int:
            ran.append((name, args))
            return 40 + len(ran)

        return run

    for name in ("serve", "simulate", "verify", "pins", "trust", "models"):
        monkeypatch.setattr(cli, f"cmd_{name}", handler(name))
    argv = {"pins": ["pins", "m"], "trust": ["trust", "show"]}.get(command, [command])
    assert cli.main(argv) == 41
    assert [name for name, _ in ran] == [command]
    assert ran[0][1].command == command


# --- settings and the API key ---------------------------------------------------------------------


def test_a_bad_setting_is_one_line_on_stderr_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VENICE_PROXY_ATTESTATION__DCAP", "sometimes")
    with pytest.raises(SettingsError) as expected:
        load_settings()
    with pytest.raises(SystemExit) as caught:
        cli._load(None)
    assert caught.value.code == 2
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__
    assert capsys.readouterr().err == f"venice-e2ee-proxy: {expected.value}\n"


def test_load_reads_the_config_file_and_the_overrides(tmp_path: Path) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text('[server]\nport = 9123\nhost = "127.0.0.2"\n')
    settings = cli._load(path, {"server": {"port": 9124}})
    assert (settings.server.host, settings.server.port) == ("127.0.0.2", 9124)
    assert cli._load(path).server.port == 9123
    assert cli._load(None).server.port == 8000


def test_an_unreadable_key_file_is_one_line_on_stderr_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = load_settings(overrides={"upstream": {"api_key_file": tmp_path / "missing"}})
    with pytest.raises(SettingsError) as expected:
        resolve_api_key(settings)
    with pytest.raises(SystemExit) as caught:
        cli._api_key(settings)
    assert caught.value.code == 2
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__
    assert capsys.readouterr().err == f"venice-e2ee-proxy: {expected.value}\n"


def test_the_api_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli._api_key(Settings()) is None
    monkeypatch.setenv("VENICE_API_KEY", KEY)
    key = cli._api_key(Settings())
    assert key is not None
    assert key.get_secret_value() == KEY


# --- a signal is an orderly stop ------------------------------------------------------------------


@pytest.mark.parametrize("signum", SIGNALS)
def test_a_signal_ends_the_block_quietly_and_the_handlers_come_back(
    signum: signal.Signals,
) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    reached: list[str] = []
    with cli._a_signal_stop_is_success():
        reached.append("in")
        signal.raise_signal(signum)
        reached.append("after the signal")
    assert reached == ["in"]
    assert {s: signal.getsignal(s) for s in before} == before


def test_other_errors_pass_through_and_the_handlers_come_back() -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    inside: list[Any] = []

    def fail() -> None:
        with cli._a_signal_stop_is_success():
            inside.extend(signal.getsignal(s) for s in before)
            raise ValueError("not a signal")

    with pytest.raises(ValueError, match="not a signal"):
        fail()
    assert inside[0] is inside[1]
    assert inside[0] not in before.values()
    assert {s: signal.getsignal(s) for s in before} == before


# --- uvicorn and the server -----------------------------------------------------------------------


def test_the_uvicorn_config_follows_the_settings(tmp_path: Path) -> None:
    app = object()
    plain = cli._uvicorn_config(
        app, make(server={"host": "0.0.0.0", "port": 9443}, logging={"level": "debug"})
    )
    assert plain.app is app
    assert (plain.host, plain.port, plain.log_level) == ("0.0.0.0", 9443, "debug")
    assert plain.log_config is None  # the proxy's own log configuration stays
    assert plain.access_log is False  # the proxy logs each request itself, without its path
    assert (plain.ssl_certfile, plain.ssl_keyfile) == (None, None)
    assert plain.timeout_graceful_shutdown == 10
    # httptools with the request-header deadline; no client address rewritten from headers
    assert isinstance(plain.http, type)
    assert issubclass(plain.http, HeaderDeadlineProtocol)
    assert plain.http.header_timeout_s == 20.0
    assert plain.proxy_headers is False
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    tls = cli._uvicorn_config(app, make(server={"tls_cert": cert, "tls_key": key}))
    assert (tls.ssl_certfile, tls.ssl_keyfile) == (str(cert), str(key))
    assert (tls.host, tls.port, tls.log_level) == ("127.0.0.1", 8000, "info")


def test_the_start_up_heap_is_collected_then_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    import gc

    done: list[str] = []

    def collect() -> int:
        done.append("collect")
        return 0

    monkeypatch.setattr(gc, "collect", collect)
    monkeypatch.setattr(gc, "freeze", lambda: done.append("freeze"))
    cli.freeze_startup_heap()
    assert done == ["collect", "freeze"]


def test_the_server_drains_with_the_app_s_controller(monkeypatch: pytest.MonkeyPatch) -> None:
    frozen: list[bool] = []
    monkeypatch.setattr(cli, "freeze_startup_heap", lambda: frozen.append(True))
    drain = object()
    app = SimpleNamespace(state=SimpleNamespace(services=SimpleNamespace(drain=drain)))
    settings = make(server={"port": 9555, "shutdown_grace_s": 7.5})
    server = cli._server(app, settings)
    assert frozen == [True]
    assert isinstance(server, DrainingServer)
    assert server.config.app is app  # type: ignore[comparison-overlap]
    assert server.config.port == 9555
    assert server._drain is drain
    assert server._grace_s == 7.5


# --- serve ----------------------------------------------------------------------------------------


@dataclass
class Served:
    """What ``serve`` built and ran, in place of a server."""

    apps: list[tuple[Settings, Any, dict[str, Any]]] = field(default_factory=list)
    servers: list[tuple[Any, Settings]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    demos: list[tuple[Settings, bool]] = field(default_factory=list)
    workers: list[tuple[Settings, SecretStr | None]] = field(default_factory=list)
    on_run: Callable[[], None] = lambda: None


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Served:
    seen = Served()

    def create_app(settings: Settings, **kwargs: Any) -> object:
        app = object()
        seen.apps.append((settings, app, kwargs))
        return app

    class Server:
        def run(self, **kwargs: Any) -> None:
            seen.runs.append(kwargs)
            seen.on_run()

    def server(app: Any, settings: Settings) -> Server:
        seen.servers.append((app, settings))
        return Server()

    async def serve_demo(settings: Settings, *, banner: bool) -> None:
        seen.demos.append((settings, banner))
        seen.on_run()

    def serve_workers(settings: Settings, api_key: SecretStr | None) -> int:
        seen.workers.append((settings, api_key))
        return 7

    monkeypatch.setattr(cli, "create_app", create_app)
    monkeypatch.setattr(cli, "_server", server)
    monkeypatch.setattr(cli, "_serve_demo", serve_demo)
    monkeypatch.setattr(cli, "_serve_workers", serve_workers)
    return seen


def _keyed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VENICE_API_KEY", KEY)


def test_serve_with_a_key_builds_the_app_and_runs_one_server(
    served: Served,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    logging_calls: list[tuple[str, str]],
    log_lines: Callable[[], list[str]],
) -> None:
    _keyed(monkeypatch)
    assert cli.main(["serve"]) == 0
    assert logging_calls == [("info", "auto")]
    [(settings, app, kwargs)] = served.apps
    assert kwargs["api_key"].get_secret_value() == KEY
    assert list(kwargs) == ["api_key"]
    assert served.servers == [(app, settings)]
    assert served.runs == [{}]
    assert served.demos == []
    assert served.workers == []
    assert settings.attestation.state_dir == state_home(tmp_path)
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8000)
    assert settings.upstream.base_url == DEFAULT_BASE_URL
    logged = events(log_lines())
    assert "no_api_key" not in logged
    assert "trust_state_in_memory" not in logged


def test_serve_takes_its_logging_settings(
    served: Served, monkeypatch: pytest.MonkeyPatch, logging_calls: list[tuple[str, str]]
) -> None:
    _keyed(monkeypatch)
    monkeypatch.setenv("VENICE_PROXY_LOGGING__LEVEL", "error")
    monkeypatch.setenv("VENICE_PROXY_LOGGING__FORMAT", "json")
    assert cli.main(["serve"]) == 0
    assert logging_calls == [("error", "json")]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--host", "0.0.0.0", "--port", "9100"], ("0.0.0.0", 9100)),
        (["--port", "9100"], ("127.0.0.9", 9100)),
        (["--host", "::1"], ("::1", 8009)),
        ([], ("127.0.0.9", 8009)),
    ],
)
def test_serve_s_host_and_port_win_over_the_settings_one_at_a_time(
    argv: list[str],
    expected: tuple[str, int],
    served: Served,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    logging_calls: list[tuple[str, str]],
) -> None:
    _keyed(monkeypatch)
    config = tmp_path / "proxy.toml"
    config.write_text('[server]\nhost = "127.0.0.9"\nport = 8009\napi_keys = ["local"]\n')
    assert cli.main(["serve", "--config", str(config), *argv]) == 0
    [(_, settings)] = served.servers
    assert (settings.server.host, settings.server.port) == expected
    assert [key.get_secret_value() for key in settings.server.api_keys] == ["local"]


def test_serve_with_a_bad_setting_exits_2(
    served: Served, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VENICE_PROXY_SERVER__WORKERS", "0")
    with pytest.raises(SystemExit) as caught:
        cli.main(["serve"])
    assert caught.value.code == 2
    assert capsys.readouterr().err.startswith("venice-e2ee-proxy: invalid setting server.workers")
    assert not served.servers
    assert not served.demos


def test_serve_with_an_unreadable_key_file_exits_2(
    served: Served,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    logging_calls: list[tuple[str, str]],
) -> None:
    monkeypatch.setenv("VENICE_PROXY_UPSTREAM__API_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(SystemExit) as caught:
        cli.main(["serve"])
    assert caught.value.code == 2
    assert capsys.readouterr().err.startswith("venice-e2ee-proxy: upstream.api_key_file: ")
    assert not served.servers
    assert not served.demos


@pytest.mark.parametrize("signum", SIGNALS)
def test_serve_stopped_by_a_signal_returns_0(
    signum: signal.Signals,
    served: Served,
    monkeypatch: pytest.MonkeyPatch,
    logging_calls: list[tuple[str, str]],
) -> None:
    _keyed(monkeypatch)
    served.on_run = lambda: signal.raise_signal(signum)
    assert cli.main(["serve"]) == 0
    assert served.runs == [{}]


def test_serve_with_several_workers_hands_over_to_them(
    served: Served, monkeypatch: pytest.MonkeyPatch, logging_calls: list[tuple[str, str]]
) -> None:
    _keyed(monkeypatch)
    monkeypatch.setenv("VENICE_PROXY_SERVER__WORKERS", "2")
    assert cli.main(["serve"]) == 7  # what the workers' parent returns
    [(settings, key)] = served.workers
    assert settings.server.workers == 2
    assert key is not None
    assert key.get_secret_value() == KEY
    assert not served.apps
    assert not served.servers


def test_serve_without_a_key_runs_the_demo_with_a_banner_at_a_terminal(
    served: Served,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    logging_calls: list[tuple[str, str]],
    log_lines: Callable[[], list[str]],
) -> None:
    monkeypatch.setenv("VENICE_PROXY_LOGGING__FORMAT", "console")
    assert cli.main(["serve"]) == 0
    [(settings, banner)] = served.demos
    assert banner is True
    assert settings.attestation.state_dir == state_home(tmp_path)
    assert not served.apps
    assert not served.servers
    assert not served.workers
    assert "no_api_key" not in " ".join(log_lines())


def test_serve_without_a_key_and_json_logs_runs_the_demo_without_the_banner(
    served: Served, monkeypatch: pytest.MonkeyPatch, logging_calls: list[tuple[str, str]]
) -> None:
    monkeypatch.setenv("VENICE_PROXY_LOGGING__FORMAT", "json")
    assert cli.main(["serve"]) == 0
    assert [banner for _, banner in served.demos] == [False]


@pytest.mark.parametrize("signum", SIGNALS)
def test_the_demo_stopped_by_a_signal_returns_0(
    signum: signal.Signals,
    served: Served,
    logging_calls: list[tuple[str, str]],
) -> None:
    served.on_run = lambda: signal.raise_signal(signum)
    assert cli.main(["serve"]) == 0
    assert len(served.demos) == 1


def test_serve_without_a_key_against_another_upstream_is_no_demo_and_says_so(
    served: Served,
    monkeypatch: pytest.MonkeyPatch,
    logging_calls: list[tuple[str, str]],
    log_lines: Callable[[], list[str]],
) -> None:
    upstream = "http://127.0.0.1:9/api/v1"
    monkeypatch.setenv("VENICE_PROXY_UPSTREAM__BASE_URL", upstream)
    assert cli.main(["serve"]) == 0
    assert served.demos == []
    [(_, _, kwargs)] = served.apps
    assert kwargs == {"api_key": None}
    assert events(log_lines())["no_api_key"]["upstream"] == upstream


def test_serve_with_a_state_dir_it_cannot_write_keeps_trust_in_memory_and_says_so(
    served: Served,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    logging_calls: list[tuple[str, str]],
    log_lines: Callable[[], list[str]],
) -> None:
    _keyed(monkeypatch)
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("VENICE_PROXY_ATTESTATION__STATE_DIR", str(tmp_path / "file" / "state"))
    assert cli.main(["serve"]) == 0
    [(_, settings)] = served.servers
    assert settings.attestation.state_dir is None
    logged = events(log_lines())
    assert logged["trust_state_not_persisted"]["level"] == "error"
    assert logged["trust_state_in_memory"]["level"] == "warning"


# --- the trust state directory --------------------------------------------------------------------


def test_the_state_dir_is_the_configured_one_else_the_default(tmp_path: Path) -> None:
    assert cli._state_dir(Settings()) == default_state_dir() == state_home(tmp_path)
    mine = tmp_path / "mine"
    assert cli._state_dir(make(attestation={"state_dir": mine})) == mine


def test_a_writable_state_dir_is_kept(tmp_path: Path, log_lines: Callable[[], list[str]]) -> None:
    mine = tmp_path / "mine"
    original = make(attestation={"state_dir": mine, "dcap": "off"})
    settings, persisted = cli._with_state_dir(original)
    assert persisted is True
    assert settings.attestation.state_dir == mine
    assert mine.is_dir()
    assert settings.attestation.dcap == "off"  # the rest of the settings is kept
    assert original.attestation.state_dir == mine
    settings, persisted = cli._with_state_dir(Settings())
    assert (settings.attestation.state_dir, persisted) == (state_home(tmp_path), True)
    assert not records(log_lines())


def test_an_unwritable_state_dir_is_dropped_and_logged(
    tmp_path: Path, log_lines: Callable[[], list[str]]
) -> None:
    (tmp_path / "file").write_text("")
    where = tmp_path / "file" / "state"
    settings, persisted = cli._with_state_dir(make(attestation={"state_dir": where}))
    assert persisted is False
    assert settings.attestation.state_dir is None
    [record] = records(log_lines())
    assert record["event"] == "trust_state_not_persisted"
    assert record["level"] == "error"
    assert record["state_dir"] == str(where)
    assert record["detail"] == (
        f"cannot write to {where}: Not a directory; set attestation.state_dir to a writable "
        "directory"
    )


def test_verify_reads_the_default_state_dir_without_creating_it(tmp_path: Path) -> None:
    original = make(logging={"level": "error"})
    settings = cli._with_default_state(original)
    assert settings.attestation.state_dir == state_home(tmp_path)
    assert settings.logging.level == "error"
    assert not (tmp_path / "state").exists()
    mine = tmp_path / "mine"
    assert (
        cli._with_default_state(make(attestation={"state_dir": mine})).attestation.state_dir == mine
    )


# --- the start-up warnings ------------------------------------------------------------------------


def test_a_safe_configuration_warns_of_nothing(log_lines: Callable[[], list[str]]) -> None:
    cli._warn_about(Settings(), SecretStr(KEY))
    cli._warn_about(make(server={"host": "::1"}), SecretStr(KEY), state_persisted=True)
    assert records(log_lines()) == []


def test_every_risky_setting_is_a_warning(log_lines: Callable[[], list[str]]) -> None:
    settings = make(
        server={"host": "0.0.0.0"},
        upstream={"base_url": "http://127.0.0.1:9/api/v1"},
        attestation={"dcap": "off"},
        privacy={"non_e2ee": "passthrough", "passthrough_models": ["plain-a", "plain-b"]},
    )
    cli._warn_about(settings, None, state_persisted=False)
    found = records(log_lines())
    assert all(record["level"] == "warning" for record in found)
    assert [record["event"] for record in found] == [
        "no_api_key",
        "exposed_without_auth",
        "dcap_off",
        "trust_state_in_memory",
        "plaintext_passthrough",
    ]
    by_event = {record["event"]: record for record in found}
    assert by_event["no_api_key"]["upstream"] == "http://127.0.0.1:9/api/v1"
    assert by_event["exposed_without_auth"]["host"] == "0.0.0.0"
    assert by_event["exposed_without_auth"]["detail"] == (
        "listening beyond loopback with no server.api_keys: anyone who can reach this port can "
        "use the Venice key"
    )
    details = dict(weakenings(settings, state_persisted=False))
    assert by_event["dcap_off"]["detail"] == details["dcap_off"]
    assert by_event["trust_state_in_memory"]["detail"] == details["trust_state_in_memory"]
    assert by_event["plaintext_passthrough"]["detail"] == "these models get prompts in plaintext"
    assert by_event["plaintext_passthrough"]["models"] == ["plain-a", "plain-b"]


def test_beyond_loopback_with_local_keys_is_not_exposed(
    log_lines: Callable[[], list[str]],
) -> None:
    cli._warn_about(make(server={"host": "0.0.0.0", "api_keys": ["local"]}), SecretStr(KEY))
    assert records(log_lines()) == []


# --- the demo ------------------------------------------------------------------------------------


@dataclass
class Demo:
    configs: list[Any] = field(default_factory=list)
    sockets: list[list[socket.socket]] = field(default_factory=list)
    apps: list[tuple[Settings, dict[str, Any]]] = field(default_factory=list)
    apps_made: list[object] = field(default_factory=list)
    servers: list[tuple[Any, Settings]] = field(default_factory=list)
    order: list[str] = field(default_factory=list)
    fail: bool = False


@pytest.fixture
def demo(monkeypatch: pytest.MonkeyPatch) -> Iterator[Demo]:
    seen = Demo()

    class SimServer:
        def __init__(self, config: Any) -> None:
            seen.configs.append(config)
            self.should_exit = False

        async def serve(self, sockets: list[socket.socket]) -> None:
            seen.sockets.append(sockets)
            uvicorn_log = logging.getLogger("uvicorn.error")
            uvicorn_log.info("simulator_info_line")
            uvicorn_log.warning("simulator_warning_line")
            while not self.should_exit:  # noqa: ASYNC110 - uvicorn's flag is a plain attribute
                await asyncio.sleep(0)
            seen.order.append("simulator stopped")

    class ProxyServer:
        async def serve(self) -> None:
            await asyncio.sleep(0)  # the simulator starts
            seen.order.append("proxy served")
            if seen.fail:
                raise RuntimeError("the proxy failed")

    def create_app(settings: Settings, **kwargs: Any) -> object:
        seen.apps.append((settings, kwargs))
        seen.apps_made.append(object())
        return seen.apps_made[-1]

    def server(app: Any, settings: Settings) -> ProxyServer:
        seen.servers.append((app, settings))
        return ProxyServer()

    monkeypatch.setattr(uvicorn, "Server", SimServer)
    monkeypatch.setattr(cli, "create_app", create_app)
    monkeypatch.setattr(cli, "_server", server)
    yield seen
    for sockets in seen.sockets:
        for sock in sockets:
            sock.close()


async def test_the_demo_serves_the_proxy_against_the_simulator(
    demo: Demo, capsys: pytest.CaptureFixture[str], log_lines: Callable[[], list[str]]
) -> None:
    settings = make(server={"host": "127.0.0.3", "port": 8123}, logging={"level": "debug"})
    await cli._serve_demo(settings, banner=True)
    assert demo.order == ["proxy served", "simulator stopped"]
    [[sock]] = demo.sockets
    port = sock.getsockname()[1]
    sim_url = f"http://127.0.0.1:{port}/api/v1"
    [config] = demo.configs
    assert config.log_config is None
    assert config.lifespan == "on"
    assert type(config.app).__name__ == "FastAPI"
    [(demo_settings, kwargs)] = demo.apps
    assert kwargs["demo"] is True
    assert kwargs["api_key"].get_secret_value() == "demo-key"
    assert demo.servers == [(demo.apps_made[0], demo_settings)]
    assert demo_settings.upstream.base_url == sim_url
    section = demo_settings.attestation
    assert (section.dcap, section.nvidia) == ("off", "nonce")
    assert section.extra_mrseam == [SIMULATED_MEASUREMENTS["mrseam"]]
    assert section.extra_mrtd == [SIMULATED_MEASUREMENTS["mrtd"]]
    assert section.software == settings.attestation.software  # every other check stays on
    assert demo_settings.server == settings.server
    assert demo_settings.logging == settings.logging
    assert settings.upstream.base_url == DEFAULT_BASE_URL  # the caller's settings are untouched
    banner = capsys.readouterr().err
    assert banner == cli.DEMO_BANNER.format(sim_url=sim_url, host="127.0.0.3", port=8123) + "\n"
    assert f"BUILT-IN SIMULATOR at {sim_url}," in banner
    assert "curl -s http://127.0.0.3:8123/v1/chat/completions" in banner
    lines = log_lines()
    assert "simulator_info_line" not in " ".join(lines)  # the simulator's quiet below warnings
    found = records(lines)
    assert [record["event"] for record in found if record["level"] == "warning"] == [
        "demo_mode",
        *(event for event, _ in weakenings(demo_settings)),
        "simulator_warning_line",
    ]
    demo_line = events(lines)["demo_mode"]
    assert demo_line["upstream"] == sim_url
    assert (demo_line["dcap"], demo_line["nvidia"]) == ("off", "nonce")
    assert demo_line["detail"] == (
        "DEMO MODE: no VENICE_API_KEY set; answers come from the built-in simulator, not Venice; "
        "set VENICE_API_KEY to use Venice"
    )
    for event, detail in weakenings(demo_settings):
        assert events(lines)[event]["detail"] == detail


async def test_the_demo_without_the_banner_prints_nothing(
    demo: Demo, capsys: pytest.CaptureFixture[str], log_lines: Callable[[], list[str]]
) -> None:
    await cli._serve_demo(Settings(), banner=False)
    assert capsys.readouterr().err == ""
    assert "demo_mode" in events(log_lines())


async def test_the_demo_s_simulator_stops_when_the_proxy_fails(demo: Demo) -> None:
    demo.fail = True
    with pytest.raises(RuntimeError, match="the proxy failed"):
        await cli._serve_demo(Settings(), banner=False)
    assert demo.order == ["proxy served", "simulator stopped"]


# --- workers -------------------------------------------------------------------------------------


class _Exited(Exception):  # noqa: N818 - it stands for os._exit
    def __init__(self, code: Any) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class Forks:
    """os.fork, os.waitpid, os.kill and a child's work, recorded instead of done."""

    pids: list[int] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    waited: list[tuple[int, int]] = field(default_factory=list)
    killed: list[tuple[int, int]] = field(default_factory=list)
    gone: set[int] = field(default_factory=set)
    child: list[Any] = field(default_factory=list)
    sockets: list[socket.socket] = field(default_factory=list)
    run: Callable[[], None] = lambda: None


@pytest.fixture
def forks(monkeypatch: pytest.MonkeyPatch) -> Iterator[Forks]:
    seen = Forks()

    def fork() -> int:
        return seen.pids.pop(0)

    def waitpid(pid: int, options: int) -> tuple[int, int]:
        seen.waited.append((pid, options))
        return pid, seen.statuses.get(pid, 0)

    def kill(pid: int, signum: int) -> None:
        seen.killed.append((pid, signum))
        if pid in seen.gone:
            raise ProcessLookupError(pid)

    def exit_(code: Any) -> None:
        raise _Exited(code)

    def setpgid(pid: int, group: int) -> None:
        seen.child.append(("setpgid", pid, group))

    def set_worker(index: int) -> None:
        seen.child.append(("set_worker", index))

    def create_app(settings: Settings, **kwargs: Any) -> object:
        seen.child.append(("create_app", settings, kwargs))
        return "app"

    class Server:
        def run(self, **kwargs: Any) -> None:
            seen.child.append(("run", kwargs))
            seen.run()

    def server(app: Any, settings: Settings) -> Server:
        seen.child.append(("server", app, settings))
        return Server()

    real_listening = cli._listening_socket

    def listening(host: str, port: int) -> socket.socket:
        sock = real_listening(host, port)
        seen.sockets.append(sock)
        return sock

    monkeypatch.setattr(os, "fork", fork)
    monkeypatch.setattr(os, "waitpid", waitpid)
    monkeypatch.setattr(os, "kill", kill)
    monkeypatch.setattr(os, "_exit", exit_)
    monkeypatch.setattr(os, "setpgid", setpgid)
    monkeypatch.setattr(cli, "set_worker", set_worker)
    monkeypatch.setattr(cli, "create_app", create_app)
    monkeypatch.setattr(cli, "_server", server)
    monkeypatch.setattr(cli, "_listening_socket", listening)
    yield seen
    for sock in seen.sockets:
        sock.close()


def _workers(count: int) -> Settings:
    return make(server={"workers": count, "port": 0})


def test_the_parent_forks_each_worker_and_waits_for_all(
    forks: Forks, log_lines: Callable[[], list[str]]
) -> None:
    forks.pids = [101, 102, 103]
    assert cli._serve_workers(_workers(3), None) == 0
    assert forks.waited == [(101, 0), (102, 0), (103, 0)]
    assert forks.child == []
    [sock] = forks.sockets
    assert sock.fileno() == -1  # the parent closed its copy; the workers accept on theirs
    [record] = records(log_lines())
    assert (record["event"], record["level"]) == ("workers_started", "info")
    assert (record["workers"], record["pids"]) == (3, [101, 102, 103])


def test_the_parent_forwards_a_signal_to_every_worker(forks: Forks) -> None:
    forks.pids = [101, 102, 103]
    forks.gone = {102}  # already exited: skipped without an error
    cli._serve_workers(_workers(3), None)
    forward = signal.getsignal(signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is forward
    assert callable(forward)
    forward(signal.SIGTERM, None)
    assert forks.killed == [(101, signal.SIGTERM), (102, signal.SIGTERM), (103, signal.SIGTERM)]


@pytest.mark.parametrize(
    ("statuses", "failed"),
    [
        pytest.param({101: signal.SIGINT, 102: signal.SIGTERM}, 0, id="stopped-by-signals"),
        pytest.param({101: 1 << 8}, 1, id="exit-1"),
        pytest.param({101: signal.SIGKILL, 102: 3 << 8}, 2, id="killed-and-exit-3"),
    ],
)
def test_a_worker_that_failed_makes_the_parent_fail(
    statuses: dict[int, int], failed: int, forks: Forks, log_lines: Callable[[], list[str]]
) -> None:
    forks.pids = [101, 102]
    forks.statuses = statuses
    assert cli._serve_workers(_workers(2), None) == (1 if failed else 0)
    assert [pid for pid, _ in forks.waited] == [101, 102]
    logged = events(log_lines())
    if failed:
        assert logged["workers_failed"]["failed"] == failed
        assert logged["workers_failed"]["level"] == "error"
    else:
        assert "workers_failed" not in logged


def test_without_fork_workers_are_refused(
    forks: Forks, monkeypatch: pytest.MonkeyPatch, log_lines: Callable[[], list[str]]
) -> None:
    monkeypatch.delattr(os, "fork")
    assert cli._serve_workers(_workers(2), None) == 2
    assert forks.sockets == []
    [record] = records(log_lines())
    assert (record["event"], record["level"]) == ("workers_unsupported", "error")
    assert record["detail"] == "server.workers > 1 needs os.fork (POSIX)"


def test_a_worker_builds_its_own_app_and_serves_on_the_shared_socket(forks: Forks) -> None:
    forks.pids = [101, 0]  # the second fork returns in the child: worker 2
    key = SecretStr(KEY)
    settings = _workers(3)
    with pytest.raises(_Exited) as exited:
        cli._serve_workers(settings, key)
    assert exited.value.code == 0
    [sock] = forks.sockets
    assert forks.child == [
        ("setpgid", 0, 0),
        ("set_worker", 2),
        ("create_app", settings, {"api_key": key}),
        ("server", "app", settings),
        ("run", {"sockets": [sock]}),
    ]
    assert sock.fileno() != -1  # the child keeps it


@pytest.mark.parametrize("signum", SIGNALS)
def test_a_worker_stopped_by_a_signal_exits_0(signum: signal.Signals, forks: Forks) -> None:
    forks.pids = [0]
    forks.run = lambda: signal.raise_signal(signum)
    with pytest.raises(_Exited) as exited:
        cli._serve_workers(_workers(2), None)
    assert exited.value.code == 0
    assert ("set_worker", 1) in forks.child


def test_a_worker_that_fails_exits_1(forks: Forks) -> None:
    forks.pids = [0]

    def fail() -> None:
        raise RuntimeError("cannot serve")

    forks.run = fail
    with pytest.raises(_Exited) as exited:
        cli._serve_workers(_workers(2), None)
    assert exited.value.code == 1


def test_the_shared_socket_listens_and_is_inherited() -> None:
    with cli._listening_socket("127.0.0.1", 0) as sock:
        assert sock.family == socket.AF_INET
        assert sock.type == socket.SOCK_STREAM
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert sock.get_inheritable() is True
        host, port = sock.getsockname()
        assert host == "127.0.0.1"
        assert port > 0
        with socket.create_connection((host, port), timeout=5):
            accepted, _ = sock.accept()
            accepted.close()


def test_the_shared_socket_has_a_deep_backlog(monkeypatch: pytest.MonkeyPatch) -> None:
    backlogs: list[int] = []
    real_listen = socket.socket.listen

    def listen(self: socket.socket, backlog: int) -> None:
        backlogs.append(backlog)
        real_listen(self, backlog)

    monkeypatch.setattr(socket.socket, "listen", listen)
    cli._listening_socket("127.0.0.1", 0).close()
    assert backlogs == [2048]


def test_an_ipv6_host_gets_an_ipv6_socket() -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with cli._listening_socket("::1", 0) as sock:
        assert sock.family == socket.AF_INET6
        assert sock.getsockname()[0] == "::1"


# --- simulate -------------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [None, *SIGNALS])
def test_simulate_runs_the_simulator_and_says_it_is_not_venice(
    signum: signal.Signals | None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    logging_calls: list[tuple[str, str]],
) -> None:
    ran: list[tuple[str, int]] = []

    def run_simulator(host: str, port: int) -> None:
        ran.append((host, port))
        if signum is not None:
            signal.raise_signal(signum)

    monkeypatch.setattr(simulator_module, "run_simulator", run_simulator)
    assert cli.main(["simulate", "--host", "127.0.0.5", "--port", "9301"]) == 0
    assert ran == [("127.0.0.5", 9301)]
    assert logging_calls == [("info", "auto")]
    assert (
        capsys.readouterr().err == "Simulated Venice (NOT Venice) at http://127.0.0.5:9301/api/v1\n"
    )


# --- verify and pins ------------------------------------------------------------------------------


def _report(*, passed: bool, model: str = "e2ee-m") -> AttestationReport:
    return AttestationReport(
        model=model,
        nonce="00" * 32,
        shape="near",
        signing_address="0x" + "11" * 20,
        signing_public_key=None,
        tcb_status="UpToDate",
        checks=(CheckResult("report_data_nonce", passed, True, "nonce bound", "quote"),),
        trust_level="enclave",
    )


@dataclass
class Online:
    calls: list[tuple[Settings, SecretStr | None, str, AttestationPolicy | None]] = field(
        default_factory=list
    )
    report: AttestationReport = field(default_factory=lambda: _report(passed=True))
    error: Exception | None = None


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> Online:
    seen = Online()

    async def fake_verify(
        settings: Settings,
        api_key: SecretStr | None,
        model: str,
        policy: AttestationPolicy | None = None,
    ) -> AttestationReport:
        seen.calls.append((settings, api_key, model, policy))
        if seen.error is not None:
            raise seen.error
        return seen.report

    monkeypatch.setattr(cli, "_verify", fake_verify)
    return seen


def test_verify_attests_the_model_online_with_the_settings_policy(
    online: Online,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    logging_calls: list[tuple[str, str]],
) -> None:
    _keyed(monkeypatch)
    monkeypatch.setenv("VENICE_PROXY_LOGGING__FORMAT", "json")
    assert cli.main(["verify", "e2ee-m", "--json"]) == 0
    assert logging_calls == [("warning", "json")]
    [(settings, key, model, policy)] = online.calls
    assert model == "e2ee-m"
    assert key is not None
    assert key.get_secret_value() == KEY
    assert settings.attestation.state_dir == state_home(tmp_path)  # what serve remembers
    assert policy == attestation_policy(settings)
    assert policy.gateway_models == "refuse"
    document = json.loads(capsys.readouterr().out)
    assert document["passed"] is True
    assert (document["not_checked"], document["weakened"]) == ([], [])


def test_verify_fails_when_the_report_does(
    online: Online, capsys: pytest.CaptureFixture[str], logging_calls: list[tuple[str, str]]
) -> None:
    online.report = _report(passed=False)
    assert cli.main(["verify", "e2ee-m"]) == 1
    assert "attestation FAILED: report_data_nonce" in capsys.readouterr().out


def test_verify_allow_gateway_accepts_gateway_trust_for_this_check(
    online: Online, logging_calls: list[tuple[str, str]]
) -> None:
    assert cli.main(["verify", "e2ee-m", "--allow-gateway"]) == 0
    [(settings, _, _, policy)] = online.calls
    assert policy == AttestationPolicy(
        **{**vars_of(attestation_policy(settings)), "gateway_models": "allow"}
    )


def vars_of(policy: AttestationPolicy) -> dict[str, Any]:
    from dataclasses import fields

    return {item.name: getattr(policy, item.name) for item in fields(policy)}


@pytest.mark.parametrize("as_json", [False, True])
def test_verify_without_a_model_is_a_usage_error(
    as_json: bool,
    online: Online,
    capsys: pytest.CaptureFixture[str],
    logging_calls: list[tuple[str, str]],
) -> None:
    assert cli.main(["verify", *(["--json"] if as_json else [])]) == 2
    out = capsys.readouterr().out
    message = "verify needs a MODEL (or --offline)"
    if as_json:
        assert json.loads(out) == {"error": {"message": message}}
    else:
        assert out == f"error: {message}\n"
    assert online.calls == []


def test_verify_offline_without_an_attestation_is_a_usage_error(
    online: Online, capsys: pytest.CaptureFixture[str], logging_calls: list[tuple[str, str]]
) -> None:
    assert cli.main(["verify", "e2ee-m", "--offline"]) == 2
    assert capsys.readouterr().out == "error: --offline needs --attestation FILE\n"
    assert online.calls == []


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("attestation_shape_unknown", 2),
        ("signing_algo_unsupported", 2),
        ("capture_invalid", 2),
        ("attestation_failed", 1),
    ],
)
def test_verify_s_errors_exit_2_for_bad_input_else_1(
    code: str,
    status: int,
    online: Online,
    capsys: pytest.CaptureFixture[str],
    logging_calls: list[tuple[str, str]],
) -> None:
    online.error = AttestationError("the enclave said no", code=code)
    assert cli.main(["verify", "e2ee-m"]) == status
    assert capsys.readouterr().out == f"error ({code}): the enclave said no\n"
    online.error = UpstreamError("down", code=code)
    assert cli.main(["verify", "e2ee-m", "--json"]) == status
    assert json.loads(capsys.readouterr().out)["error"]["code"] == code


def test_verify_prints_each_weakening_of_the_settings(
    online: Online,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    logging_calls: list[tuple[str, str]],
) -> None:
    """Every weakening is printed, whatever the model names in it (a model whose name held
    "state_dir" once hid its accepted gateway trust from the report)."""
    monkeypatch.setenv("VENICE_PROXY_ATTESTATION__DCAP", "off")
    monkeypatch.setenv(
        "VENICE_PROXY_ATTESTATION__TRUST_LEVELS", json.dumps({"my-state_dir-model": "gateway"})
    )
    assert cli.main(["verify", "e2ee-m", "--json"]) == 0
    settings = load_settings()
    assert json.loads(capsys.readouterr().out)["weakened"] == [
        detail for _, detail in weakenings(settings)
    ]
    assert len(weakenings(settings)) == 2


@dataclass
class Offline:
    calls: list[tuple[Path, AttestationPolicy, dict[str, Any]]] = field(default_factory=list)
    report: AttestationReport = field(default_factory=lambda: _report(passed=True))


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> Offline:
    seen = Offline()

    def fake_offline(path: Path, policy: AttestationPolicy, **kwargs: Any) -> AttestationReport:
        seen.calls.append((path, policy, kwargs))
        return seen.report

    monkeypatch.setattr(verify_module, "verify_offline", fake_offline)
    return seen


def test_verify_offline_passes_every_input_on(
    offline: Offline,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    logging_calls: list[tuple[str, str]],
) -> None:
    mine = tmp_path / "mine"
    config = tmp_path / "proxy.toml"
    config.write_text(f"[attestation]\nstate_dir = {json.dumps(str(mine))}\n")
    argv = [
        "verify",
        "--config",
        str(config),
        "e2ee-m",
        "--offline",
        "--json",
        "--attestation",
        "a.json",
        "--nonce",
        "ab" * 32,
        "--collateral",
        "c.json",
        "--nras-response",
        "n.json",
        "--nras-jwks",
        "j.json",
        "--at",
        "1700000000",
    ]
    assert cli.main(argv) == 0
    [(path, policy, kwargs)] = offline.calls
    assert path == Path("a.json")
    assert policy == attestation_policy(load_settings())
    assert (policy.dcap, policy.nvidia) == ("require", "nras")
    trust_state = kwargs.pop("trust_state")
    assert isinstance(trust_state, TrustState)
    assert trust_state.path == mine / STATE_FILE
    assert kwargs == {
        "nonce_hex": "ab" * 32,
        "collateral": Path("c.json"),
        "nras_response": Path("n.json"),
        "nras_jwks": Path("j.json"),
        "at": 1700000000,
        "model": "e2ee-m",
    }
    assert json.loads(capsys.readouterr().out)["not_checked"] == []


def test_verify_offline_skips_dcap_and_nras_only_when_asked_and_says_so(
    offline: Offline, capsys: pytest.CaptureFixture[str], logging_calls: list[tuple[str, str]]
) -> None:
    base = ["verify", "--offline", "--json", "--attestation", "a.json"]
    assert cli.main([*base, "--no-dcap"]) == 0
    assert (offline.calls[-1][1].dcap, offline.calls[-1][1].nvidia) == ("off", "nras")
    assert json.loads(capsys.readouterr().out)["not_checked"] == [
        "DCAP (--no-dcap): the quote's Intel signature was NOT verified"
    ]
    assert cli.main([*base, "--no-nras"]) == 0
    assert (offline.calls[-1][1].dcap, offline.calls[-1][1].nvidia) == ("require", "nonce")
    assert json.loads(capsys.readouterr().out)["not_checked"] == [
        "NRAS (--no-nras): the GPU evidence was NOT verified by NVIDIA"
    ]
    assert cli.main([*base, "--no-dcap", "--no-nras", "--allow-gateway"]) == 0
    policy = offline.calls[-1][1]
    assert (policy.dcap, policy.nvidia, policy.gateway_models) == ("off", "nonce", "allow")
    assert len(json.loads(capsys.readouterr().out)["not_checked"]) == 2
    assert offline.calls[-1][2]["model"] is None


@pytest.mark.parametrize("nvidia", ["nonce", "off"])
def test_verify_offline_no_nras_without_nras_configured_skips_nothing(
    nvidia: str,
    offline: Offline,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    logging_calls: list[tuple[str, str]],
) -> None:
    monkeypatch.setenv("VENICE_PROXY_ATTESTATION__NVIDIA", nvidia)
    assert cli.main(["verify", "--offline", "--json", "--attestation", "a.json", "--no-nras"]) == 0
    assert offline.calls[-1][1].nvidia == nvidia
    assert json.loads(capsys.readouterr().out)["not_checked"] == []


def test_verify_offline_on_a_real_capture_reads_no_remembered_trust(
    capsys: pytest.CaptureFixture[str], logging_calls: list[tuple[str, str]]
) -> None:
    argv = ["verify", "--offline", "--attestation", str(GLM), "--no-dcap", "--no-nras"]
    assert cli.main([*argv, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["passed"] is True
    assert logging_calls == [("warning", "auto")]


def test_pins_online_prints_the_table_and_fails_with_the_report(
    online: Online,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    logging_calls: list[tuple[str, str]],
) -> None:
    _keyed(monkeypatch)
    assert cli.main(["pins", "e2ee-m"]) == 0
    assert logging_calls == [("warning", "auto")]
    [(settings, key, model, policy)] = online.calls
    assert (model, policy) == ("e2ee-m", None)
    assert key is not None
    assert key.get_secret_value() == KEY
    assert settings.attestation.state_dir == state_home(tmp_path)
    out = capsys.readouterr().out
    assert out.startswith(
        "# Measurements of e2ee-m (trust level enclave), from a fresh attestation."
    )
    assert '[attestation.pins."e2ee-m"]' in out
    online.report = _report(passed=False)
    assert cli.main(["pins", "e2ee-m"]) == 1
    assert "# WARNING: this attestation did NOT pass (report_data_nonce)" in capsys.readouterr().out


def test_pins_offline_reads_the_capture_with_dcap_and_nvidia_off(
    offline: Offline,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    logging_calls: list[tuple[str, str]],
) -> None:
    offline.report = _report(passed=False)
    config = tmp_path / "proxy.toml"
    config.write_text('[logging]\nformat = "json"\n[attestation]\nallow_dev_image = true\n')
    argv = ["pins", "e2ee-m", "--offline", "--attestation", "a.json", "--nonce", "cd" * 32]
    assert cli.main([*argv, "--config", str(config)]) == 0  # offline, a failure only warns
    assert logging_calls == [("warning", "json")]
    [(path, policy, kwargs)] = offline.calls
    assert path == Path("a.json")
    assert policy == AttestationPolicy(
        **{**vars_of(attestation_policy(load_settings(config))), "dcap": "off", "nvidia": "off"}
    )
    assert policy.allow_dev_image is True
    assert kwargs == {"nonce_hex": "cd" * 32, "model": "e2ee-m"}
    assert "from a saved attestation." in capsys.readouterr().out


def test_pins_errors(
    online: Online,
    capsys: pytest.CaptureFixture[str],
    logging_calls: list[tuple[str, str]],
) -> None:
    assert cli.main(["pins", "e2ee-m", "--offline"]) == 2
    assert capsys.readouterr().out == "error: --offline needs --attestation FILE\n"
    online.error = AttestationError("no quote", code="attestation_shape_unknown")
    assert cli.main(["pins", "e2ee-m"]) == 1
    assert capsys.readouterr().out == "error (attestation_shape_unknown): no quote\n"


async def test_verify_s_attestation_uses_the_given_policy_and_closes_the_services(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    closed: list[bool] = []
    report = _report(passed=True)

    class Attester:
        policy = AttestationPolicy()

        async def report(self, model: str) -> AttestationReport:
            if model == "broken":
                raise AttestationError("bad")
            assert model == "e2ee-m"
            return report

    built: list[tuple[Settings, dict[str, Any]]] = []

    def build_services(settings: Settings, **kwargs: Any) -> Any:
        built.append((settings, kwargs))

        async def aclose() -> None:
            closed.append(True)

        return SimpleNamespace(attester=Attester(), aclose=aclose)

    monkeypatch.setattr(services_module, "build_services", build_services)
    settings, key = Settings(), SecretStr(KEY)
    assert await cli._verify(settings, key, "e2ee-m") is report
    assert built == [(settings, {"api_key": key})]
    assert closed == [True]
    policy = AttestationPolicy(gateway_models="allow")
    assert await cli._verify(settings, None, "e2ee-m", policy) is report
    with pytest.raises(AttestationError):
        await cli._verify(settings, None, "broken", policy)
    assert closed == [True, True, True]


async def test_verify_keeps_the_services_policy_when_given_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    own = AttestationPolicy(dcap="off")
    given = AttestationPolicy(gateway_models="allow")
    attesters: list[Any] = []

    def build_services(settings: Settings, **kwargs: Any) -> Any:
        attester = SimpleNamespace(policy=own)

        async def report(model: str) -> Any:
            return SimpleNamespace(policy=attester.policy)

        async def aclose() -> None:
            pass

        attester.report = report
        attesters.append(attester)
        return SimpleNamespace(attester=attester, aclose=aclose)

    monkeypatch.setattr(services_module, "build_services", build_services)
    assert (await cli._verify(Settings(), None, "m")).policy is own  # type: ignore[attr-defined]
    reported = await cli._verify(Settings(), None, "m", given)
    assert reported.policy is given  # type: ignore[attr-defined]


# --- trust ----------------------------------------------------------------------------------------


def test_trust_accept_without_a_model_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["trust", "accept"]) == 2
    assert capsys.readouterr().err == "venice-e2ee-proxy: trust accept needs a MODEL\n"


def test_trust_accept_records_the_level_and_says_what_else_it_takes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = state_home(tmp_path) / STATE_FILE
    assert cli.main(["trust", "accept", "e2ee-x"]) == 0
    assert capsys.readouterr().out == (
        f"e2ee-x: gateway trust accepted (recorded in {where})\n"
        'note: gateway trust is used only with attestation.gateway_models = "allow" or '
        'attestation.trust_levels."e2ee-x" = "gateway"\n'
    )
    assert TrustState(state_home(tmp_path)).get("e2ee-x") == "gateway"
    assert cli.main(["trust", "accept", "e2ee-y", "--level", "enclave"]) == 0
    assert capsys.readouterr().out == f"e2ee-y: enclave trust accepted (recorded in {where})\n"
    assert TrustState(state_home(tmp_path)).get("e2ee-y") == "enclave"


def test_trust_accept_of_gateway_needs_no_note_when_gateway_models_are_allowed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VENICE_PROXY_ATTESTATION__GATEWAY_MODELS", "allow")
    assert cli.main(["trust", "accept", "e2ee-x"]) == 0
    assert "note:" not in capsys.readouterr().out


def test_trust_accept_agreeing_with_the_config_is_recorded(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VENICE_PROXY_ATTESTATION__TRUST_LEVELS", json.dumps({"e2ee-x": "gateway"}))
    assert cli.main(["trust", "accept", "e2ee-x"]) == 0
    assert TrustState(state_home(tmp_path)).get("e2ee-x") == "gateway"


def test_trust_accept_against_the_config_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VENICE_PROXY_ATTESTATION__TRUST_LEVELS", json.dumps({"e2ee-x": "enclave"}))
    assert cli.main(["trust", "accept", "e2ee-x"]) == 2
    assert capsys.readouterr().err == (
        "venice-e2ee-proxy: attestation.trust_levels in the config pins e2ee-x to enclave; "
        "change it there\n"
    )
    assert TrustState(state_home(tmp_path)).models() == {}


def test_trust_show_lists_each_model_in_order_and_where(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = TrustState(state_home(tmp_path))
    state.record("e2ee-b", "enclave")
    state.accept("e2ee-a", "gateway")
    assert cli.main(["trust", "show"]) == 0
    assert capsys.readouterr().out == (
        f"{'e2ee-a':45} gateway (accepted by the user)\n"
        f"{'e2ee-b':45} enclave\n"
        f"# {state_home(tmp_path) / STATE_FILE}\n"
    )


def test_trust_with_a_broken_state_file_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state_home(tmp_path).mkdir(parents=True)
    where = state_home(tmp_path) / STATE_FILE
    where.write_text("not json")
    assert cli.main(["trust", "show"]) == 1
    assert capsys.readouterr().err == (
        f"venice-e2ee-proxy: {where} is not a trust state file "
        f"({FORMAT}); move it away to start over\n"
    )
    assert cli.main(["trust", "accept", "e2ee-x"]) == 1


def test_trust_reads_the_configured_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "proxy.toml"
    mine = tmp_path / "mine"
    config.write_text(f"[attestation]\nstate_dir = {json.dumps(str(mine))}\n")
    assert cli.main(["trust", "accept", "e2ee-x", "--config", str(config)]) == 0
    assert TrustState(mine).get("e2ee-x") == "gateway"


# --- models ---------------------------------------------------------------------------------------


def _catalogue() -> dict[str, ModelInfo]:
    spec = {"privacy": "private", "capabilities": {"supportsTeeAttestation": True}}
    return {
        "e2ee-a": ModelInfo("e2ee-a", True, {"model_spec": spec}),
        "plain": ModelInfo("plain", False, {"model_spec": {"privacy": "anonymized"}}),
        "bare": ModelInfo("bare", False, {}),
        "odd": ModelInfo("odd", False, {"model_spec": {"capabilities": ["x"]}}),
        "odder": ModelInfo("odder", False, {"model_spec": "text"}),
        "no-tee": ModelInfo(
            "no-tee", True, {"model_spec": {"capabilities": {"supportsTeeAttestation": False}}}
        ),
    }


@dataclass
class Catalogue:
    built: list[tuple[Settings, dict[str, Any]]] = field(default_factory=list)
    closed: list[bool] = field(default_factory=list)
    error: Exception | None = None


@pytest.fixture
def catalogue(monkeypatch: pytest.MonkeyPatch) -> Catalogue:
    seen = Catalogue()

    def build_services(settings: Settings, **kwargs: Any) -> Any:
        seen.built.append((settings, kwargs))

        async def models() -> dict[str, ModelInfo]:
            if seen.error is not None:
                raise seen.error
            return _catalogue()

        async def aclose() -> None:
            seen.closed.append(True)

        return SimpleNamespace(
            catalogue=SimpleNamespace(models=models), upstream=SimpleNamespace(aclose=aclose)
        )

    monkeypatch.setattr(services_module, "build_services", build_services)
    return seen


async def test_models_rows_say_what_each_model_offers(catalogue: Catalogue) -> None:
    settings, key = Settings(), SecretStr(KEY)
    rows = await cli._models(settings, key)
    assert catalogue.built == [(settings, {"api_key": key})]
    assert catalogue.closed == [True]
    assert rows == [
        {"id": "e2ee-a", "e2ee": True, "tee": True, "privacy": "private"},
        {"id": "plain", "e2ee": False, "tee": False, "privacy": "anonymized"},
        {"id": "bare", "e2ee": False, "tee": False, "privacy": None},
        {"id": "odd", "e2ee": False, "tee": False, "privacy": None},
        {"id": "odder", "e2ee": False, "tee": False, "privacy": None},
        {"id": "no-tee", "e2ee": True, "tee": False, "privacy": None},
    ]


async def test_models_closes_the_upstream_when_the_list_fails(catalogue: Catalogue) -> None:
    catalogue.error = UpstreamError("down")
    with pytest.raises(UpstreamError):
        await cli._models(Settings(), None)
    assert catalogue.closed == [True]


def test_models_prints_a_table_or_json(
    catalogue: Catalogue,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    logging_calls: list[tuple[str, str]],
) -> None:
    _keyed(monkeypatch)
    config = tmp_path / "proxy.toml"
    config.write_text('[logging]\nlevel = "debug"\nformat = "json"\n')
    assert cli.main(["models", "--config", str(config)]) == 0
    assert logging_calls == [("debug", "json")]
    [(settings, kwargs)] = catalogue.built
    assert (settings.logging.level, settings.logging.format) == ("debug", "json")
    assert kwargs["api_key"].get_secret_value() == KEY
    assert capsys.readouterr().out.splitlines()[:3] == [
        f"{'e2ee-a':45} e2ee=yes tee=yes",
        f"{'plain':45} e2ee=no  tee=no",
        f"{'bare':45} e2ee=no  tee=no",
    ]
    assert cli.main(["models", "--json"]) == 0
    out = capsys.readouterr().out
    rows = json.loads(out)
    assert rows[0] == {"id": "e2ee-a", "e2ee": True, "tee": True, "privacy": "private"}
    assert out.startswith('[\n  {\n    "id": "e2ee-a",')


def test_models_upstream_error_exits_1(
    catalogue: Catalogue, capsys: pytest.CaptureFixture[str], logging_calls: list[tuple[str, str]]
) -> None:
    catalogue.error = UpstreamError("the upstream is down", code="upstream_unavailable")
    assert cli.main(["models"]) == 1
    captured = capsys.readouterr()
    assert captured.err == "error (upstream_unavailable): the upstream is down\n"
    assert captured.out == ""


def test_log_lines_from_the_commands_go_to_the_suite_s_stream(
    log_lines: Callable[[], list[str]], logging_calls: list[tuple[str, str]]
) -> None:
    # The recorder above keeps every command's log lines readable by log_lines.
    configure = cli.configure_logging  # type: ignore[attr-defined]
    configure("info", "json")
    get_logger("proxy.test").warning("cli_test_line")
    assert events(log_lines())["cli_test_line"]["level"] == "warning"
    assert sys.stderr is not None
