"""Event-driven waits and a shorter per-PDU path for pynetdicom 3.0's association threads
(receiver and delivery).

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
part below applies: the user's thread already blocks on its queue; the last four items are for
acceptor associations only)
  - The association thread's 1 ms poll becomes ``Event.wait`` on a per-association event that is
    set whenever the DUL hands it something: a decoded DIMSE message (``dimse.msg_queue``) or an
    A-RELEASE/A-ABORT primitive (``dul.to_user_queue``). While the association is established the
    wait lasts up to :data:`ESTABLISHED_POLL_S` (50 ms) instead of 1 ms: everything it serves wakes
    it, and what it only polls (network idle timeout, DUL thread alive, a kill flag) is noticed at
    most 50 ms later, against timeouts of seconds. Other waits keep their length. pynetdicom's
    1 ms poll made each open association cost about 5% of a core even while idle (4 idle
    associations: 1.0 s of CPU in 5 s on this project's 2-core VM); with 4 senders that was a
    sixth of the receivers' CPU.
  - The DUL thread's idle sleep becomes ``select()`` on the association's socket and on a
    per-association eventfd: an incoming PDU is read as soon as it arrives, and a primitive
    the association thread queues for sending (a C-STORE-RSP, an A-RELEASE-RP) or a
    ``kill_dul()`` wakes the DUL through the eventfd, so the response leaves at once instead of
    after the rest of a 1 ms sleep. While a sender waits for each response (one outstanding
    operation), that sleep was paid once per instance. In Sta6 (established, PS3.8 9.2) the
    select waits up to :data:`ESTABLISHED_POLL_S`; in the other states, where the ARTIM timer
    runs and the thread is about to end, up to :data:`DUL_POLL_S` (1 ms) as before.
  - The association socket's ``recv(n)`` (``pynetdicom.transport.AssociationSocket.recv``) reads
    a PDU body 4096 bytes per ``socket.recv`` call, each returning a new ``bytes`` that is then
    appended to a ``bytearray``: 128 system calls and copies for one 512 KB fragment, about 2 ms
    per image. It becomes :func:`read_exactly`: one buffer of ``n`` bytes filled in place by
    ``recv_into`` with as much as the kernel holds per call; same result, same blocking and
    timeout behaviour, same short buffer when the peer closes mid-PDU. Each receive first tries
    the bytes already waiting (:func:`receive_into`), without the poll() CPython makes before
    every receive on a socket with a timeout.
  - A P-DATA-TF PDU that arrives while the association is established (state Sta6, nothing
    else waiting in the DUL's event queue) is handed to the DIMSE provider by the DUL thread as
    soon as it is read (:func:`_read_pdu`): its PDV items (PS3.8 9.3.5.1) are split directly from
    the received bytes instead of going through a decoded ``P_DATA_TF`` object, the event queue,
    a second reactor loop and the state machine, which for Sta6 + Evt10 does exactly this (action
    DT-2, next state Sta6, PS3.8 9.2). A sender such as storescu splits a 512 KB image into five
    or more PDUs, each of which paid that round trip. Every other PDU, a P-DATA-TF in any other
    state, and every PDU when a handler is bound to ``EVT_DATA_RECV`` or ``EVT_PDU_RECV`` (which
    this path does not trigger) goes through pynetdicom's own path unchanged; a malformed PDV
    list is Evt19 (A-ABORT), as pynetdicom's decoder failing is. When such a PDU did not complete
    a message and the next one is already arriving, that one is read at once, without a reactor
    loop (two select() calls and a queue check) in between. Whether a PDU is arriving is asked by
    reading its header without waiting (:func:`_header_if_waiting`: one non-blocking ``readv``),
    there and when the reactor checks its socket (``_is_transport_event``), instead of a select()
    with timeout 0 and then the read: strace of the receivers, 300 images on four associations,
    2234 select() calls before, 330 after (the blocking waits for the next request); 10
    interleaved runs: 0.464 against 0.490 s, 1.58 against 1.78 ms of the node's CPU per image.
  - A C-STORE-RQ assembled that way is turned into its primitive by
    node/cstore_request.py, which reads the few values of its command set directly, instead of
    pynetdicom's ``message_to_primitive`` converting every element through pydicom first: the
    same primitive, through the same validating setters, for about 0.25 ms less CPU per request
    (receivers' task-clock for 300 images on one association: 1.04-1.11 s against 1.10-1.18 s).
    Any other message, or a command set it does not read, keeps pynetdicom's conversion. Such a
    request is also typed from its raw Command Field and Command Data Set Type once its command
    set is complete (:func:`_completes_store_request_command`), instead of decoded through pydicom
    for those two values, unless a handler is bound to ``EVT_DIMSE_RECV``.
  - A C-STORE request completed that way is served on the DUL thread itself
    (:func:`_serve_queued_store`: pynetdicom's ``Association._serve_request``, our handler,
    the response queued for the DUL) instead of being handed to the association thread and its
    response handed back: two thread hand-offs, and their wake-ups, fewer per instance. Other
    requests (C-ECHO), and A-RELEASE and A-ABORT, are the association thread's as before.
  - A C-STORE-RSP without Offending Element or Error Comment is encoded by
    node/cstore_response.py (the same bytes) instead of through a pydicom Dataset encoded twice,
    and queued for the DUL as one P-DATA like pynetdicom's ``DIMSEServiceProvider.send_msg``
    does; other messages, and every message when a handler is bound to ``EVT_DIMSE_SENT``, keep
    pynetdicom's path. When the DUL thread serves the request itself, it sends that response's
    P-DATA-TF at once (:func:`_can_send_directly`) rather than queueing it, waking itself through
    the eventfd and sending it from its next loop through the state machine (DT-1).
  - With a :class:`FileBufferPool` (the receiver gives its servers one), the dataset of a message
    assembled that way goes into a page-aligned buffer behind its file header
    (node/received_file.py) instead of a ``BytesIO``, so that the handler checks and writes it
    without copying it again. Once a C-STORE-RQ's command set is complete, the P-DATA-TF PDUs
    that follow are read item by item (:func:`_receive_pdv_items`): each dataset fragment goes
    from the socket straight into that buffer, and DIMSE gets the fragment's message control
    header alone, so it still knows the last one. The dataset limit counts those bytes
    (node/limits.py); a fragment beyond it, and a PDU above the length limit, take the usual path.
  - pynetdicom's UID setter remembers the UIDs it found conformant (node/pynetdicom_uids.py), in
    the whole process.
  None of these changes adds wake-ups, and an idle established association wakes 20 times a
  second instead of 2000. The eventfd is
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

import functools
import logging
import os
import queue
import select
import socket
import threading
import time as _time
import weakref
from io import BytesIO
from types import ModuleType
from typing import Any

import pynetdicom
from pynetdicom import association as _association_module
from pynetdicom import dul as _dul_module
from pynetdicom import _config, evt
from pynetdicom.dimse_messages import C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import RequestHandler

from node import pynetdicom_uids
from node.cstore_request import (
    C_STORE_RQ_FIELD,
    NO_DATA_SET,
    command_field_and_data_set_type,
    command_values,
    store_request_primitive,
)
from node.cstore_response import encode_c_store_response, encode_command_pdu
from node.file_meta import file_header
from node.limits import count_direct_dataset_bytes, pdu_length_limit
from node.received_file import FileBufferPool, ReceivedFileBuffer

log = logging.getLogger("radnode.receiver")

DUL_POLL_S = 0.001  # longest wait of an idle DUL thread outside Sta6 (pynetdicom's _run_loop_delay)
ESTABLISHED_POLL_S = 0.05  # longest wait of an idle established association's two threads
_REACTOR_POLL_S = 0.001  # the sleep hard-coded in pynetdicom's Association._run_reactor loop
SUPPORTED_VERSIONS = ("3.0.",)

_WAKE_ATTR = "_radnode_wake"  # on a tuned Association thread: its threading.Event
_TUNED_DUL_ATTR = "_radnode_tuned"  # on a tuned DULServiceProvider thread: True
_DIRECT_ATTR = "_radnode_direct"  # on a tuned DUL thread: True while it hands a P-DATA to DIMSE itself
_FILE_BUFFERS_ATTR = "_radnode_file_buffers"  # on a tuned Association: its FileBufferPool, if any


class _WakingQueue(queue.Queue):  # type: ignore[type-arg]
    """A queue that sets ``wake`` after each put, so a waiting consumer wakes at once."""

    def __init__(self, wake: threading.Event) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        if getattr(threading.current_thread(), _DIRECT_ATTR, False) and _is_store_request(item):
            return  # the DUL thread serves it itself right after (_serve_queued_store)
        self._wake.set()


def _is_store_request(item: Any) -> bool:
    """A ``(context ID, C-STORE request)`` item of a DIMSE message queue."""
    return (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], C_STORE)
            and item[1].MessageIDBeingRespondedTo is None)


def _sleep(seconds: float) -> None:
    """``time.sleep`` for pynetdicom's dul and association modules (see the module docstring)."""
    thread = threading.current_thread()
    wake: threading.Event | None = getattr(thread, _WAKE_ATTR, None)
    if wake is not None:  # a tuned association thread polling its queues
        established_poll = seconds == _REACTOR_POLL_S and getattr(thread, "is_established", False)
        wake.wait(ESTABLISHED_POLL_S if established_poll else seconds)
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
        self.wake()

    def wake(self) -> None:
        """Wake the DUL thread if it waits in :func:`_wait_for_dul_work`."""
        try:
            os.eventfd_write(self.wake_fd, 1)
        except BlockingIOError:  # the counter is saturated: the DUL is being woken anyway
            pass


