"""A ``text/event-stream`` answer written straight to the ASGI server.

Starlette's ``StreamingResponse`` (under ASGI spec 2.3, which uvicorn speaks) runs every stream
in an anyio task group with a second task listening for the hang-up, and passes each part
through its iterator checks. :class:`EventStream` does the same job with one watcher task and
nothing per part but the ``send``:

- ``http.response.start`` (status 200, the given headers, ``content-type:
  text/event-stream``), then one ``http.response.body`` per part the body yields (``more_body``
  true), then an empty closing body.
- The watcher reads ``receive`` for ``http.disconnect`` and, when the client hangs up, cancels
  the task writing the stream: the body generator gets the cancellation where it waits (its own
  ``except``/``finally`` record the hang-up and close the upstream), and the cancellation is
  absorbed here, so the server sees an answer that simply ended. A cancellation from anywhere
  else (server shutdown) propagates unchanged.
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
        writer = asyncio.current_task()
        assert writer is not None
        hung_up = False

        async def watch() -> None:
            nonlocal hung_up
            while (await receive())["type"] != "http.disconnect":
                pass
            hung_up = True
            writer.cancel()

        watcher = writer.get_loop().create_task(watch())
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
            if not hung_up:
                raise
            writer.uncancel()  # our own cancellation: the client is gone, the answer ends
        finally:
            watcher.cancel()
            # Closed here whatever ended the stream (a hang-up seen during a send leaves the
            # generator suspended at its yield): its own clean-up runs now, not at collection.
            await self.body_iterator.aclose()
