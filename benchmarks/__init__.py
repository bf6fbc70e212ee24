"""Benchmarks for venice-e2ee-proxy (not part of the test suite).

Run ``make bench`` (or ``.venv/bin/python -m benchmarks.run [--quick] [--json FILE]``); see
``benchmarks/README.md`` for what each figure means. Everything runs on this machine against the
built-in simulator over loopback; nothing here reaches the network.
"""