def receive_into(raw: socket.socket, view: memoryview) -> int:
    """``raw.recv_into(view)``, without a poll() first when bytes are already waiting.

    On a socket with a timeout (pynetdicom gives an accepted association's socket the network
    timeout), CPython calls poll() before every receive, then recv(). When a sender streams a
    C-STORE, the bytes are nearly always there already: that poll is one system call, and one
    release of the GIL that the receiver's other association thread may take, for nothing
    (strace of a receiver, 4 associations: 18 poll() and 17 recvfrom() per image). Such a
    socket's descriptor is non-blocking, so a plain ``readv`` returns what is waiting or raises
    BlockingIOError; only then is the usual timed wait made. A TLS socket (its own buffer of
    decrypted bytes) and a socket without a timeout are read by ``recv_into`` as before."""
    if _reads_without_poll(raw):
        received = _read_waiting(raw, view)
        if received is not None:
            return received
    return raw.recv_into(view)  # nothing waiting yet: wait for it, with the socket's timeout


def _reads_without_poll(raw: Any) -> bool:
    """Whether ``raw`` is a plain socket with a timeout (so its descriptor is non-blocking), whose
    waiting bytes :func:`_read_waiting` may read; not a TLS socket, which buffers its own."""
    return type(raw) is socket.socket and bool(raw.gettimeout())


