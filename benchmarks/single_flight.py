"""Cold start under a burst: 100 concurrent first requests to a model the proxy has not attested.

Layout: the simulator runs in a thread of THIS process (so its ``attestation_fetches`` counter
and its recorded requests can be read afterwards), the proxy in a fresh subprocess (so it starts
with an empty key cache and model catalogue), the client in this process's event loop. The
requests are launched together with ``asyncio.gather``; each is a short streamed E2EE chat that
must complete with the right answer.

Reported: attestation fetches the simulator served (the goal is exactly 1), ``/models`` fetches
(also single-flight in the proxy), chat requests it saw, and failed client streams.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from benchmarks.client import E2EE_MODEL, new_client, prompt_for_tokens, proxy_target, stream_once
from benchmarks.procs import start_proxy
from proxy.http.loopback import ThreadedServer
from proxy.simulator import SimulatorState, create_simulator_app


@dataclass(frozen=True, slots=True)
class SingleFlightFigures:
    requests: int
    attestation_fetches: int
    models_fetches: int
    upstream_chats: int
    errors: int


async def measure_single_flight(log_dir: Path, *, requests: int) -> SingleFlightFigures:
    """Fire ``requests`` concurrent first requests through a fresh proxy."""
    state = SimulatorState()
    with (
        ThreadedServer(create_simulator_app(state)) as simulator,
        start_proxy(log_dir, upstream_url=simulator.url + "/api/v1") as proxy,
    ):
        target = proxy_target(proxy.url, E2EE_MODEL, "proxy_e2ee")
        prompt = prompt_for_tokens(8)
        async with new_client(requests) as client:
            results = await asyncio.gather(
                *(
                    stream_once(client, target, prompt, expected=prompt.answer)
                    for _ in range(requests)
                )
            )
        models = sum(1 for r in state.requests if r.path.endswith("/models"))
        return SingleFlightFigures(
            requests=requests,
            attestation_fetches=state.attestation_fetches,
            models_fetches=models,
            upstream_chats=state.chat_requests,
            errors=sum(1 for result in results if not result.ok),
        )
