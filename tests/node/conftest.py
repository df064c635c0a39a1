"""Fixtures for tests that run ``radnode serve`` against real DICOM peers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.node_process import RadnodeProcess, start_node


@pytest.fixture
def radnode(tmp_path: Path) -> Iterator[Callable[..., RadnodeProcess]]:
    """Start ``radnode serve`` with given config options; every node started is stopped after."""
    started: list[RadnodeProcess] = []

    def _start(name: str = "node", **options) -> RadnodeProcess:  # type: ignore[no-untyped-def]
        node = start_node(tmp_path / name, **options)
        started.append(node)
        return node

    yield _start
    for node in started:
        if node.process is not None and node.process.poll() is None:
            node.kill9()


from tests.support.postgres import postgresql_database, postgresql_server  # noqa: E402,F401