def _read_waiting(raw: socket.socket, view: bytearray | memoryview) -> int | None:
    """Read into ``view`` what is already waiting on ``raw`` (one ``readv`` on its non-blocking
    descriptor; 0 once the peer closed); None when nothing is."""
    try:
        return os.readv(raw.fileno(), (view,))
    except BlockingIOError:
        return None


def read_exactly(raw: socket.socket, nr_bytes: int) -> bytearray:
    """Read ``nr_bytes`` from ``raw`` into one buffer (blocking, with the socket's timeout).

    Returns fewer bytes only when the peer closed the connection first, as pynetdicom's own
    ``AssociationSocket.recv`` does; OSError and TimeoutError propagate unchanged."""
    buffer = bytearray(nr_bytes)
    with memoryview(buffer) as view:
        filled = 0
        while filled < nr_bytes:
            received = receive_into(raw, view[filled:])
            if received == 0:
                break
            filled += received
    if filled < nr_bytes:
        del buffer[filled:]
    return buffer


def split_pdv_items(body: bytes | bytearray) -> list[list[Any]]:
    """The ``[context ID, PDV data]`` pairs of a P-DATA-TF PDU body (PS3.8 9.3.5.1, Table 9-23:
    4-byte big-endian item length, 1-byte presentation context ID, then the message control
    header and fragment). Raises ValueError when the items do not fill the body exactly.

    Each PDV data is a memoryview of ``body``, not a copy: the DIMSE provider copies it once,
    into the message it assembles (two copies of every fragment fewer than slicing to bytes)."""
    items: list[list[Any]] = []
    offset, end = 0, len(body)
    view = memoryview(body)
    while offset < end:
        if offset + 6 > end:
            raise ValueError(f"PDV item header truncated at byte {offset}")
        length = int.from_bytes(view[offset : offset + 4], "big")
        if length < 2 or offset + 4 + length > end:
            raise ValueError(f"PDV item at byte {offset} declares {length} bytes")
        items.append([body[offset + 4], view[offset + 5 : offset + 4 + length]])
        offset += 4 + length
    if not items:
        raise ValueError("P-DATA-TF PDU without a PDV item")
    return items


_PDU_EVENTS = {0x01: "Evt6", 0x02: "Evt3", 0x03: "Evt4", 0x04: "Evt10", 0x05: "Evt12", 0x06: "Evt13", 0x07: "Evt16"}


