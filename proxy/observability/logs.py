"""Structured logging: JSON lines when not a TTY, console otherwise.

What may be logged: ids, model names, statuses, counts, durations, signing addresses (public),
check codes. What is never logged: prompt or completion text, API keys, key material. The
request path logs one canonical line per request (:func:`request_logger`); nothing logs message
bodies, so there is no redaction layer to get wrong.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(
    level: Literal["debug", "info", "warning", "error"] = "info",
    fmt: Literal["auto", "json", "console"] = "auto",
    stream: TextIO | None = None,
) -> None:
    """Configure structlog once, at start-up."""
    out = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    # uvicorn's own access log would duplicate our request line; its error log stays.
    logging.getLogger("uvicorn.access").disabled = True


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger carrying ``component=name``."""
    # Initial values keep the proxy lazy: module-level loggers pick up configure_logging()
    # even when created before it ran.
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(component=name)
    return logger
