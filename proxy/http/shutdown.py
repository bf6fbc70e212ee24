"""Graceful shutdown: on SIGTERM/SIGINT stop taking requests, let the ones in flight finish.

:class:`DrainingServer` is a uvicorn server whose first exit signal only starts draining: new
requests get 503 with ``Retry-After`` (and ``/readyz`` turns 503, so a load balancer moves on)
while streams already running complete. Uvicorn's own shutdown begins when nothing is in flight
or after ``grace_s``, whichever comes first. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
from types import FrameType

import uvicorn

from proxy.http.guard import DrainController
from proxy.observability.logs import get_logger

log = get_logger("proxy.shutdown")


class DrainingServer(uvicorn.Server):
    """A uvicorn server that drains before it stops."""

    def __init__(self, config: uvicorn.Config, drain: DrainController, grace_s: float) -> None:
        super().__init__(config)
        self._drain = drain
        self._grace_s = grace_s
        self._draining_task: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining_task is not None or self._grace_s <= 0:
            super().handle_exit(sig, frame)
            return
        self._drain.start_draining()
        log.info("draining", in_flight=self._drain.in_flight, grace_s=self._grace_s)
        loop = asyncio.get_running_loop()
        self._draining_task = loop.create_task(self._stop_when_idle(sig, frame))

    async def _stop_when_idle(self, sig: int, frame: FrameType | None) -> None:
        idle = await self._drain.wait_idle(self._grace_s)
        if not idle:
            log.warning("drain_timeout", in_flight=self._drain.in_flight)
        super().handle_exit(sig, frame)
