"""The Responses API's event builder over long answers: cost per token as the answer grows.

Usage (from the repository root; not part of ``make bench``)::

    .venv/bin/python -m benchmarks.responses_stream [--tokens N ...] [--piece TEXT]

For each answer length it feeds a fresh :class:`~proxy.core.responses.ResponseBuilder` one
decrypted chat chunk per token (``content`` = ``--piece``, 4 characters by default), encodes
every event as the relay does (:func:`~proxy.core.responses.encode_event`) and completes the
response (whose final event carries the whole answer). It prints the microseconds per token
and the total per length: a per-token cost that grows with the length means the builder copies
the answer per token (it did, before the text was gathered in pieces: 3.3, 10 and 160 µs per
token at 10,000, 40,000 and 160,000 tokens). One process, no servers, no network.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from proxy.core.responses import ResponseBuilder, encode_event

DEFAULT_TOKENS = (1_000, 10_000, 100_000)


def builder_figures(tokens: int, piece: str = "abcd") -> dict[str, Any]:
    """One answer of ``tokens`` tokens through the builder: seconds in total, µs per token and
    the length of the final answer (for a check that every token arrived)."""
    builder = ResponseBuilder(model="m", echo={})
    chunk = {"choices": [{"index": 0, "delta": {"content": piece}}]}
    started = time.perf_counter()
    written = sum(len(encode_event(event)) for event in builder.start())
    for _ in range(tokens):
        for event in builder.feed(chunk):
            written += len(encode_event(event))
    for event in builder.complete():
        written += len(encode_event(event))
    seconds = time.perf_counter() - started
    return {
        "tokens": tokens,
        "seconds": seconds,
        "us_per_token": seconds / tokens * 1e6,
        "answer_chars": len(builder.output_text()),
        "bytes_written": written,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=list(DEFAULT_TOKENS))
    parser.add_argument("--piece", default="abcd", help="the text of one token")
    args = parser.parse_args(argv)
    for tokens in args.tokens:
        figures = builder_figures(tokens, args.piece)
        print(
            f"{tokens:>9,} tokens: {figures['us_per_token']:7.2f} µs per token, "
            f"{figures['seconds']:7.3f} s, {figures['bytes_written'] / 1e6:7.1f} MB of events"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