def _read_pdu(dul: Any, header: bytes | None = None) -> None:
    """``DULServiceProvider._read_pdu_data`` for tuned acceptor DULs (see the module docstring),
    reading the PDU whose ``header`` was read already when given.

    After a P-DATA-TF handed straight to DIMSE that did not complete a request, the next PDU is
    read at once when its header is already arriving (:func:`_header_if_waiting`), instead of
    after another reactor loop (an event queue check and two select() calls); anything else
    returns to the reactor."""
    while _read_one_pdu(dul, header):
        header = _header_if_waiting(dul)
        if header is None:
            return


def _transport_event(dul: Any, original: Any) -> bool:
    """``DULServiceProvider._is_transport_event`` for tuned acceptor DULs: a PDU is read when its
    header is waiting (one non-blocking read where pynetdicom makes a select() and then the
    read); ``original`` (pynetdicom's) in Sta13, where the connection is closed instead."""
    if dul.state_machine.current_state == "Sta13":
        return bool(original())
    header = _header_if_waiting(dul)
    if header is None:
        return False
    _read_pdu(dul, header)
    return True


def _header_if_waiting(dul: Any) -> bytes | None:
    """The next PDU's 6-byte header (type, reserved, length; PS3.8 9.3.1) when the peer has begun
    sending it; None when nothing is waiting. On a plain socket with a timeout (an accepted
    association's) one non-blocking ``readv`` answers both (a header begun is finished with the
    socket's timeout); on any other (TLS, with its own buffer) pynetdicom's ``ready`` check, then
    a read. b"" (or fewer than 6 bytes) when the connection closed or failed, for
    :func:`_read_one_pdu` to end the association (Evt17)."""
    association_socket = dul.socket
    raw = getattr(association_socket, "socket", None)
    if raw is None or not getattr(association_socket, "_is_connected", False):
        return None
    if not _reads_without_poll(raw):
        return bytes(association_socket.recv(6)) if association_socket.ready else None
    header = bytearray(6)
    try:
        received = _read_waiting(raw, header)
        if received is None:
            return None
        if 0 < received < 6:  # the rest of a header begun is on its way
            rest = read_exactly(raw, 6 - received)
            header[received:] = rest
            received += len(rest)
    except (OSError, TimeoutError) as exc:
        log.debug("connection closed before a PDU header was received: %s", exc)
        return b""
    return bytes(header[:received])


def _read_one_pdu(dul: Any, header: bytes | None = None) -> bool:
    """Read one PDU (its ``header`` already read, when given). True when it was a P-DATA-TF
    handed straight to DIMSE and no request was served, i.e. nothing waits for the reactor: no
    event, no response to send.

    Events emitted as pynetdicom's: Evt17 when the connection closes or times out mid-PDU, Evt19
    for an unknown PDU type or a PDU that does not decode, else the PDU's own event."""
    if header is None:
        try:
            header = dul.socket.recv(6)
        except (OSError, TimeoutError) as exc:
            log.debug("connection closed before a PDU header was received: %s", exc)
            dul.event_queue.put("Evt17")
            return False
    if len(header) != 6:
        dul.event_queue.put("Evt17")
        return False
    pdu_type, pdu_length = header[0], int.from_bytes(header[2:6], "big")
    if pdu_type not in _PDU_EVENTS:
        log.error("unknown PDU type 0x%02X received", pdu_type)
        dul.event_queue.put("Evt19")
        return False
    direct = pdu_type == 0x04 and _can_deliver_directly(dul)
    assembly = _assembly_receiving_dataset(dul, pdu_length) if direct else None
    if assembly is not None:
        received = _receive_pdv_items(dul, pdu_length, assembly)
        if isinstance(received, str):  # the event that ends the association
            dul.event_queue.put(received)
            return False
        return _hand_to_dimse(dul, received)
    try:
        body = dul.socket.recv(pdu_length)
    except (OSError, TimeoutError) as exc:
        log.warning("connection closed before the entire PDU was received: %s", exc)
        dul.event_queue.put("Evt17")
        return False
    if len(body) != pdu_length:
        log.warning("the received PDU is shorter than declared (%d of %d bytes)", len(body), pdu_length)
        dul.event_queue.put("Evt17")
        return False
    if direct:
        try:
            items = split_pdv_items(body)
        except ValueError as exc:
            log.error("unable to decode a P-DATA-TF PDU: %s", exc)
            dul.event_queue.put("Evt19")
            return False
        return _hand_to_dimse(dul, items)
    try:
        pdu, event = dul._decode_pdu(header + body)
    except Exception as exc:  # pynetdicom's decoders raise many kinds on malformed PDUs
        log.error("unable to decode the received PDU: %s", exc)
        dul.event_queue.put("Evt19")
        return False
    dul.event_queue.put(event)
    dul._recv_pdu.put(pdu)
    return False


