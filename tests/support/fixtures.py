"""Where the real captured test data lives: ``tests/fixtures`` (see its README)."""

from pathlib import Path

FIXTURES_DIR = Path(__file__).resolve().parents[1] / "fixtures"
