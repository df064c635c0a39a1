"""node/logs.py: the log says what radnode did, without the per-module chatter of its libraries."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from node.logs import configure_logging


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quieted = {name: logging.getLogger(name).level for name in ("pynetdicom", "apscheduler", "highdicom")}
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for name, previous in quieted.items():
        logging.getLogger(name).setLevel(previous)


def test_highdicoms_per_module_lines_are_left_out_at_info(restored_logging: None) -> None:
    configure_logging("INFO", None)
    assert not logging.getLogger("highdicom.base").isEnabledFor(logging.INFO)
    assert logging.getLogger("highdicom.base").isEnabledFor(logging.WARNING)
    assert logging.getLogger("radnode.worker").isEnabledFor(logging.INFO)


def test_highdicoms_lines_are_kept_at_debug(restored_logging: None) -> None:
    configure_logging("DEBUG", None)
    assert logging.getLogger("highdicom.base").isEnabledFor(logging.INFO)
