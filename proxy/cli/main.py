"""Command line: ``venice-e2ee-proxy {serve,simulate,verify,pins,trust,models}`` (also
``python -m proxy``).

The edge of the program: parse arguments, build the settings once, configure logging, run
uvicorn. ``serve`` without a Venice API key (and with the default upstream) runs an offline
demo: the built-in simulator starts on a free loopback port and the proxy uses it as upstream,
with DCAP off because the simulator's quote cannot carry Intel's signature. It says so loudly.

Every setting that weakens what an attestation proves (:func:`proxy.settings.weakenings`) is logged
as a warning when ``serve`` starts. ``serve`` keeps the trust levels it saw in
``attestation.state_dir`` (default ``$XDG_STATE_HOME/venice-e2ee-proxy``); when that directory
is not writable it says so and remembers them in memory only. ``trust accept MODEL`` accepts a
model that went from ``enclave`` to ``gateway``; ``pins MODEL`` prints a model's measurements in
the ``[attestation.pins]`` format.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import SecretStr

from proxy.attestation import AttestationPolicy, AttestationReport
from proxy.core.errors import ProxyError
from proxy.http.app import create_app
from proxy.http.guard import is_loopback
from proxy.http.header_deadline import header_deadline_protocol
from proxy.http.loopback import free_socket
from proxy.http.shutdown import DrainingServer
from proxy.observability.logs import configure_logging, get_logger, quiet_context
from proxy.observability.worker import set_worker
from proxy.service.trust_state import TrustState, default_state_dir, writable_problem
from proxy.settings import (
    DEFAULT_BASE_URL,
    Settings,
    SettingsError,
    load_settings,
    resolve_api_key,
    weakenings,
)

log = get_logger("proxy.cli")

DEMO_BANNER = """
======================================================================
  DEMO MODE: no VENICE_API_KEY set.
  The proxy is running against the BUILT-IN SIMULATOR at {sim_url},
  not Venice. Answers are synthetic; DCAP quote verification and NVIDIA
  NRAS are OFF (the simulator cannot produce Intel- or NVIDIA-signed evidence),
  and the simulator's made-up TDX module and firmware are allowed.
  Set VENICE_API_KEY to use Venice's real E2EE models.

  Try it:
    curl -s http://{host}:{port}/v1/chat/completions \\
      -H 'Content-Type: application/json' \\
      -d '{{"model": "e2ee-simulated-near", "messages": [{{"role": "user", "content": "Hello!"}}]}}'
======================================================================
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="venice-e2ee-proxy",
        description="Local OpenAI-compatible privacy proxy for Venice AI's E2EE models.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the proxy")
    serve.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8000)")
    serve.add_argument("--config", type=Path, default=None, help="TOML settings file")

    simulate = commands.add_parser("simulate", help="run the simulated Venice server")
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=int, default=8001)

    verify = commands.add_parser("verify", help="attest a model and print the report")
    verify.add_argument("model", nargs="?", help="model id (online; optional offline)")
    verify.add_argument("--json", action="store_true", help="print JSON")
    verify.add_argument("--config", type=Path, default=None)
    verify.add_argument("--offline", action="store_true", help="check a saved attestation")
    verify.add_argument("--attestation", type=Path, help="saved attestation (offline)")
    verify.add_argument("--nonce", help="the 64-hex nonce it was fetched with (offline)")
    verify.add_argument("--collateral", type=Path, help="DCAP collateral JSON (offline)")
    verify.add_argument("--nras-response", type=Path, help="saved NRAS answer (offline)")
    verify.add_argument("--nras-jwks", type=Path, help="saved NRAS JWKS (offline)")
    verify.add_argument("--at", type=int, help="verify as of this unix time (offline)")
    verify.add_argument(
        "--no-dcap",
        action="store_true",
        help="offline: knowingly skip DCAP (else no --collateral is a failure)",
    )
    verify.add_argument(
        "--no-nras",
        action="store_true",
        help="offline: knowingly skip NRAS (else no --nras-response is a failure)",
    )
    verify.add_argument(
        "--allow-gateway",
        action="store_true",
        help='accept gateway trust for this check (as attestation.gateway_models = "allow")',
    )

    pins = commands.add_parser("pins", help="print a model's measurements as [attestation.pins]")
    pins.add_argument("model", help="model id")
    pins.add_argument("--config", type=Path, default=None)
    pins.add_argument("--offline", action="store_true", help="read a saved attestation")
    pins.add_argument("--attestation", type=Path, help="saved attestation (offline)")
    pins.add_argument("--nonce", help="the 64-hex nonce it was fetched with (offline)")

    trust = commands.add_parser("trust", help="show or accept the remembered trust levels")
    trust.add_argument("action", choices=["show", "accept"])
    trust.add_argument("model", nargs="?", help="model id (accept)")
    trust.add_argument("--level", choices=["gateway", "enclave"], default="gateway")
    trust.add_argument("--config", type=Path, default=None)

    models = commands.add_parser("models", help="list the upstream's models")
    models.add_argument("--config", type=Path, default=None)
    models.add_argument("--json", action="store_true")
    return parser


