"""``python -m benchmarks.sim_main --port P --token-delay S``: the project's simulated Venice in
its own process, with a chosen gap between streamed events.

Same app as ``venice-e2ee-proxy simulate`` (base URL ``http://127.0.0.1:P/api/v1``, any
non-empty bearer key accepted), but with ``token_delay_s`` settable and uvicorn's access log
off, so the simulator spends its CPU on the protocol rather than on logging. ``--phala`` turns
on Phala legacy semantics (one server ephemeral per response).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import uvicorn

from proxy.simulator import SimulatorState, create_simulator_app
from proxy.simulator.faults import Faults


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sim_main")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between events")
    parser.add_argument(
        "--phala",
        action="store_true",
        help="Phala legacy mode: one server ephemeral key per response (one ECDH per response "
        "on each side instead of one per token), as Venice's Phala backends do",
    )
    args = parser.parse_args(argv)
    state = SimulatorState(token_delay_s=args.token_delay)
    if args.phala:
        state.faults = Faults(phala_legacy=True)
    uvicorn.run(
        create_simulator_app(state),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        # The load test opens hundreds of connections at once.
        backlog=4096,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
