"""Which worker process this is (``server.workers``): set once by the CLI before the app is
built, named by every log line (``worker``) and by the ``venice_proxy_worker`` metric."""

from __future__ import annotations

_worker = 0


def set_worker(index: int) -> None:
    """This process is worker ``index`` (1-based; 0 = the only process)."""
    global _worker  # one value per process, set once at start
    _worker = index


def current_worker() -> int:
    """This process's worker index (0 when ``server.workers`` is 1)."""
    return _worker
