"""A ``text/event-stream`` answer written straight to the ASGI server.

Starlette's ``StreamingResponse`` (under ASGI spec 2.3, which uvicorn speaks) runs every stream
in an anyio task group with a second task listening for the hang-up, and passes each part
through its iterator checks. :class:`EventStream` does the same job with a writer task and a
watcher task, and nothing per part but the ``send``:

- ``http.response.start`` (status 200, the given headers, ``content-type:
  text/event-stream``), then one ``http.response.body`` per part the body yields (``more_body``
  true), then an empty closing body.
- The parts are written by a task of their own (the writer), which the handler's task waits
  for. Each part resumes the coroutines of the task it runs in, from the outermost: in the
  handler's task that is the server's, the framework's and every guard's ``__call__`` (about
  17 frames) before the body's own, on every token. The writer's task starts at the body.
- The watcher reads ``receive`` for ``http.disconnect`` and, when the client hangs up, cancels
  the writer: the body generator gets the cancellation where it waits (its own
  ``except``/``finally`` record the hang-up and close the upstream), and the cancellation is
  absorbed there, so the server sees an answer that simply ended. A cancellation of the
  handler's task (server shutdown) cancels the writer and propagates unchanged once it ended.
- The event loop runs between two parts, so a hang-up is seen at once: when the body's parts
  come from bytes already buffered upstream, nothing would suspend, the server's
  ``connection_lost`` could not run, every later part would go to a dead socket (asyncio logs
  "socket.send() raised exception." for each) and the whole answer would be read. After a
  part, the writer yields to the loop once, unless ``source_waits`` (a count the body's source
  moves whenever a read had to wait for the network, so the loop ran) moved since the part
  before: one system call and one loop pass per token saved at a real pace.
- Parts must be ``bytes``; nothing is encoded or buffered here. The body generator is closed
  when the stream ends, however it ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Mapping

from starlette.responses import Response
from starlette.types import Receive, Scope, Send


class EventStream(Response):
    """Relay ``body`` as an event stream; see the module docstring."""

    media_type = "text/event-stream"

    def __init__(
        self,
        body: AsyncGenerator[bytes, None],
        headers: Mapping[str, str],
        *,
        source_waits: Callable[[], int] | None = None,
    ) -> None:
        self.body_iterator = body
        self._source_waits = source_waits
        self.status_code = 200
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        hung_up = False
        writer = loop.create_task(self._write(send, lambda: hung_up))

        async def watch() -> None:
            nonlocal hung_up
            while (await receive())["type"] != "http.disconnect":
                pass
            hung_up = True
            writer.cancel()

        watcher = loop.create_task(watch())
        try:
            # Cancelling this task (server shutdown) cancels the writer it waits for, and the
            # await ends only once the writer has.
            await writer
        finally:
            watcher.cancel()
            # Closed here whatever ended the stream (a hang-up seen during a send leaves the
            # generator suspended at its yield; a writer cancelled before its first step never
            # ran it): its own clean-up runs now, not at collection.
            await self.body_iterator.aclose()

    async def _write(self, send: Send, hung_up: Callable[[], bool]) -> None:
        """Write the stream (the task every part is relayed in; see the module docstring)."""
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            source_waits = self._source_waits
            waits = -1
            async for part in self.body_iterator:
                await send({"type": "http.response.body", "body": part, "more_body": True})
                if source_waits is None:
                    await asyncio.sleep(0)
                    continue
                seen, waits = waits, source_waits()
                if seen == waits:
                    await asyncio.sleep(0)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not hung_up():
                raise
            # Our own cancellation: the client is gone, the answer ends.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