def _load(config: Path | None, overrides: dict[str, Any] | None = None) -> Settings:
    try:
        return load_settings(config, overrides)
    except SettingsError as exc:
        print(f"venice-e2ee-proxy: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _api_key(settings: Settings) -> SecretStr | None:
    try:
        return resolve_api_key(settings)
    except SettingsError as exc:
        print(f"venice-e2ee-proxy: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


class _StoppedBySignalError(Exception):
    """The signal uvicorn stopped on, re-raised to :func:`_a_signal_stop_is_success`'s handler."""


@contextlib.contextmanager
def _a_signal_stop_is_success() -> Iterator[None]:
    """A server stopped by SIGINT or SIGTERM, drained, ends normally: the command returns 0.

    uvicorn takes both signals while it serves and, once it has drained and shut down, raises
    the one it stopped on again to the handler that was there before it (the POSIX convention
    for a process that dies of a signal). Left at Python's defaults that is a
    ``KeyboardInterrupt`` traceback after Ctrl-C and death by SIGTERM (status 143 in a shell),
    so a supervisor that counts only 0 as success would see every orderly stop as a failure,
    and ``server.workers = 1`` would end differently from several workers. Here that handler
    raises :class:`_StoppedBySignalError`, which is suppressed. A signal that arrives before
    uvicorn took over (while the app is built) also ends the command with 0: it was asked to
    stop and did.
    """

    def stop(signum: int, _frame: Any) -> None:
        raise _StoppedBySignalError(signum)

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        with contextlib.suppress(_StoppedBySignalError):
            yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


async def _serve_demo(settings: Settings, *, banner: bool) -> None:
    from proxy.simulator import SIMULATED_MEASUREMENTS, SimulatorState, create_simulator_app

    sim_sock = free_socket()
    sim_url = f"http://127.0.0.1:{sim_sock.getsockname()[1]}/api/v1"
    demo_settings = settings.model_copy(
        update={
            "upstream": settings.upstream.model_copy(update={"base_url": sim_url}),
            # The simulator's quote cannot carry Intel's signature and its GPU evidence is
            # not NVIDIA's: DCAP and NRAS are off, every other check stays on.
            "attestation": settings.attestation.model_copy(
                update={
                    "dcap": "off",
                    "nvidia": "nonce",
                    "extra_mrseam": [SIMULATED_MEASUREMENTS["mrseam"]],
                    "extra_mrtd": [SIMULATED_MEASUREMENTS["mrtd"]],
                }
            ),
        }
    )
    # log_config=None: uvicorn keeps the proxy's log configuration (proxy.observability.logs).
    sim_server = uvicorn.Server(
        uvicorn.Config(create_simulator_app(SimulatorState()), log_config=None, lifespan="on")
    )
    app = create_app(demo_settings, api_key=SecretStr("demo-key"), demo=True)
    proxy_server = _server(app, demo_settings)
    # The simulator's uvicorn logs through the same loggers as the proxy's: in its own task
    # context only its warnings pass, so start-up and shutdown lines are the proxy's, once.
    sim_task = asyncio.create_task(
        sim_server.serve(sockets=[sim_sock]), context=quiet_context(logging.WARNING)
    )
    if banner:
        print(
            DEMO_BANNER.format(
                sim_url=sim_url, host=settings.server.host, port=settings.server.port
            ),
            file=sys.stderr,
        )
    log.warning(
        "demo_mode",
        upstream=sim_url,
        dcap="off",
        nvidia="nonce",
        detail="DEMO MODE: no VENICE_API_KEY set; answers come from the built-in simulator, "
        "not Venice; set VENICE_API_KEY to use Venice",
    )
    for event, detail in weakenings(demo_settings):
        log.warning(event, detail=detail)
    try:
        await proxy_server.serve()
    finally:
        sim_server.should_exit = True
        await sim_task


def _uvicorn_config(app: Any, settings: Settings) -> uvicorn.Config:
    server = settings.server
    return uvicorn.Config(
        app,
        host=server.host,
        port=server.port,
        log_level=settings.logging.level,
        log_config=None,  # keep the proxy's log configuration (proxy.observability.logs)
        access_log=False,
        ssl_certfile=str(server.tls_cert) if server.tls_cert else None,
        ssl_keyfile=str(server.tls_key) if server.tls_key else None,
        timeout_graceful_shutdown=10,
        # httptools' parser, closing a connection whose request headers are late.
        http=header_deadline_protocol(server.header_timeout_s),
        # The proxy never reads a client's address, so nothing may rewrite it from
        # X-Forwarded-For either: one ASGI layer less per request.
        proxy_headers=False,
    )


def freeze_startup_heap() -> None:
    """Move every object alive after start-up (modules, the app, its services and settings)
    out of the garbage collector's reach, after collecting what start-up left behind.

    CPython's full (generation 2) collection walks every tracked object, and with the
    start-up heap in it that took 137 ms per pass under 1,000 concurrent streams on this
    project's VM (twice per 25 s run): a pause every stream in flight waits through, which
    ruled the time to first token's p99. Frozen, the pass walks only what requests made
    (66 ms in the same run; benchmarks/README.md, "Issue 16, fourth round"). A frozen object
    that later becomes cyclic garbage is never freed; start-up state lives as long as the
    process anyway, and objects freed by reference counting are freed as before.
    """
    gc.collect()
    gc.freeze()


def _server(app: Any, settings: Settings) -> uvicorn.Server:
    freeze_startup_heap()
    return DrainingServer(
        _uvicorn_config(app, settings), app.state.services.drain, settings.server.shutdown_grace_s
    )


def cmd_serve(args: argparse.Namespace) -> int:
    """``serve``: run the proxy (or the offline demo without a key)."""
    overrides: dict[str, Any] = {}
    if args.host is not None or args.port is not None:
        server: dict[str, Any] = {}
        if args.host is not None:
            server["host"] = args.host
        if args.port is not None:
            server["port"] = args.port
        overrides["server"] = server
    settings = _load(args.config, overrides)
    as_json = configure_logging(settings.logging.level, settings.logging.format)
    settings, persisted = _with_state_dir(settings)
    api_key = _api_key(settings)
    if api_key is None and settings.upstream.base_url == DEFAULT_BASE_URL:
        # The banner is for a person at a terminal; JSON logs get the demo_mode line only.
        with _a_signal_stop_is_success():
            asyncio.run(_serve_demo(settings, banner=not as_json))
        return 0
    _warn_about(settings, api_key, state_persisted=persisted)
    if settings.server.workers > 1:
        return _serve_workers(settings, api_key)
    with _a_signal_stop_is_success():
        app = create_app(settings, api_key=api_key)
        _server(app, settings).run()
    return 0


def _listening_socket(host: str, port: int) -> socket.socket:
    """The port every worker accepts on, bound once here (the kernel spreads connections)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _serve_workers(settings: Settings, api_key: SecretStr | None) -> int:
    """``server.workers`` processes on one pre-bound port, forked before any app or event loop
    exists. Each worker builds its own app (it attests on its own, keeps its own caches,
    metrics and ``max_in_flight``) and drains on SIGINT/SIGTERM, which this parent forwards
    once (workers run in their own process groups, so a terminal's Ctrl-C is not delivered
    twice). Exits non-zero when a worker did."""
    if not hasattr(os, "fork"):
        log.error("workers_unsupported", detail="server.workers > 1 needs os.fork (POSIX)")
        return 2
    sock = _listening_socket(settings.server.host, settings.server.port)
    children: list[int] = []
    for index in range(1, settings.server.workers + 1):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child process
            code = 1
            try:
                os.setpgid(0, 0)
                set_worker(index)
                with _a_signal_stop_is_success():
                    app = create_app(settings, api_key=api_key)
                    _server(app, settings).run(sockets=[sock])
                code = 0
            finally:
                os._exit(code)
        children.append(pid)
    sock.close()
    log.info("workers_started", workers=len(children), pids=children)

    def forward(signum: int, _frame: Any) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    failed = 0
    for pid in children:
        _, status = os.waitpid(pid, 0)
        # A worker that drained and then died of the forwarded signal stopped normally.
        if os.waitstatus_to_exitcode(status) not in (0, -signal.SIGINT, -signal.SIGTERM):
            failed += 1
    if failed:
        log.error("workers_failed", failed=failed)
    return 1 if failed else 0


def _state_dir(settings: Settings) -> Path:
    return settings.attestation.state_dir or default_state_dir()


def _with_state_dir(settings: Settings) -> tuple[Settings, bool]:
    """Settings whose ``attestation.state_dir`` is set and writable (else None: memory only),
    and whether the trust levels will persist."""
    directory = _state_dir(settings)
    problem = writable_problem(directory)
    if problem is not None:
        log.error(
            "trust_state_not_persisted",
            state_dir=str(directory),
            detail=f"{problem}; set attestation.state_dir to a writable directory",
        )
    value = None if problem is not None else directory
    attestation = settings.attestation.model_copy(update={"state_dir": value})
    return settings.model_copy(update={"attestation": attestation}), problem is None


def _warn_about(
    settings: Settings, api_key: SecretStr | None, *, state_persisted: bool = True
) -> None:
    """Log what an operator should know about a risky but valid configuration."""
    if api_key is None:
        log.warning("no_api_key", upstream=settings.upstream.base_url)
    if not is_loopback(settings.server.host) and not settings.server.api_keys:
        log.warning(
            "exposed_without_auth",
            host=settings.server.host,
            detail="listening beyond loopback with no server.api_keys: anyone who can reach "
            "this port can use the Venice key",
        )
    for event, detail in weakenings(settings, state_persisted=state_persisted):
        log.warning(event, detail=detail)
    if settings.privacy.non_e2ee == "passthrough":
        log.warning(
            "plaintext_passthrough",
            detail="these models get prompts in plaintext",
            models=settings.privacy.passthrough_models,
        )


def cmd_simulate(args: argparse.Namespace) -> int:
    """``simulate``: run the simulated Venice server."""
    from proxy.simulator import run_simulator

    configure_logging()
    print(
        f"Simulated Venice (NOT Venice) at http://{args.host}:{args.port}/api/v1", file=sys.stderr
    )
    with _a_signal_stop_is_success():
        run_simulator(args.host, args.port)
    return 0


async def _verify(
    settings: Settings,
    api_key: SecretStr | None,
    model: str,
    policy: AttestationPolicy | None = None,
) -> AttestationReport:
    from proxy.http.services import build_services

    services = build_services(settings, api_key=api_key)
    if policy is not None:
        services.attester.policy = policy
    try:
        return await services.attester.report(model)
    finally:
        await services.aclose()


def cmd_verify(args: argparse.Namespace) -> int:
    """``verify``: run every check on a fresh (or saved) attestation and print the report.

    Offline, DCAP and NRAS are never skipped silently: without ``--collateral`` the ``dcap``
    check fails as not checked unless ``--no-dcap`` is given, and without ``--nras-response``
    ``gpu_nras`` fails unless ``--no-nras`` is given; a skip is printed as such.
    """
    from proxy.cli.verify import (
        INPUT_ERROR_CODES,
        VerifyInputError,
        print_error,
        print_report,
        verify_offline,
    )
    from proxy.http.services import attestation_policy

    settings = _load(args.config)
    configure_logging("warning", settings.logging.format)
    skipped: list[str] = []
    try:
        policy = attestation_policy(settings)
        if args.allow_gateway:
            policy = replace(policy, gateway_models="allow")
        if args.offline:
            if args.attestation is None:
                raise VerifyInputError("--offline needs --attestation FILE")
            if args.no_dcap:
                policy = replace(policy, dcap="off")
                skipped.append("DCAP (--no-dcap): the quote's Intel signature was NOT verified")
            if args.no_nras and policy.nvidia == "nras":
                policy = replace(policy, nvidia="nonce")
                skipped.append("NRAS (--no-nras): the GPU evidence was NOT verified by NVIDIA")
            report = verify_offline(
                args.attestation,
                policy,
                nonce_hex=args.nonce,
                collateral=args.collateral,
                nras_response=args.nras_response,
                nras_jwks=args.nras_jwks,
                at=args.at,
                model=args.model,
                trust_state=TrustState(settings.attestation.state_dir),
            )
        else:
            if args.model is None:
                raise VerifyInputError("verify needs a MODEL (or --offline)")
            report = asyncio.run(
                _verify(_with_default_state(settings), _api_key(settings), args.model, policy)
            )
    except VerifyInputError as exc:
        print_error(exc, as_json=args.json)
        return 2
    except ProxyError as exc:
        print_error(exc, as_json=args.json)
        return 2 if exc.code in INPUT_ERROR_CODES else 1
    # Every weakening of the settings (where the trust levels are kept is serve's concern:
    # weakenings() names it only when told they are not persisted).
    weakened = [detail for _, detail in weakenings(settings)]
    return print_report(report, as_json=args.json, skipped=skipped, weakened=weakened)


def _with_default_state(settings: Settings) -> Settings:
    """Read (never write) the trust levels ``serve`` remembers."""
    attestation = settings.attestation.model_copy(update={"state_dir": _state_dir(settings)})
    return settings.model_copy(update={"attestation": attestation})


def cmd_pins(args: argparse.Namespace) -> int:
    """``pins MODEL``: a model's current measurements in the ``[attestation.pins]`` format."""
    from proxy.cli.verify import VerifyInputError, print_error, render_pins, verify_offline
    from proxy.http.services import attestation_policy

    settings = _load(args.config)
    configure_logging("warning", settings.logging.format)
    try:
        if args.offline:
            if args.attestation is None:
                raise VerifyInputError("--offline needs --attestation FILE")
            report = verify_offline(
                args.attestation,
                replace(attestation_policy(settings), dcap="off", nvidia="off"),
                nonce_hex=args.nonce,
                model=args.model,
            )
        else:
            report = asyncio.run(
                _verify(_with_default_state(settings), _api_key(settings), args.model)
            )
    except (VerifyInputError, ProxyError) as exc:
        print_error(exc, as_json=False)
        return 2 if isinstance(exc, VerifyInputError) else 1
    print(render_pins(report, offline=args.offline))
    return 0 if report.passed or args.offline else 1


def cmd_trust(args: argparse.Namespace) -> int:
    """``trust show`` lists the remembered trust levels; ``trust accept MODEL`` records one."""
    settings = _load(args.config)
    state = TrustState(_state_dir(settings))
    try:
        if args.action == "accept":
            if not args.model:
                print("venice-e2ee-proxy: trust accept needs a MODEL", file=sys.stderr)
                return 2
            configured = settings.attestation.trust_levels.get(args.model)
            if configured is not None and configured != args.level:
                print(
                    f"venice-e2ee-proxy: attestation.trust_levels in the config pins "
                    f"{args.model} to {configured}; change it there",
                    file=sys.stderr,
                )
                return 2
            state.accept(args.model, args.level)
            print(f"{args.model}: {args.level} trust accepted (recorded in {state.where})")
            if args.level == "gateway" and settings.attestation.gateway_models != "allow":
                print(
                    f'note: gateway trust is used only with attestation.gateway_models = "allow" '
                    f'or attestation.trust_levels."{args.model}" = "gateway"'
                )
            return 0
        for model, entry in sorted(state.models().items()):
            accepted = " (accepted by the user)" if entry.get("accepted_at") else ""
            print(f"{model:45} {entry.get('level')}{accepted}")
        print(f"# {state.where}")
    except ProxyError as exc:
        print(f"venice-e2ee-proxy: {exc.message}", file=sys.stderr)
        return 1
    return 0


async def _models(settings: Settings, api_key: SecretStr | None) -> list[dict[str, Any]]:
    from proxy.http.services import build_services

    services = build_services(settings, api_key=api_key)
    try:
        models = await services.catalogue.models()
    finally:
        await services.upstream.aclose()
    rows = []
    for info in models.values():
        spec = info.raw.get("model_spec") if isinstance(info.raw.get("model_spec"), dict) else {}
        caps = spec.get("capabilities", {}) if isinstance(spec, dict) else {}
        rows.append(
            {
                "id": info.id,
                "e2ee": info.supports_e2ee,
                "tee": bool(isinstance(caps, dict) and caps.get("supportsTeeAttestation")),
                "privacy": spec.get("privacy") if isinstance(spec, dict) else None,
            }
        )
    return rows


def cmd_models(args: argparse.Namespace) -> int:
    """``models``: the upstream's models with their privacy capabilities."""
    settings = _load(args.config)
    configure_logging(settings.logging.level, settings.logging.format)
    try:
        rows = asyncio.run(_models(settings, _api_key(settings)))
    except ProxyError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        e2ee = "yes" if row["e2ee"] else "no"
        tee = "yes" if row["tee"] else "no"
        print(f"{row['id']:45} e2ee={e2ee:3} tee={tee}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = _parser().parse_args(argv)
    handlers = {
        "serve": cmd_serve,
        "simulate": cmd_simulate,
        "verify": cmd_verify,
        "pins": cmd_pins,
        "trust": cmd_trust,
        "models": cmd_models,
    }
    return handlers[args.command](args)
