"""The DICOM listening sockets, opened once by the supervisor and shared by its receiver processes.

Why not SO_REUSEPORT (one socket per receiver, the kernel picks one per connection)
  The kernel picks by a hash of the connection's addresses and ports, blind to how busy each
  receiver is. Four associations from one sender (consecutive source ports) landed 3-1 or 4-0 on
  two receivers in seven of eight runs of bench/ingest.py, leaving one receiver idle while the
  other served three; and connections still queued on a receiver that dies are reset with it.

What happens instead
  The supervisor binds and listens (a port already in use is reported once, at start-up, with the
  address), and every receiver it starts inherits the same socket. Each receiver's acceptor waits
  for it to become readable; the first to ``accept()`` gets the connection, the others find
  nothing (the socket is non-blocking) and wait again. :class:`AssociationLoad` makes the choice
  load-aware: a receiver that is serving more associations than the least busy one waits
  :data:`BALANCE_DELAY_S` before it accepts, so a less busy receiver takes the connection when
  it can, and the busier one still does when the other is too slow to. A connection that waits in
  the backlog survives the death of any one receiver.
"""

from __future__ import annotations

import socket
import time
from multiprocessing.sharedctypes import SynchronizedArray
from typing import Any

LISTEN_BACKLOG = 128  # connections waiting to be accepted, all receivers together
BALANCE_DELAY_S = 0.010  # how long a busier receiver leaves a new connection to the others


class PortUnavailable(RuntimeError):
    """The DICOM port cannot be bound (in use, not permitted, unknown host)."""


def open_listening_socket(host: str, port: int) -> socket.socket:
    """A non-blocking TCP socket listening on ``host:port``, for receiver processes to share."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        listening = socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)
    except OSError as exc:
        raise PortUnavailable(f"cannot listen for DICOM on {host}:{port}: {exc.strerror or exc}") from None
    listening.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted sockets
    listening.setblocking(False)  # a receiver that loses the race for a connection must not block
    return listening


class AssociationLoad:
    """Open associations per receiver, in memory shared by all receivers (one slot each)."""

    def __init__(self, counts: SynchronizedArray[Any], index: int) -> None:
        self._counts = counts
        self._index = index
        counts[index] = 0  # a restarted receiver starts empty

    def started(self) -> None:
        with self._counts.get_lock():
            self._counts[self._index] += 1

    def ended(self) -> None:
        with self._counts.get_lock():
            self._counts[self._index] = max(0, self._counts[self._index] - 1)

    def busier_than_another(self) -> bool:
        """Whether some other receiver serves fewer associations than this one."""
        counts = list(self._counts)  # a snapshot; an unlocked read is good enough for a hint
        return counts[self._index] > min(counts)

    def yield_to_less_busy(self) -> None:
        """Before accepting: give a less busy receiver the first chance at the connection."""
        if self.busier_than_another():
            time.sleep(BALANCE_DELAY_S)


class SharedListeners:
    """What the supervisor hands each receiver process it starts (picklable only while spawning):
    the DICOM socket, the DICOM TLS socket when ``[node.tls]`` is set, and the shared load."""

    def __init__(self, dicom: socket.socket, tls: socket.socket | None, counts: SynchronizedArray[Any]) -> None:
        self.dicom = dicom
        self.tls = tls
        self.counts = counts

    def close(self) -> None:
        """Stop listening (supervisor, at shutdown, once the receivers are gone)."""
        for listening in (self.dicom, self.tls):
            if listening is not None:
                listening.close()
