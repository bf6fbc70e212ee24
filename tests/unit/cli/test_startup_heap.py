"""The serving process freezes its start-up heap before it serves (see
:func:`proxy.cli.main.freeze_startup_heap`). Checked in a child process: freezing this test
process would keep the garbage of every later test's cycles."""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    import gc
    from proxy.cli import main
    from proxy.http.app import create_app
    from proxy.settings import Settings

    app = create_app(Settings())
    before = gc.get_freeze_count()
    garbage = []
    garbage.append(garbage)  # a cycle left from start-up: collected, not frozen
    del garbage
    server = main._server(app, Settings())
    frozen = gc.get_freeze_count()
    gc.unfreeze()
    print(before, frozen, gc.collect(), type(server).__name__)
    """
)


def test_the_server_is_built_with_the_start_up_heap_frozen_and_its_garbage_collected() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=True
    )
    before, frozen, left, server = done.stdout.split()
    assert int(before) == 0
    assert int(frozen) > 10_000  # modules, the app, its services
    assert int(left) == 0  # the start-up cycle was collected before the freeze, not frozen
    assert server == "DrainingServer"