def _hand_to_dimse(dul: Any, items: list[list[Any]]) -> bool:
    """Hand a P-DATA-TF's PDV items to the DIMSE provider (Sta6 + Evt10: action DT-2, the state
    stays Sta6) and serve the C-STORE it completed, if any; the result of :func:`_read_one_pdu`."""
    primitive = P_DATA()
    primitive._presentation_data_value_list = items  # the public setter accepts bytes only, not views
    dimse = dul.assoc.dimse
    if dimse.message is None:  # the first PDU of a message
        dimse.message = _message_converted_directly(dul.assoc)
    setattr(dul, _DIRECT_ATTR, True)
    try:
        dimse.receive_primitive(primitive)
    finally:
        setattr(dul, _DIRECT_ATTR, False)
    return not _serve_queued_store(dul.assoc)


def _assembly_receiving_dataset(dul: Any, pdu_length: int) -> ReceivedFileBuffer | None:
    """The assembly buffer of the C-STORE-RQ whose dataset the next P-DATA-TF continues, when its
    dataset fragments can be received straight into it: the command set is complete, the dataset
    is still assembled in a ReceivedFileBuffer (not dropped by the dataset limit), and the PDU is
    within the guard's length limit (node/limits.py), which a longer one meets on the usual path."""
    limit = pdu_length_limit(dul.socket)
    if limit is not None and pdu_length > limit:
        return None
    message = dul.assoc.dimse.message
    if type(message) is not C_STORE_RQ or message._data_set_file is not None:
        return None
    data_set = message.data_set
    return data_set if isinstance(data_set, ReceivedFileBuffer) else None


def _receive_pdv_items(dul: Any, pdu_length: int, assembly: ReceivedFileBuffer) -> list[list[Any]] | str:
    """Read a P-DATA-TF body of ``pdu_length`` bytes item by item (PS3.8 9.3.5.1), each dataset
    fragment of the message being assembled straight into ``assembly``, without the copy out of a
    PDU buffer; such a fragment is handed to DIMSE as its message control header alone (an empty
    fragment that still says whether it is the last). Command fragments, fragments of another
    presentation context and fragments beyond the dataset limit (node/limits.py) are read as
    usual. Returns the items, or the event that ends the association: Evt17 when the connection
    closes or times out, Evt19 when the items do not fill the body exactly."""
    raw = dul.socket.socket
    fragment_into = functools.partial(receive_into, raw)
    context_id = dul.assoc.dimse.message.context_id
    items: list[list[Any]] = []
    remaining = pdu_length
    try:
        while remaining:
            if remaining < 6:
                log.error("unable to decode a P-DATA-TF PDU: PDV item header truncated")
                return "Evt19"
            header = read_exactly(raw, 6)
            if len(header) < 6:
                return "Evt17"
            length, item_context, control = int.from_bytes(header[:4], "big"), header[4], header[5]
            if length < 2 or 4 + length > remaining:
                log.error("unable to decode a P-DATA-TF PDU: PDV item declares %d bytes", length)
                return "Evt19"
            fragment = length - 2
            if (not control & 1 and item_context == context_id
                    and count_direct_dataset_bytes(dul.assoc, fragment)):
                if assembly.receive(fragment_into, fragment) < fragment:
                    return "Evt17"
                items.append([item_context, bytes((control,))])
            else:
                data = read_exactly(raw, fragment)
                if len(data) < fragment:
                    return "Evt17"
                items.append([item_context, bytes((control,)) + data])
            remaining -= 4 + length
    except (OSError, TimeoutError) as exc:
        log.warning("connection closed before the entire PDU was received: %s", exc)
        return "Evt17"
    if not items:
        log.error("unable to decode a P-DATA-TF PDU: no PDV item")
        return "Evt19"
    return items


