"""The supervisor's "stop now" to its child processes, safe against children killed at any moment.

A ``multiprocessing.Event`` is a condition variable over semaphores: ``set()`` waits until every
process that sleeps in ``wait()`` acknowledges being woken. A child killed by SIGKILL or the OOM
killer while it sleeps there never acknowledges, so the supervisor's next ``set()``, at shutdown,
blocked forever (seen with a receiver killed and restarted, then SIGTERM). Here the flag is one
byte of shared memory without a lock: setting it never waits for anyone, and children poll it.
"""

from __future__ import annotations

import ctypes
import time
from multiprocessing.context import SpawnContext

POLL_S = 0.05  # how often a waiting child looks at the flag


class StopSignal:
    """A flag the supervisor sets once; picklable to spawned children (only while spawning)."""

    def __init__(self, context: SpawnContext) -> None:
        self._flag = context.RawValue(ctypes.c_bool, False)

    def set(self) -> None:
        self._flag.value = True

    def is_set(self) -> bool:
        return bool(self._flag.value)

    def wait(self, timeout_s: float) -> bool:
        """Sleep until the flag is set or ``timeout_s`` seconds pass; return whether it is set."""
        deadline = time.monotonic() + timeout_s
        while not self._flag.value:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(POLL_S, remaining))
        return True
