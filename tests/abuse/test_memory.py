"""Memory stays flat while the upstream misbehaves over and over.

200 requests, 8 at a time, cycle through the upstream faults that cost no timeout (a reset
before and after the headers, invalid UTF-8, a non-JSON event, a stream without ``[DONE]``, a
JSON body where SSE was expected, a garbage status line) and a good answer, against a proxy in
front of :class:`~tests.support.fake_upstream.FakeUpstream`. ``tracemalloc`` measures the memory
of the whole process (client, proxy and fake share it) before and after, once a warm-up has
filled every cache and pool; the fake's own request recorders are emptied as the test goes, so
what is left is the proxy's. Afterwards: no upstream socket, proxy task or canary left behind.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import CANARY, E2EE_MODEL
from tests.support.fake_upstream import Behaviour, ProxyHarness, proxy_harness

MiB = 1 << 20


@pytest.fixture(scope="module")
def harness() -> Iterator[ProxyHarness]:
    with proxy_harness(upstream={"models_cache_ttl_s": 600}) as harness:
        yield harness


@pytest.fixture(autouse=True)
def leak_guard(harness: ProxyHarness, log_lines: Callable[[], list[str]]) -> Iterator[None]:
    harness.fake.reset()
    yield
    harness.assert_clean("\n".join(log_lines()))


# The faults that cost no timeout (as in test_abuse_upstream.py), plus a good answer.
CYCLE = (
    Behaviour("reset"),
    Behaviour("reset_before_headers"),
    Behaviour("garbage", payload=b"\xff\xfe\x00\x9c garbage \x80\n\n"),
    Behaviour("garbage", text_chunks=0, payload=b"data: <html>oops</html>\n\n"),
    Behaviour("no_done"),
    Behaviour("json_body"),
    Behaviour("bad_status_line", payload=b"HTTP/1.1 two-hundred OK\r\n\r\n"),
    Behaviour("ok"),
)
REPETITIONS = 200
CONCURRENCY = 8
# Bound on the traced growth over all repetitions, net of the test log buffer (about 1 KB a
# request). Measured: about 0.2 MiB; with every request's OpenedAnswer kept alive: 2.4 MiB.
GROWTH_LIMIT = 1 * MiB


def _body() -> dict[str, Any]:
    return {
        "model": E2EE_MODEL,
        "messages": [{"role": "user", "content": f"{CANARY} again"}],
        "stream": True,
    }


async def test_memory_is_stable_over_repeated_faults(
    harness: ProxyHarness, log_lines: Callable[[], list[str]]
) -> None:
    fake = harness.fake
    fake.cycle = CYCLE

    async def batch(client: httpx.AsyncClient, total: int) -> None:
        async def one() -> int:
            async with client.stream("POST", harness.chat_url, json=_body()) as r:
                await r.aread()
            return r.status_code

        for start in range(0, total, CONCURRENCY):
            statuses = await asyncio.gather(
                *(one() for _ in range(min(CONCURRENCY, total - start)))
            )
            assert set(statuses) <= {200, 502}
            # The recorders are test memory, not the proxy's: check them, then drop them.
            assert CANARY not in fake.recorded_text()
            fake.requests.clear()
            fake.state.requests.clear()

    tracemalloc.start()
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            await batch(client, 2 * len(fake.cycle))
            assert await asyncio.to_thread(fake.settled)
            gc.collect()
            before, _ = tracemalloc.get_traced_memory()
            logged_before = sum(len(line) + 1 for line in log_lines())
            await batch(client, REPETITIONS)
            assert await asyncio.to_thread(fake.settled)
            await asyncio.to_thread(harness.settle)
            gc.collect()
            after, _ = tracemalloc.get_traced_memory()
            logged = sum(len(line) + 1 for line in log_lines()) - logged_before
    finally:
        tracemalloc.stop()
    assert fake.chat_requests == 2 * len(fake.cycle) + REPETITIONS
    growth = after - before - logged
    assert growth < GROWTH_LIMIT, f"grew by {growth / 1024:.0f} KiB over {REPETITIONS} requests"
