"""The log configuration: one JSON (or console) line format for the proxy's own loggers and the
standard library's, which fields each line carries, levels, quiet contexts and clipped names."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from proxy.observability.logs import (
    MAX_LOGGED_NAME,
    _component,
    clip,
    configure_logging,
    get_logger,
    quiet_context,
    traceback_without_messages,
)
from proxy.observability.worker import set_worker

CANARY = "CANARY-7f3a9c-secret-prompt"
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.asgi")
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


class TTY(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore(_capture_logs: io.StringIO) -> Iterator[None]:
    """Each test starts from uvicorn's loggers as a fresh process has them (an in-process
    uvicorn server of another test sets their levels) and configures logging its own way; the
    session's capture and those loggers' state are put back after."""
    names = (*UVICORN_LOGGERS, "uvicorn.access")
    saved = {
        name: (logging.getLogger(name).level, logging.getLogger(name).disabled) for name in names
    }
    for name in names:
        logging.getLogger(name).setLevel(logging.NOTSET)
    yield
    set_worker(0)
    configure_logging("debug", "json", stream=_capture_logs)
    for name, (level, disabled) in saved.items():
        logging.getLogger(name).setLevel(level)
        logging.getLogger(name).disabled = disabled


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


# -- clipping ----------------------------------------------------------------------------------


def test_a_name_is_clipped_at_exactly_the_limit() -> None:
    assert MAX_LOGGED_NAME == 64
    assert clip(None) is None
    assert clip("") == ""
    at_limit = "m" * 64
    assert clip(at_limit) == at_limit
    assert clip("m" * 63) == "m" * 63
    assert clip("m" * 64 + "X") == "m" * 64 + "..."
    assert clip(CANARY * 10) == (CANARY * 10)[:64] + "..."


def test_a_clip_limit_can_be_chosen() -> None:
    assert clip("abcdef", 3) == "abc..."
    assert clip("abc", 3) == "abc"
    assert clip("abcd", 4) == "abcd"
    assert clip("abcd", 0) == "..."


# -- the proxy's own lines ---------------------------------------------------------------------


def test_a_json_line_carries_event_component_level_and_utc_timestamp() -> None:
    stream = io.StringIO()
    assert configure_logging("info", "json", stream=stream) is True
    before = datetime.now(UTC)
    get_logger("proxy.test").info("request_done", status=200, model="e2ee-glm-5-1")
    after = datetime.now(UTC)
    (line,) = lines(stream)
    assert set(line) == {"event", "component", "level", "timestamp", "status", "model"}
    assert line["event"] == "request_done"
    assert line["component"] == "proxy.test"
    assert line["level"] == "info"
    assert (line["status"], line["model"]) == (200, "e2ee-glm-5-1")
    assert ISO_UTC.match(line["timestamp"]), line["timestamp"]
    stamp = datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
    assert before <= stamp <= after


def test_a_worker_adds_its_index_and_a_single_process_adds_none() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    get_logger("proxy.test").info("one")
    set_worker(3)
    get_logger("proxy.test").info("two")
    get_logger("proxy.test").info("three", worker=9)  # a field the line sets itself stays
    first, second, third = lines(stream)
    assert "worker" not in first
    assert second["worker"] == 3
    assert third["worker"] == 9


def test_the_configured_level_filters_the_proxy_s_lines() -> None:
    stream = io.StringIO()
    configure_logging("warning", "json", stream=stream)
    log = get_logger("proxy.test")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    assert [(line["event"], line["level"]) for line in lines(stream)] == [
        ("w", "warning"),
        ("e", "error"),
    ]


@pytest.mark.parametrize(
    ("level", "events"),
    [("debug", ["d", "i", "w", "e"]), ("info", ["i", "w", "e"]), ("error", ["e"])],
)
def test_each_level_name(level: Any, events: list[str]) -> None:
    stream = io.StringIO()
    configure_logging(level, "json", stream=stream)
    log = get_logger("proxy.test")
    for event in ("d", "i", "w", "e"):
        getattr(log, {"d": "debug", "i": "info", "w": "warning", "e": "error"}[event])(event)
    assert [line["event"] for line in lines(stream)] == events


def test_the_defaults_are_info_and_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    assert configure_logging() is True  # stderr here is no TTY: JSON
    get_logger("proxy.test").debug("hidden")
    get_logger("proxy.test").info("shown")
    assert [line["event"] for line in lines(stream)] == ["shown"]


def test_the_stream_defaults_to_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    configure_logging("info", "json")
    get_logger("proxy.test").info("to_stderr")
    logging.getLogger("uvicorn").warning("stdlib_to_stderr")
    assert [line["event"] for line in lines(stream)] == ["to_stderr", "stdlib_to_stderr"]


def test_an_exception_is_rendered_as_a_field_without_its_message() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    try:
        raise ValueError(CANARY)
    except ValueError:
        get_logger("proxy.test").exception("failed")
    (line,) = lines(stream)
    assert line["event"] == "failed"
    assert line["level"] == "error"
    assert line["exception"].startswith("Traceback (most recent call last):\n")
    assert "raise ValueError(CANARY)" in line["exception"]  # the code, not the value
    assert line["exception"].endswith("builtins.ValueError (message withheld)\n")
    assert CANARY not in json.dumps(line)


def test_a_standard_library_record_s_traceback_keeps_frames_and_types_only() -> None:
    # uvicorn's "Exception in ASGI application" carries whatever escaped the app, and its
    # message may quote what the app was given: the frames and the types stay, no message.
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    try:
        try:
            raise KeyError("key-" + CANARY)
        except KeyError as inner:
            raise RuntimeError("wrapped " + CANARY) from inner
    except RuntimeError:
        logging.getLogger("uvicorn.error").exception("Exception in ASGI application\n")
    (line,) = lines(stream)
    assert CANARY not in json.dumps(line)
    assert line["event"] == "Exception in ASGI application\n"
    assert line["component"] == "uvicorn"
    text = line["exception"]
    assert text.count("Traceback (most recent call last):\n") == 2
    assert text.index("builtins.KeyError (message withheld)\n") < text.index(
        "\nThe above exception was the direct cause of the following exception:\n\n"
    )
    assert text.endswith("builtins.RuntimeError (message withheld)\n")
    assert "in test_a_standard_library_record_s_traceback_keeps_frames_and_types_only" in text


def test_an_implicitly_chained_exception_says_so_and_a_suppressed_one_is_left_out() -> None:
    try:
        try:
            raise KeyError(CANARY)
        except KeyError:
            raise ValueError(CANARY)  # noqa: B904
    except ValueError as exc:
        implicit = traceback_without_messages(exc)
    assert "builtins.KeyError (message withheld)" in implicit
    assert (
        "builtins.KeyError (message withheld)\n"
        "\nDuring handling of the above exception, another exception occurred:\n\n"
        "Traceback (most recent call last):\n"
    ) in implicit
    try:
        try:
            raise KeyError(CANARY)
        except KeyError:
            raise ValueError(CANARY) from None
    except ValueError as exc:
        suppressed = traceback_without_messages(exc)
    assert "KeyError" not in suppressed
    assert suppressed.count("Traceback") == 1
    assert CANARY not in implicit + suppressed


def test_an_exception_never_raised_has_no_frames_and_a_group_names_what_it_holds() -> None:
    group = ExceptionGroup(CANARY, [ValueError(CANARY), TimeoutError()])
    assert traceback_without_messages(group) == (
        "builtins.ExceptionGroup (message withheld): holds builtins.ValueError, "
        "builtins.TimeoutError\n"
    )


def test_a_cycle_of_causes_ends() -> None:
    first, second = ValueError("a"), KeyError("b")
    first.__cause__, second.__cause__ = second, first
    assert traceback_without_messages(first) == (
        "builtins.KeyError (message withheld)\n"
        "\nThe above exception was the direct cause of the following exception:\n\n"
        "builtins.ValueError (message withheld)\n"
    )


def test_exc_info_given_as_an_exception_or_a_tuple_is_rendered_the_same() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    error = ValueError(CANARY)
    log = get_logger("proxy.test")
    log.error("as exception", exc_info=error)
    log.error("as tuple", exc_info=(ValueError, error, None))
    log.error("none", exc_info=False)
    first, second, third = lines(stream)
    assert first["exception"] == second["exception"] == "builtins.ValueError (message withheld)\n"
    assert "exception" not in third
    assert "exc_info" not in third


def test_an_asyncio_record_keeps_its_first_line_only() -> None:
    # asyncio's "Task exception was never retrieved" goes on with the task's repr, whose
    # exception=ValueError('...') quotes the exception's arguments.
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    logging.getLogger("asyncio").error(
        "Task exception was never retrieved\nfuture: <Task finished exception=ValueError(%r)>"
        "\nsource_traceback: ...",
        CANARY,
    )
    logging.getLogger("uvicorn.error").error("first\nsecond")
    (asyncio_line, uvicorn_line) = lines(stream)
    assert asyncio_line["event"] == "Task exception was never retrieved"
    assert uvicorn_line["event"] == "first\nsecond"  # other libraries' lines are theirs


def test_loggers_made_before_a_reconfiguration_follow_it() -> None:
    early = get_logger("proxy.early")
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", "json", stream=first)
    early.info("to_first")
    configure_logging("info", "json", stream=second)
    early.info("to_second")
    assert [line["event"] for line in lines(first)] == ["to_first"]
    assert [line["event"] for line in lines(second)] == ["to_second"]


def test_bound_context_variables_join_the_line() -> None:
    import structlog

    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    with structlog.contextvars.bound_contextvars(request_id="req-1"):
        get_logger("proxy.test").info("with_context")
    get_logger("proxy.test").info("without_context")
    first, second = lines(stream)
    assert first["request_id"] == "req-1"
    assert "request_id" not in second


# -- JSON or console ---------------------------------------------------------------------------


def test_auto_is_json_off_a_terminal_and_console_on_one() -> None:
    plain = io.StringIO()
    assert configure_logging("info", "auto", stream=plain) is True
    get_logger("proxy.test").info("auto_line")
    assert lines(plain)[0]["event"] == "auto_line"

    terminal = TTY()
    assert configure_logging("info", "auto", stream=terminal) is False
    get_logger("proxy.test").info("auto_line")
    text = terminal.getvalue()
    assert "auto_line" in text
    assert "\x1b[" in text  # colours on a terminal
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


def test_json_is_json_even_on_a_terminal() -> None:
    terminal = TTY()
    assert configure_logging("info", "json", stream=terminal) is True
    get_logger("proxy.test").info("json_line")
    assert lines(terminal)[0]["event"] == "json_line"


def test_console_off_a_terminal_has_no_colours() -> None:
    stream = io.StringIO()
    assert configure_logging("info", "console", stream=stream) is False
    get_logger("proxy.test").info("console_line", status=200)
    logging.getLogger("uvicorn").warning("stdlib_console_line")
    text = stream.getvalue()
    first, second = text.splitlines()
    assert "console_line" in first
    assert "status=200" in first
    assert "component=proxy.test" in first
    assert "stdlib_console_line" in second
    assert "\x1b[" not in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(first)


def test_console_on_a_terminal_has_colours_for_the_standard_library_too() -> None:
    terminal = TTY()
    configure_logging("info", "console", stream=terminal)
    logging.getLogger("uvicorn").warning("stdlib_colour_line")
    assert "\x1b[" in terminal.getvalue()


# -- the standard library's lines --------------------------------------------------------------


def test_a_standard_library_line_has_the_same_fields_and_names_its_logger() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    logging.getLogger("asyncio").warning("Task was destroyed but it is pending!")
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)
    logging.getLogger("uvicorn").info("Waiting for application startup.")
    first, second, third = lines(stream)
    assert first == {
        "event": "Task was destroyed but it is pending!",
        "component": "asyncio",
        "level": "warning",
        "timestamp": first["timestamp"],
    }
    assert ISO_UTC.match(first["timestamp"])
    # uvicorn's general logger is named uvicorn.error; its lines say uvicorn.
    assert second["component"] == "uvicorn"
    assert second["event"] == "Started server process [42]"
    assert third["component"] == "uvicorn"
    assert set(second) == set(third) == {"event", "component", "level", "timestamp"}


def test_a_standard_library_line_names_the_worker() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    set_worker(2)
    logging.getLogger("uvicorn").info("worker_line")
    assert lines(stream)[0]["worker"] == 2


def test_only_uvicorn_follows_the_level_other_libraries_warn() -> None:
    # As a uvicorn that configured its own logging would leave it: the access log on.
    logging.getLogger("uvicorn.access").disabled = False
    stream = io.StringIO()
    configure_logging("debug", "json", stream=stream)
    logging.getLogger("uvicorn").debug("uvicorn_debug")
    logging.getLogger("uvicorn.error").info("uvicorn_error_info")
    logging.getLogger("httpx").info(f"HTTP Request: POST https://host/{CANARY}")
    logging.getLogger("httpx").warning("httpx_warning")
    logging.getLogger("uvicorn.access").info('127.0.0.1 - "POST /v1/chat/completions" 200')
    events = [line["event"] for line in lines(stream)]
    assert events == ["uvicorn_debug", "uvicorn_error_info", "httpx_warning"]
    assert CANARY not in stream.getvalue()
    assert logging.getLogger().level == logging.WARNING
    assert logging.getLogger("uvicorn").level == logging.DEBUG
    assert logging.getLogger("uvicorn.access").disabled is True


def test_uvicorn_s_level_is_the_configured_one() -> None:
    stream = io.StringIO()
    configure_logging("error", "json", stream=stream)
    assert logging.getLogger("uvicorn").level == logging.ERROR
    logging.getLogger("uvicorn").warning("dropped")
    logging.getLogger("uvicorn").error("kept")
    assert [line["event"] for line in lines(stream)] == ["kept"]


def test_uvicorn_s_own_handlers_are_undone() -> None:
    stray = io.StringIO()
    for name in UVICORN_LOGGERS:
        library = logging.getLogger(name)
        library.addHandler(logging.StreamHandler(stray))
        library.propagate = False
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    for name in UVICORN_LOGGERS:
        library = logging.getLogger(name)
        assert library.handlers == [], name
        assert library.propagate is True, name
        library.warning("from %s", name)
    assert stray.getvalue() == ""
    assert [line["event"] for line in lines(stream)] == [f"from {n}" for n in UVICORN_LOGGERS]


def test_reconfiguring_replaces_the_handler_and_keeps_others() -> None:
    first, second, other = io.StringIO(), io.StringIO(), io.StringIO()
    configure_logging("info", "json", stream=first)
    foreign = logging.StreamHandler(other)
    root = logging.getLogger()
    root.addHandler(foreign)
    try:
        configure_logging("info", "json", stream=second)
        logging.getLogger("uvicorn").warning("once")
    finally:
        root.removeHandler(foreign)
    assert first.getvalue() == ""
    assert [line["event"] for line in lines(second)] == ["once"]
    assert other.getvalue() == "once\n"  # someone else's handler is theirs


# -- quiet contexts ----------------------------------------------------------------------------


def test_a_quiet_context_drops_standard_library_lines_below_its_level() -> None:
    stream = io.StringIO()
    configure_logging("debug", "json", stream=stream)
    uvicorn = logging.getLogger("uvicorn")

    def emit() -> None:
        uvicorn.info("quiet_info")
        uvicorn.warning("quiet_warning")
        uvicorn.error("quiet_error")

    quiet_context().run(emit)
    quiet_context(logging.ERROR).run(emit)
    emit()  # outside: nothing dropped
    assert [line["event"] for line in lines(stream)] == [
        "quiet_warning",
        "quiet_error",
        "quiet_error",
        "quiet_info",
        "quiet_warning",
        "quiet_error",
    ]


def test_a_quiet_context_is_a_copy_of_the_current_one() -> None:
    import contextvars

    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")
    marker.set("outside")
    assert quiet_context().run(marker.get) == "outside"


# -- the component processor -------------------------------------------------------------------


def test_a_record_that_already_names_its_component_keeps_it() -> None:
    record = logging.LogRecord("asyncio", logging.WARNING, __file__, 1, "m", None, None)
    named = {"event": "m", "_record": record, "component": "proxy.sim"}
    assert _component(None, "warning", dict(named)) == named
    # Without a record there is nothing to name.
    assert _component(None, "warning", {"event": "m"}) == {"event": "m"}