def _message_converted_directly(assoc: Any) -> DIMSEMessage:
    """A DIMSE message to assemble from P-DATA, whose conversion to a primitive, once complete,
    reads a C-STORE-RQ's command set directly (:func:`store_request_primitive`); any other
    message keeps pynetdicom's ``message_to_primitive``. When the association was given a
    :class:`FileBufferPool`, its dataset is assembled behind its file header in a page-aligned
    buffer (node/received_file.py) instead of a ``BytesIO``."""
    message = _new_message()
    pool: FileBufferPool | None = getattr(assoc, _FILE_BUFFERS_ATTR, None)
    if pool is not None:
        message.data_set = ReceivedFileBuffer(pool, lambda: _file_header_of(message, assoc))  # type: ignore[assignment]
    typed_directly = not assoc.get_handlers(evt.EVT_DIMSE_RECV)  # a listener may read the command set

    def decode_msg(primitive: Any, assoc: Any = None) -> bool:
        if typed_directly and _completes_store_request_command(message, primitive):
            return False  # a data set follows
        return type(message).decode_msg(message, primitive, assoc)

    def to_primitive() -> Any:
        del message.message_to_primitive, message.decode_msg  # used once: drop the closures' cycles
        primitive = store_request_primitive(message)
        if primitive is not None:  # always, for a request typed directly: typed only when readable
            return primitive
        if isinstance(message.data_set, ReceivedFileBuffer):  # pynetdicom's primitives take a BytesIO only
            assembled = message.data_set
            message.data_set = BytesIO(assembled.getvalue())
            assembled.release()
        return type(message).message_to_primitive(message)

    message.message_to_primitive = to_primitive  # type: ignore[method-assign]
    message.decode_msg = decode_msg  # type: ignore[method-assign]
    return message


def _new_message() -> DIMSEMessage:
    """A ``DIMSEMessage`` with the attributes pynetdicom's ``__init__`` gives it, except the
    empty command-set ``Dataset``: ``decode_msg`` puts the decoded one there once the command set
    is complete, and a C-STORE-RQ typed directly has none (``command_set`` None). Making that
    ``Dataset`` took 5.3 of the 5.5 us that ``DIMSEMessage()`` costs (timeit, 20000 in a row)."""
    message = DIMSEMessage.__new__(DIMSEMessage)
    message.context_id = None
    message.encoded_command_set = BytesIO()
    message.data_set = BytesIO()
    message.command_set = None  # type: ignore[assignment]
    message._data_set_path = None
    message._data_set_file = None
    return message


def _completes_store_request_command(message: Any, primitive: Any) -> bool:
    """When the PDV items of ``primitive`` are command fragments, the last of them completing the
    command set of a C-STORE-RQ that :func:`store_request_primitive` reads and whose data set
    follows: assemble them as pynetdicom's ``DIMSEMessage.decode_msg`` does (the command set's
    bytes, the presentation context, the message type), without decoding the command set through
    pydicom, which only the Command Field and Command Data Set Type are read from there (about
    35 us per request). True when done so; False, with nothing changed, for anything else."""
    items = primitive.presentation_data_value_list
    if _config.STORE_RECV_CHUNKED_DATASET or not items or type(message) is not DIMSEMessage:
        return False
    *earlier, (context_id, last) = items
    if any(data[0] & 3 != 1 for _, data in earlier) or last[0] & 3 != 3:
        return False
    fragments = b"".join(bytes(data[1:]) for _, data in items)
    encoded = message.encoded_command_set.getvalue() + fragments
    typed = command_field_and_data_set_type(encoded)
    if typed is None or typed[0] != C_STORE_RQ_FIELD or typed[1] == NO_DATA_SET or command_values(encoded) is None:
        return False
    message.encoded_command_set.write(fragments)
    message.context_id = context_id
    message.__class__ = C_STORE_RQ
    message.command_set = None  # read directly when the request is complete (store_request_primitive)
    return True


def _file_header_of(message: Any, assoc: Any) -> bytes | None:
    """The file header (node/file_meta.py) of the C-STORE-RQ ``message`` whose command set is
    complete: its SOP Class and Instance UIDs, read from the encoded command set as
    node/cstore_request.py reads them, and its presentation context's transfer syntax; None when
    the message lacks any of them or its command set is not one that module reads."""
    context = assoc._accepted_cx.get(getattr(message, "context_id", None))
    if context is None or not context.transfer_syntax:
        return None
    values = command_values(message.encoded_command_set.getbuffer())
    if values is None:
        return None
    sop_class, sop_instance = values.get("AffectedSOPClassUID"), values.get("AffectedSOPInstanceUID")
    if not sop_class or not sop_instance:
        return None
    return file_header(sop_class, sop_instance, str(context.transfer_syntax[0]))


