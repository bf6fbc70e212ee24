"""Command line: ``venice-e2ee-proxy {serve,simulate,verify,models}`` (also ``python -m proxy``).

The edge of the program: parse arguments, build the settings once, configure logging, run
uvicorn. ``serve`` without a Venice API key (and with the default upstream) runs an offline
demo: the built-in simulator starts on a free loopback port and the proxy uses it as upstream,
with DCAP off because the simulator's quote cannot carry Intel's signature. It says so loudly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import SecretStr

from proxy.attestation import AttestationReport
from proxy.core.errors import ProxyError
from proxy.http.app import create_app
from proxy.http.guard import is_loopback
from proxy.http.loopback import free_socket
from proxy.http.shutdown import DrainingServer
from proxy.observability.logs import configure_logging, get_logger
from proxy.settings import DEFAULT_BASE_URL, Settings, SettingsError, load_settings, resolve_api_key

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


async def _serve_demo(settings: Settings) -> None:
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
    sim_server = uvicorn.Server(
        uvicorn.Config(create_simulator_app(SimulatorState()), log_level="warning", lifespan="on")
    )
    app = create_app(demo_settings, api_key=SecretStr("demo-key"), demo=True)
    proxy_server = _server(app, demo_settings)
    sim_task = asyncio.create_task(sim_server.serve(sockets=[sim_sock]))
    print(
        DEMO_BANNER.format(sim_url=sim_url, host=settings.server.host, port=settings.server.port),
        file=sys.stderr,
    )
    log.warning("demo_mode", upstream=sim_url, dcap="off", nvidia="nonce")
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
        access_log=False,
        ssl_certfile=str(server.tls_cert) if server.tls_cert else None,
        ssl_keyfile=str(server.tls_key) if server.tls_key else None,
        timeout_graceful_shutdown=10,
    )


def _server(app: Any, settings: Settings) -> uvicorn.Server:
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
    configure_logging(settings.logging.level, settings.logging.format)
    api_key = _api_key(settings)
    if api_key is None and settings.upstream.base_url == DEFAULT_BASE_URL:
        asyncio.run(_serve_demo(settings))
        return 0
    _warn_about(settings, api_key)
    app = create_app(settings, api_key=api_key)
    _server(app, settings).run()
    return 0


def _warn_about(settings: Settings, api_key: SecretStr | None) -> None:
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
    if settings.attestation.dcap == "off":
        log.warning("dcap_off", detail="TDX quote signatures are NOT verified")
    if settings.attestation.nvidia != "nras":
        log.warning("nras_off", detail="GPU evidence is NOT verified by NVIDIA NRAS")
    if settings.privacy.non_e2ee == "passthrough":
        log.warning("plaintext_passthrough", detail="non-E2EE models get prompts in plaintext")


def cmd_simulate(args: argparse.Namespace) -> int:
    """``simulate``: run the simulated Venice server."""
    from proxy.simulator import run_simulator

    configure_logging()
    print(
        f"Simulated Venice (NOT Venice) at http://{args.host}:{args.port}/api/v1", file=sys.stderr
    )
    run_simulator(args.host, args.port)
    return 0


async def _verify(settings: Settings, api_key: SecretStr | None, model: str) -> AttestationReport:
    from proxy.http.services import build_services

    services = build_services(settings, api_key=api_key)
    try:
        return await services.attester.report(model)
    finally:
        await services.aclose()


def cmd_verify(args: argparse.Namespace) -> int:
    """``verify``: run every check on a fresh (or saved) attestation and print the report."""
    from proxy.cli.verify import VerifyInputError, print_error, print_report, verify_offline
    from proxy.http.services import attestation_policy

    settings = _load(args.config)
    configure_logging("warning", settings.logging.format)
    try:
        if args.offline:
            if args.attestation is None:
                raise VerifyInputError("--offline needs --attestation FILE")
            policy = attestation_policy(settings)
            if args.collateral is None:
                policy = replace(policy, dcap="off")
            if args.nras_response is None and policy.nvidia == "nras":
                policy = replace(policy, nvidia="nonce")
            report = verify_offline(
                args.attestation,
                policy,
                nonce_hex=args.nonce,
                collateral=args.collateral,
                nras_response=args.nras_response,
                nras_jwks=args.nras_jwks,
                at=args.at,
                model=args.model,
            )
        else:
            if args.model is None:
                raise VerifyInputError("verify needs a MODEL (or --offline)")
            report = asyncio.run(_verify(settings, _api_key(settings), args.model))
    except VerifyInputError as exc:
        print_error(exc, as_json=args.json)
        return 2
    except ProxyError as exc:
        print_error(exc, as_json=args.json)
        return 1
    return print_report(report, as_json=args.json)


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
        "models": cmd_models,
    }
    return handlers[args.command](args)
