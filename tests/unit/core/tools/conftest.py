"""Each test compiles its schemas afresh: the process's schema cache would otherwise hand a
test what an earlier one (or, under mutation testing, the unmutated run) compiled."""

from collections.abc import Iterator

import pytest

from proxy.core.tools.validate import _compile_canonical


@pytest.fixture(autouse=True)
def _fresh_schema_cache() -> Iterator[None]:
    _compile_canonical.cache_clear()
    yield
    _compile_canonical.cache_clear()