def _serve_queued_store(assoc: Any) -> bool:
    """Serve a C-STORE request that the DIMSE provider just completed, on this (the DUL) thread.

    The association thread would serve it the same way (``Association._serve_request``), after
    two thread hand-offs: the request to it, the response back to the DUL. The idle timer is
    stopped meanwhile, as it is in effect while the association thread runs a handler (the
    network timeout is for a silent peer, not for a slow store). A request the association
    thread has already taken, or any other message, is left to it. Returns whether a message
    was complete (served here, or waiting for the association thread)."""
    messages = assoc.dimse.msg_queue
    with messages.not_empty:  # the queue's own lock: take the item only if it is still there
        if not messages.queue:
            return False
        if not _is_store_request(messages.queue[0]):
            return True  # a complete message for the association thread: back to the reactor
        context_id, request = messages._get()
        messages.not_full.notify()
    timer = assoc.dul._idle_timer
    timer.stop()
    try:
        assoc._serve_request(request, context_id)
    finally:
        timer.restart()
    return True


def _can_deliver_directly(dul: Any) -> bool:
    """Sta6 + Evt10 with nothing queued before it, and nobody listening for the raw PDU events."""
    if dul.state_machine.current_state != "Sta6" or not dul.event_queue.empty() or not dul._recv_pdu.empty():
        return False
    assoc = dul.assoc
    return not assoc.get_handlers(evt.EVT_DATA_RECV) and not assoc.get_handlers(evt.EVT_PDU_RECV)


def _wait_for_dul_work(dul: Any, seconds: float) -> bool:
    """Wait until the DUL's socket is readable, a primitive is queued for sending (or the DUL is
    killed), or ESTABLISHED_POLL_S pass in Sta6, ``seconds`` (at most DUL_POLL_S) in other
    states. False when the socket is gone (the caller sleeps instead)."""
    sock = getattr(getattr(dul, "socket", None), "socket", None)
    if sock is None:
        return False
    outgoing = dul.to_provider_queue
    wake_fd = outgoing.wake_fd if isinstance(outgoing, _SignallingQueue) else None
    watched = [sock] if wake_fd is None else [sock, wake_fd]
    try:
        established = wake_fd is not None and dul.state_machine.current_state == "Sta6"
        readable, _, _ = select.select(watched, [], [], ESTABLISHED_POLL_S if established else min(seconds, DUL_POLL_S))
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
        pynetdicom_uids.install()
        _applied = True
        return True


def is_applied() -> bool:
    return (_applied and isinstance(_dul_module.time, _TimeProxy) and isinstance(_association_module.time, _TimeProxy)
            and pynetdicom_uids.is_installed())


def tune_association(assoc: Any, file_buffers: FileBufferPool | None = None) -> None:
    """Mark an acceptor Association (not yet started) and its DUL for event-driven waits; with
    ``file_buffers``, its C-STORE datasets are assembled in them (node/received_file.py)."""
    if file_buffers is not None:
        setattr(assoc, _FILE_BUFFERS_ATTR, file_buffers)
    wake = threading.Event()
    # Nothing has been queued yet: the association thread has not started.
    assoc.dimse.msg_queue = _WakingQueue(wake)
    assoc.dul.to_user_queue = _WakingQueue(wake)
    setattr(assoc, _WAKE_ATTR, wake)
    _tune_dul(assoc.dul)
    _tune_recv(assoc.dul.socket)
    dul = assoc.dul
    dul._read_pdu_data = lambda: _read_pdu(dul)
    original_transport_event = dul._is_transport_event
    dul._is_transport_event = lambda: _transport_event(dul, original_transport_event)
    _tune_responses(assoc)


def _tune_responses(assoc: Any) -> None:
    """Send this association's C-STORE-RSPs through :func:`_send_c_store_response` when it can."""
    dimse = assoc.dimse
    original = dimse.send_msg

    def send_msg(primitive: Any, context_id: int) -> None:
        if not _send_c_store_response(assoc, primitive, context_id):
            original(primitive, context_id)

    dimse.send_msg = send_msg


