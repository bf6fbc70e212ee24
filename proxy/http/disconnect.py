"""Cancel work when the client hangs up (before a streamed answer's first byte, and while a
non-streaming answer is gathered).

While nothing is written to the client, a hang-up is only seen by reading ASGI ``receive`` for
``http.disconnect``; streaming responses learn it from their writer instead
(:mod:`proxy.http.event_stream`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

T = TypeVar("T")


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` in this task; if the client goes away first, cancel this task, so
    ``work`` gets the cancellation where it waits and the caller a ``CancelledError``.

    One watcher task reads ``receive``; ``work`` runs in the caller's own task (no task and no
    ``asyncio.wait`` per request). The watcher is cancelled as soon as ``work`` ends, before
    the caller can wait on anything else, so it never cancels what comes after.
    """
    current = asyncio.current_task()
    if current is None:
        raise RuntimeError("until_disconnect must run in a task")

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        current.cancel()

    watcher = current.get_loop().create_task(watch())
    try:
        return await work
    finally:
        watcher.cancel()
