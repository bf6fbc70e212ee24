"""server.workers: each process names itself in its log lines and its metrics."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest

from proxy.observability.logs import get_logger
from proxy.observability.metrics import Metrics
from proxy.observability.worker import current_worker, set_worker


@pytest.fixture
def worker_two() -> Iterator[None]:
    set_worker(2)
    yield
    set_worker(0)


def test_a_single_process_is_worker_zero_and_logs_no_worker_field(
    log_lines: Callable[[], list[str]],
) -> None:
    get_logger("proxy.test").info("worker_test_line")
    assert current_worker() == 0
    assert "worker" not in json.loads(log_lines()[-1])


@pytest.mark.usefixtures("worker_two")
def test_a_worker_names_itself_in_logs_and_metrics(log_lines: Callable[[], list[str]]) -> None:
    get_logger("proxy.test").info("worker_test_line")
    assert json.loads(log_lines()[-1])["worker"] == 2
    metrics = Metrics(process_metrics=False)
    assert metrics.registry.get_sample_value("venice_proxy_worker", {"worker": "2"}) == 1.0
