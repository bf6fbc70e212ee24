"""Loopback sockets and in-thread uvicorn servers.

One helper for every place that needs a free local port or a real server on its own event loop:
the offline demo (its simulator), the tests, the benchmarks and the soak script.

Sockets are created with ``IPPROTO_TCP`` so asyncio sets ``TCP_NODELAY`` on the connections
they accept (small SSE events are not held back by Nagle's algorithm). Deliberately not done
here: picking a port that stays free; :func:`free_port` only reports one that was free a moment
ago, for a child process that binds it itself.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Literal

import uvicorn

LOOPBACK = "127.0.0.1"


def free_socket(host: str = LOOPBACK) -> socket.socket:
    """A socket bound to ``host`` on a port the kernel chose, ready for ``listen``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


def free_port(host: str = LOOPBACK) -> int:
    """A port on ``host`` that was free a moment ago (the caller's child binds it right after)."""
    with free_socket(host) as sock:
        port: int = sock.getsockname()[1]
        return port


class ThreadedServer:
    """One uvicorn server on its own event loop in a daemon thread, on a free loopback port.

    ``with ThreadedServer(app) as server: ... server.url ...`` or ``start()`` / ``stop()``.
    """

    def __init__(
        self,
        app: Any,
        *,
        log_level: str = "warning",
        lifespan: Literal["auto", "on", "off"] = "on",
        backlog: int = 2048,
        start_timeout_s: float = 20.0,
    ) -> None:
        self.app = app
        self._sock = free_socket()
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://{LOOPBACK}:{self.port}"
        self._start_timeout_s = start_timeout_s
        # log_config=None: uvicorn logs through the process's configuration (never its own
        # dictConfig, which would replace the proxy's handlers).
        config = uvicorn.Config(
            app,
            log_level=log_level,
            log_config=None,
            lifespan=lifespan,
            access_log=False,
            backlog=backlog,
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def start(self) -> ThreadedServer:
        """Start and wait until it accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + self._start_timeout_s
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the in-thread server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Ask it to exit and wait for the thread."""
        self.server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> ThreadedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextmanager
def serve(app: Any, **options: Any) -> Iterator[ThreadedServer]:
    """Run ``app`` in a thread for the duration of the block."""
    with ThreadedServer(app, **options) as server:
        yield server
