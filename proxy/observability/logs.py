"""Structured logging: JSON lines when not a TTY, console otherwise.

One format for every line on the stream: the proxy's own structlog loggers, and the standard
library's loggers (uvicorn's ``uvicorn`` / ``uvicorn.error``, ``asyncio``, ...) through a
:class:`structlog.stdlib.ProcessorFormatter` on the root logger. A standard-library record
becomes ``{"event": <its message>, "component": <logger name>, "level", "timestamp"}``
(``uvicorn.error`` is named ``uvicorn``).
Levels: ``uvicorn`` at the configured level; every other library at ``warning`` or above (httpx
would otherwise log each request's URL at ``info``). ``uvicorn.access`` is off: the proxy logs
its own line per request. Whoever runs a uvicorn server in this process must pass
``log_config=None`` so uvicorn leaves this configuration alone.

:func:`quiet_context` gives a task a context whose standard-library records below a level are
dropped (the offline demo's in-process simulator, whose start-up lines would otherwise repeat
the proxy's).

What may be logged: ids, model names, statuses, counts, durations, signing addresses (public),
check codes. What is never logged: prompt or completion text, API keys, key material. The
request path logs one canonical line per request (:func:`request_logger`); nothing logs message
bodies, so there is no redaction layer to get wrong.

Exceptions are the one place where text the proxy did not choose could reach a line: a
library's message may quote what it was given (uvicorn logs "Exception in ASGI application"
with the traceback of whatever escaped the app; asyncio logs a task's exception with its
``repr``). So a line's ``exception`` field (:func:`traceback_without_messages`) keeps every
frame (file, line, function and the source line: the code, never data) and each exception's
type, chained ones included, but never an exception's message or arguments; and an
``asyncio`` record keeps its first line only (the rest is the future's ``repr``, with the
exception's arguments in it). Deliberately not done: redacting the messages of other
libraries' records, which state what happened in their own words (uvicorn's and aiohttp's
warnings name no request content).
"""

from __future__ import annotations

import contextvars
import logging
import sys
import traceback
from typing import Any, Literal, TextIO

import structlog

from proxy.observability.worker import current_worker

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


MAX_LOGGED_NAME = 64
"""Client-chosen names (a model id) are cut to this many characters in a log line."""

_QUIET_BELOW: contextvars.ContextVar[int] = contextvars.ContextVar("quiet_below", default=0)


def clip(text: str | None, limit: int = MAX_LOGGED_NAME) -> str | None:
    """``text`` cut to ``limit`` characters (``...`` marks a cut) for a log line."""
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + "..."


def quiet_context(level: int = logging.WARNING) -> contextvars.Context:
    """A copy of the current context in which standard-library records below ``level`` are
    dropped; run a task in it with ``asyncio.create_task(coro, context=...)``."""
    context = contextvars.copy_context()
    context.run(_QUIET_BELOW.set, level)
    return context


def traceback_without_messages(exc: BaseException) -> str:
    """``exc``'s traceback as Python prints it, chained exceptions first, with each exception's
    line reduced to its type (``builtins.ValueError (message withheld)``); an exception group
    also names the types it holds, not their messages or tracebacks."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    parts: list[str] = []
    for position, error in enumerate(reversed(chain)):
        if position:
            parts.append(
                "\nThe above exception was the direct cause of the following exception:\n\n"
                if error.__cause__ is not None
                else "\nDuring handling of the above exception, another exception occurred:\n\n"
            )
        if error.__traceback__ is not None:
            parts.append("Traceback (most recent call last):\n")
            parts.extend(traceback.format_tb(error.__traceback__))
        parts.append(f"{_type_name(error)} (message withheld)")
        if isinstance(error, BaseExceptionGroup):
            parts.append(": holds " + ", ".join(_type_name(inner) for inner in error.exceptions))
        parts.append("\n")
    return "".join(parts)


def _type_name(error: BaseException) -> str:
    kind = type(error)
    return f"{kind.__module__}.{kind.__qualname__}"


def _exception_field(_: Any, __: str, event_dict: Any) -> Any:
    """``exc_info`` (True, an exception, or a ``sys.exc_info()`` tuple) as an ``exception``
    field written by :func:`traceback_without_messages`."""
    exc_info = event_dict.pop("exc_info", None)
    if exc_info is True:
        exc_info = sys.exc_info()
    error = exc_info[1] if isinstance(exc_info, tuple) else exc_info
    if isinstance(error, BaseException):
        event_dict["exception"] = traceback_without_messages(error)
    return event_dict


def _asyncio_first_line(_: Any, __: str, event_dict: Any) -> Any:
    """An ``asyncio`` record's first line only: the lines after it are ``repr`` s of the
    future, the task and the exception, which carry the exception's arguments."""
    record = event_dict.get("_record")
    event = event_dict.get("event")
    if record is not None and record.name == "asyncio" and isinstance(event, str):
        event_dict["event"] = event.split("\n", 1)[0]
    return event_dict


class _QuietFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= _QUIET_BELOW.get()


def _component(_: Any, __: str, event_dict: Any) -> Any:
    """A standard-library record's logger name as ``component``, like the proxy's own lines
    (``uvicorn.error``, uvicorn's general logger despite its name, as ``uvicorn``)."""
    record = event_dict.get("_record")
    if record is not None and "component" not in event_dict:
        event_dict["component"] = "uvicorn" if record.name == "uvicorn.error" else record.name
    return event_dict


def _worker(_: Any, __: str, event_dict: Any) -> Any:
    """``worker``: which process wrote the line, when ``server.workers`` runs several."""
    index = current_worker()
    if index:
        event_dict.setdefault("worker", index)
    return event_dict


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler this module installs (recognised and replaced on reconfiguration)."""


def configure_logging(
    level: Literal["debug", "info", "warning", "error"] = "info",
    fmt: Literal["auto", "json", "console"] = "auto",
    stream: TextIO | None = None,
) -> bool:
    """Configure structlog and the standard library's root logger once, at start-up.

    Returns True when lines are JSON (``fmt="json"``, or ``"auto"`` and ``stream`` is not a
    TTY).
    """
    out = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        _worker,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _exception_field,
    ]
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    handler = _Handler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[_component, _asyncio_first_line, *shared],
        )
    )
    handler.addFilter(_QuietFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.asgi"):
        library = logging.getLogger(name)
        # Undo a dictConfig uvicorn may have applied: its lines go through the root handler.
        library.handlers.clear()
        library.propagate = True
    logging.getLogger("uvicorn").setLevel(_LEVELS[level])
    # uvicorn's own access log would duplicate our request line; its error log stays.
    logging.getLogger("uvicorn.access").disabled = True
    return use_json


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger carrying ``component=name``."""
    # Initial values keep the proxy lazy: module-level loggers pick up configure_logging()
    # even when created before it ran.
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(component=name)
    return logger