def _send_c_store_response(assoc: Any, primitive: Any, context_id: int) -> bool:
    """Queue ``primitive`` for the DUL as one P-DATA holding its whole command set (control header
    0x03: command, last fragment; PS3.8 E.2) when it is a plain C-STORE-RSP; False otherwise."""
    if (not isinstance(primitive, C_STORE) or primitive.MessageIDBeingRespondedTo is None
            or primitive.Status is None or getattr(primitive, "ErrorComment", None) is not None
            or getattr(primitive, "OffendingElement", None) is not None
            or assoc.get_handlers(evt.EVT_DIMSE_SENT)):
        return False
    sop_class, sop_instance = primitive.AffectedSOPClassUID, primitive.AffectedSOPInstanceUID
    command = encode_c_store_response(int(primitive.MessageIDBeingRespondedTo), int(primitive.Status),
                                      None if sop_class is None else str(sop_class),
                                      None if sop_instance is None else str(sop_instance))
    max_pdu = assoc.dimse.maximum_pdu_size  # the peer's Maximum Length; 0 means no limit
    if max_pdu and len(command) > max_pdu - 6:
        return False  # pynetdicom splits it into several fragments
    dul = assoc.dul
    if threading.current_thread() is dul and _can_send_directly(dul):
        dul.socket.send(encode_command_pdu(context_id, command))  # Evt17 queued if the connection is gone
        return True
    pdata = P_DATA()
    pdata.presentation_data_value_list.append((context_id, b"\x03" + command))
    assoc.dul.send_pdu(pdata)
    return True


def _can_send_directly(dul: Any) -> bool:
    """Whether the DUL thread, serving a C-STORE itself (:func:`_serve_queued_store`), may send
    the response's P-DATA-TF at once instead of queueing it for its own next loop: established
    (Sta6, where a P-DATA request is action DT-1: send the P-DATA-TF, stay in Sta6; PS3.8 9.2),
    nothing queued before it, and nobody listening for the PDU and data events that pynetdicom's
    DT-1 triggers."""
    if dul.state_machine.current_state != "Sta6" or not dul.to_provider_queue.empty():
        return False
    assoc = dul.assoc
    return not assoc.get_handlers(evt.EVT_PDU_SENT) and not assoc.get_handlers(evt.EVT_DATA_SENT)


def _tune_recv(association_socket: Any) -> None:
    """Give an AssociationSocket :func:`read_exactly` as its ``recv`` (this socket only)."""

    def recv(nr_bytes: int) -> bytearray:
        return read_exactly(association_socket.socket, nr_bytes)

    association_socket.recv = recv


def _tune_dul(dul: Any) -> None:
    """Mark a DUL thread for event-driven waits; its outgoing queue signals it (its queue must be
    empty: nothing in it is carried over)."""
    outgoing = _SignallingQueue()
    dul.to_provider_queue = outgoing
    original_kill = dul.kill_dul

    def kill_dul() -> None:  # the DUL may be waiting up to ESTABLISHED_POLL_S: wake it to see the flag
        original_kill()
        outgoing.wake()

    dul.kill_dul = kill_dul
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


def hand_stolen_responses_back(assoc: Any) -> bool:
    """Make a requestor Association's reactor thread put back a response it took by a race,
    for the thread that waits for it, instead of dropping it.

    pynetdicom's ``send_c_store`` (and every ``send_c_*``) pauses the association's reactor
    before sending: it clears ``_reactor_checkpoint`` and waits until ``_is_paused`` is True. The
    reactor sets ``_is_paused = True``, returns from ``_reactor_checkpoint.wait()`` and only then
    sets it back to False and takes any message from the DIMSE queue. When the reactor thread
    loses the GIL between those steps (under CPU load: a worker's inference), the sender sees
    "paused", sends, the response arrives, and the reactor takes it and drops it ("Received
    unexpected C-STORE service message"): the sender then waits for the DIMSE timeout (30 s) and
    the delivery is retried. Seen once in tests/node/test_scale_out.py. A response, which no
    requestor's reactor can serve, is put back on the DIMSE queue here. Needs pynetdicom 3.0.x
    (False, and nothing changed, otherwise)."""
    if not is_supported():
        return False
    original = assoc._serve_request
    messages = assoc.dimse.msg_queue

    def serve_request(message: Any, context_id: int) -> None:
        if not message.is_valid_request and message.is_valid_response:
            messages.put((context_id, message))  # the sending thread's get_msg(block=True) takes it
            return
        original(message, context_id)

    assoc._serve_request = serve_request
    return True


class TunedRequestHandler(RequestHandler):
    """pynetdicom's request handler; each accepted association gets :func:`tune_association`,
    with the server's ``file_buffers`` (a :class:`FileBufferPool`) when it has them."""

    def _create_association(self):  # type: ignore[no-untyped-def]
        assoc = super()._create_association()
        if _applied:
            tune_association(assoc, getattr(self.server, "file_buffers", None))
        return assoc
