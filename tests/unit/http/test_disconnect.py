"""until_disconnect on a bare ASGI receive: the result, a hang-up, and nothing after the work."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.requests import Request

from proxy.http.disconnect import until_disconnect


class Client:
    """ASGI receive: the body, then nothing until ``hang_up``."""

    def __init__(self) -> None:
        self._gone = asyncio.Event()
        self._sent_body = False

    def hang_up(self) -> None:
        self._gone.set()

    async def receive(self) -> dict[str, Any]:
        if not self._sent_body:
            self._sent_body = True
            return {"type": "http.request", "body": b"{}", "more_body": False}
        await self._gone.wait()
        return {"type": "http.disconnect"}


def request(client: Client) -> Request:
    return Request({"type": "http", "method": "POST", "path": "/", "headers": []}, client.receive)


async def test_the_work_runs_in_the_callers_task_and_its_result_comes_back() -> None:
    client = Client()
    caller = asyncio.current_task()

    async def work() -> str:
        assert asyncio.current_task() is caller
        await asyncio.sleep(0.01)
        return "answer"

    before = len(asyncio.all_tasks())
    assert await until_disconnect(request(client), work()) == "answer"
    await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) == before  # the watcher is gone


async def test_a_hang_up_cancels_the_work_where_it_waits() -> None:
    client = Client()
    cancelled = asyncio.Event()

    async def work() -> str:
        try:
            await asyncio.sleep(30)  # the upstream thinking
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    async def caller() -> str:
        return await until_disconnect(request(client), work())

    task = asyncio.create_task(caller())
    await asyncio.sleep(0.01)
    client.hang_up()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert cancelled.is_set()


async def test_a_hang_up_after_the_work_ended_cancels_nothing_later() -> None:
    client = Client()

    async def work() -> str:
        return "done"

    async def caller() -> str:
        result = await until_disconnect(request(client), work())
        client.hang_up()
        await asyncio.sleep(0.05)  # what the request does next (the stream) is not cancelled
        return result

    assert await asyncio.wait_for(caller(), 5) == "done"


async def test_outside_a_task_it_refuses_at_once_and_never_runs_the_work() -> None:
    """A coroutine driven by hand from a loop callback has no task to cancel on a hang-up."""
    client = Client()
    ran: list[str] = []

    async def work() -> str:
        ran.append("work")
        return "never"

    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[BaseException] = loop.create_future()
    pending = work()

    def drive() -> None:
        guarded = until_disconnect(request(client), pending)
        try:
            guarded.send(None)
        except BaseException as exc:  # the outcome is what is tested
            outcome.set_result(exc)

    loop.call_soon(drive)
    error = await asyncio.wait_for(outcome, 5)
    pending.close()
    assert isinstance(error, RuntimeError)
    assert str(error) == "until_disconnect must run in a task"
    assert ran == []
