"""The supervisor's stop signal: children poll it, and setting it never waits for them."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from typing import Any

from node.stop_signal import StopSignal


def _wait_forever(stop: StopSignal, ready: Any = None) -> None:
    if ready is not None:
        ready.set()
    stop.wait(3600)


def test_wait_returns_false_when_the_time_is_up_and_true_once_set() -> None:
    stop = StopSignal(multiprocessing.get_context("spawn"))
    assert stop.wait(0.01) is False
    stop.set()
    assert stop.wait(10) is True and stop.is_set()


def test_setting_it_does_not_wait_for_a_child_killed_while_it_waited() -> None:
    context = multiprocessing.get_context("spawn")
    stop = StopSignal(context)
    ready = context.Event()
    child = context.Process(target=_wait_forever, args=(stop, ready))
    child.start()
    assert ready.wait(60)
    time.sleep(0.2)  # inside wait() (where a multiprocessing.Event's set() would then hang forever)
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)
    setter = threading.Thread(target=stop.set, daemon=True)
    setter.start()
    setter.join(30)
    assert not setter.is_alive() and stop.is_set()


def test_a_waiting_child_sees_the_signal() -> None:
    context = multiprocessing.get_context("spawn")
    stop = StopSignal(context)
    child = context.Process(target=_wait_forever, args=(stop,))
    child.start()
    stop.set()
    child.join(30)
    assert child.exitcode == 0
