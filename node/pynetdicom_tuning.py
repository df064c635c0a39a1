"""Event-driven waits for pynetdicom 3.0's association threads (receiver and delivery).

Why
  pynetdicom runs every association on two threads that poll instead of waiting on events:
  - the DUL reactor (``pynetdicom.dul.DULServiceProvider.run_reactor``) sleeps
    ``_run_loop_delay`` = 1 ms whenever a loop found nothing to do, so a C-STORE request that
    arrives while it sleeps waits up to 1 ms before its first PDU is read, and a C-STORE response
    put in its queue waits up to 1 ms before it is sent;
  - the association reactor (``pynetdicom.association.Association._run_reactor``) sleeps a
    hard-coded 1 ms before each check for a complete DIMSE message (PS3.7 9.3.1), so a fully
    received C-STORE-RQ waits up to 1 ms before our handler runs.
  A sender such as storescu waits for each C-STORE-RSP before it sends the next request (one
  outstanding operation, PS3.7 10.3.4), so these sleeps are paid two or three times per instance:
  about 0.3-0.4 s per 300 images on one association (FIELD-NOTES.md).

What changes (only for associations accepted by a server built with :class:`TunedRequestHandler`,
and for delivery associations given :func:`tune_requestor` once established, where only the DUL
part below applies: the user's thread already blocks on its queue)
  - The association thread's 1 ms poll becomes ``Event.wait(0.001)`` on a per-association event
    that is set whenever the DUL hands it something: a decoded DIMSE message (``dimse.msg_queue``)
    or an A-RELEASE/A-ABORT primitive (``dul.to_user_queue``). The 1 ms timeout is kept, so the
    timers it checks (network idle timeout, DUL thread alive) behave exactly as before and an idle
    association costs no more CPU than before; it just no longer sleeps when work is waiting.
  - The DUL thread's idle sleep becomes ``select()`` on the association's socket and on a
    per-association eventfd, with the same timeout (at most :data:`DUL_POLL_S`): an incoming PDU is
    read as soon as it arrives, and a primitive the association thread queues for sending (a
    C-STORE-RSP, an A-RELEASE-RP) wakes the DUL through the eventfd, so the response leaves at once
    instead of after the rest of a 1 ms sleep. While a sender waits for each response (one
    outstanding operation), that sleep was paid once per instance.
  Neither change adds wake-ups: an idle association costs the same CPU as before. The eventfd is
  closed when the association's queue is garbage-collected (nothing can write to it or wait on it
  any more by then), never while a thread might still use it.
  Implementation: ``pynetdicom.dul.time`` and ``pynetdicom.association.time`` (the ``time`` module
  as those two modules see it) are replaced by a proxy whose ``sleep`` does the waits above for
  threads marked by :func:`tune_association` and calls the real ``time.sleep`` for every other
  thread (requestor associations, other servers), so nothing else in the process changes.
  Nothing in the protocol changes: the same PDUs are read, decoded, answered and sent in the same
  order by the same threads; only idle waits end sooner.

Set ``RADNODE_PYNETDICOM_TUNING=0`` in the environment to run without it (for A/B measurements).

Pinned to pynetdicom 3.0.x (checked against 3.0.4): :func:`apply` refuses other versions and
leaves pynetdicom untouched (a warning is logged), since the patched internals may differ.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import threading
import time as _time
import weakref
from types import ModuleType
from typing import Any

import pynetdicom
from pynetdicom import association as _association_module
from pynetdicom import dul as _dul_module
from pynetdicom.transport import RequestHandler

log = logging.getLogger("radnode.receiver")

DUL_POLL_S = 0.001  # longest wait of an idle DUL thread before it checks for outgoing primitives
SUPPORTED_VERSIONS = ("3.0.",)

_WAKE_ATTR = "_radnode_wake"  # on a tuned Association thread: its threading.Event
_TUNED_DUL_ATTR = "_radnode_tuned"  # on a tuned DULServiceProvider thread: True


class _WakingQueue(queue.Queue):  # type: ignore[type-arg]
    """A queue that sets ``wake`` after each put, so a waiting consumer wakes at once."""

    def __init__(self, wake: threading.Event) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake.set()


def _sleep(seconds: float) -> None:
    """``time.sleep`` for pynetdicom's dul and association modules (see the module docstring)."""
    thread = threading.current_thread()
    wake: threading.Event | None = getattr(thread, _WAKE_ATTR, None)
    if wake is not None:  # a tuned association thread polling its queues
        wake.wait(seconds)
        wake.clear()  # the caller checks its queues right after, so nothing put before is missed
        return
    if getattr(thread, _TUNED_DUL_ATTR, False) and _wait_for_dul_work(thread, seconds):
        return  # a tuned DUL thread that had nothing to do
    _time.sleep(seconds)


