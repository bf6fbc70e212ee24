"""DrainingServer's exit signals, without a server running: the first signal drains (new
requests refused, the ones in flight finish) and uvicorn is told to exit when nothing is in
flight or the grace period is over; a second signal, or no grace period, exits at once."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Callable
from types import FrameType

import uvicorn

from proxy.http.guard import DrainController
from proxy.http.shutdown import DrainingServer


class Uvicorn(uvicorn.Server):
    """Between DrainingServer and uvicorn's Server: records what reaches uvicorn's handler."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.exits: list[tuple[int, FrameType | None]] = []
        self.exited = asyncio.Event()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.exits.append((sig, frame))
        self.exited.set()
        super().handle_exit(sig, frame)


class Server(DrainingServer, Uvicorn):
    """A DrainingServer whose ``super()`` is the recorder, then uvicorn's Server."""


def server(drain: DrainController, grace_s: float) -> Server:
    return Server(uvicorn.Config(app="unused:app"), drain, grace_s)


def test_it_is_a_uvicorn_server_of_the_config_it_was_given() -> None:
    config = uvicorn.Config(app="unused:app", port=8123)
    assert DrainingServer(config, DrainController(), grace_s=5).config is config


def events(lines: list[str]) -> list[dict[str, object]]:
    found: list[dict[str, object]] = []
    for line in lines:
        record = json.loads(line)
        if record.get("component") == "proxy.shutdown":
            found.append(record)
    return found


async def test_the_first_signal_drains_and_exits_when_the_last_request_ends(
    log_lines: Callable[[], list[str]],
) -> None:
    drain = DrainController()
    exiting = server(drain, grace_s=30)
    frame = sys._getframe()
    drain.enter()  # a stream in flight
    exiting.handle_exit(signal.SIGTERM, frame)
    assert drain.draining  # new requests are refused from now on
    await asyncio.sleep(0.02)
    assert exiting.exits == []  # still waiting for the stream
    assert not exiting.should_exit
    drain.leave()
    await asyncio.wait_for(exiting.exited.wait(), 5)
    assert exiting.exits == [(signal.SIGTERM, frame)]  # the signal and frame it was given
    assert exiting.should_exit
    assert not exiting.force_exit
    [draining] = events(log_lines())  # no drain_timeout
    assert draining["event"] == "draining"
    assert (draining["in_flight"], draining["grace_s"]) == (1, 30)


async def test_a_second_signal_while_draining_goes_straight_to_uvicorn() -> None:
    drain = DrainController()
    exiting = server(drain, grace_s=30)
    drain.enter()
    exiting.handle_exit(signal.SIGTERM, None)
    exiting.handle_exit(signal.SIGINT, None)
    assert exiting.exits == [(signal.SIGINT, None)]
    assert exiting.should_exit
    drain.leave()


async def test_a_grace_period_under_a_second_still_drains() -> None:
    drain = DrainController()
    exiting = server(drain, grace_s=0.5)
    exiting.handle_exit(signal.SIGTERM, None)
    assert drain.draining
    await asyncio.wait_for(exiting.exited.wait(), 5)  # nothing in flight
    assert exiting.exits == [(signal.SIGTERM, None)]


async def test_no_grace_period_exits_at_once_without_draining(
    log_lines: Callable[[], list[str]],
) -> None:
    for grace_s in (0, -1):
        drain = DrainController()
        exiting = server(drain, grace_s=grace_s)
        frame = sys._getframe()
        exiting.handle_exit(signal.SIGTERM, frame)
        assert exiting.exits == [(signal.SIGTERM, frame)]
        assert exiting.should_exit
        assert not drain.draining
    assert events(log_lines()) == []


async def test_a_request_that_outlives_the_grace_period_is_logged_and_uvicorn_exits(
    log_lines: Callable[[], list[str]],
) -> None:
    drain = DrainController()
    exiting = server(drain, grace_s=0.05)
    drain.enter()  # a stream that never ends
    drain.enter()
    exiting.handle_exit(signal.SIGTERM, None)
    await asyncio.wait_for(exiting.exited.wait(), 5)
    assert exiting.exits == [(signal.SIGTERM, None)]
    draining, timeout = events(log_lines())
    assert draining["event"] == "draining"
    assert timeout["event"] == "drain_timeout"
    assert timeout["level"] == "warning"
    assert timeout["in_flight"] == 2