class _SignallingQueue(queue.Queue):  # type: ignore[type-arg]
    """The DUL's outgoing queue: each put also signals ``wake_fd`` (an eventfd) so a DUL thread
    waiting in :func:`_sleep` wakes at once; the fd is closed when the queue is collected."""

    def __init__(self) -> None:
        super().__init__()
        self.wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        weakref.finalize(self, os.close, self.wake_fd)

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        try:
            os.eventfd_write(self.wake_fd, 1)
        except BlockingIOError:  # the counter is saturated: the DUL is being woken anyway
            pass


def _wait_for_dul_work(dul: Any, seconds: float) -> bool:
    """Wait until the DUL's socket is readable, a primitive is queued for sending, or ``seconds``
    (at most DUL_POLL_S) pass. False when the socket is gone (the caller sleeps instead)."""
    sock = getattr(getattr(dul, "socket", None), "socket", None)
    if sock is None:
        return False
    outgoing = dul.to_provider_queue
    wake_fd = outgoing.wake_fd if isinstance(outgoing, _SignallingQueue) else None
    watched = [sock] if wake_fd is None else [sock, wake_fd]
    try:
        readable, _, _ = select.select(watched, [], [], min(seconds, DUL_POLL_S))
    except (OSError, ValueError):  # closed under us: the reactor notices on its next loop
        return False
    if wake_fd is not None and wake_fd in readable:
        try:
            os.eventfd_read(wake_fd)  # reset the counter; the queue itself holds the work
        except BlockingIOError:
            pass
    return True


class _TimeProxy(ModuleType):
    """The ``time`` module with ``sleep`` replaced by :func:`_sleep`."""

    def __init__(self) -> None:
        super().__init__("time")

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)

    sleep = staticmethod(_sleep)


_lock = threading.Lock()
_applied = False


def is_supported() -> bool:
    return pynetdicom.__version__.startswith(SUPPORTED_VERSIONS)


def apply() -> bool:
    """Install the ``time`` proxy in pynetdicom's dul and association modules (idempotent).

    Returns True when the tuning is active. Threads not marked by :func:`tune_association` keep
    the real ``time.sleep``."""
    global _applied
    with _lock:
        if _applied:
            return True
        if os.environ.get("RADNODE_PYNETDICOM_TUNING", "1") == "0":
            log.info("pynetdicom tuning disabled by RADNODE_PYNETDICOM_TUNING=0")
            return False
        if not is_supported():
            log.warning("pynetdicom %s is not 3.0.x: its reactor polling is left as is", pynetdicom.__version__)
            return False
        proxy = _TimeProxy()
        _dul_module.time = proxy  # type: ignore[attr-defined]
        _association_module.time = proxy  # type: ignore[attr-defined]
        _applied = True
        return True


def is_applied() -> bool:
    return _applied and isinstance(_dul_module.time, _TimeProxy) and isinstance(_association_module.time, _TimeProxy)


def tune_association(assoc: Any) -> None:
    """Mark an acceptor Association (not yet started) and its DUL for event-driven waits."""
    wake = threading.Event()
    # Nothing has been queued yet: the association thread has not started.
    assoc.dimse.msg_queue = _WakingQueue(wake)
    assoc.dul.to_user_queue = _WakingQueue(wake)
    setattr(assoc, _WAKE_ATTR, wake)
    _tune_dul(assoc.dul)


def _tune_dul(dul: Any) -> None:
    """Mark a DUL thread for event-driven waits; its outgoing queue signals it (its queue must be
    empty: nothing in it is carried over)."""
    dul.to_provider_queue = _SignallingQueue()
    setattr(dul, _TUNED_DUL_ATTR, True)


def tune_requestor(assoc: Any) -> bool:
    """Give an established requestor Association's DUL the same event-driven waits (used for
    deliveries, where the user's thread sends and waits for each C-STORE-RSP).

    Safe only right after establishment, before any DIMSE message: the outgoing queue is empty
    then (the A-ASSOCIATE-RQ was sent long before the -AC arrived), so replacing it loses nothing.
    Returns False (and changes nothing) when the tuning is not applied in this process."""
    if not _applied or not assoc.is_established or not assoc.dul.to_provider_queue.empty():
        return False
    _tune_dul(assoc.dul)
    return True


class TunedRequestHandler(RequestHandler):
    """pynetdicom's request handler; each accepted association gets :func:`tune_association`."""

    def _create_association(self):  # type: ignore[no-untyped-def]
        assoc = super()._create_association()
        if _applied:
            tune_association(assoc)
        return assoc
