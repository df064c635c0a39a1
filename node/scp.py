"""The DICOM Storage SCP: C-ECHO and C-STORE for every storage SOP class (PS3.4 Annex B).

Built on pynetdicom with a few small, isolated choices:
- the peer allow-list is checked when the A-ASSOCIATE-RQ arrives (EVT_REQUESTED), so an unknown
  caller gets A-ASSOCIATE-RJ "rejected-permanent / service-user / calling-AE-title-not-recognized"
  (PS3.8 9.3.4) even when only its host is wrong;
- the listening socket is opened by the supervisor and shared by the receiver processes, which
  take new connections least busy first (node/listener.py);
- a second server on ``[node.tls] port`` speaks DICOM TLS (PS3.15 B.1, node/tls.py); its TLS
  handshake runs on the connection's own thread with the ACSE timeout, so a silent client cannot
  block the acceptor; every accepted socket gets the network timeout, so a peer that stalls in
  the middle of a PDU is disconnected instead of holding a thread forever;
- every accepted association is bounded by node/limits.py (PDU length, command and dataset bytes);
- accepted associations wait on events instead of 1 ms polls, read PDUs into one buffer, hand
  P-DATA straight to DIMSE and serve C-STORE on the thread that read it (node/pynetdicom_tuning.py);
- unrestricted storage: any storage, private or unknown SOP class is accepted in the first
  transfer syntax the caller proposes, and stored exactly as received.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from typing import Any, Callable

from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import Verification
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from node.config import NodeSettings
from node.limits import DatasetLimits, guard_association
from node.listener import AssociationLoad
from node.peers import PeerPolicy
from node.pynetdicom_tuning import TunedRequestHandler
from node.received_file import FileBufferPool

log = logging.getLogger("radnode.receiver")

# PS3.8 Table 9-21: result 1 = rejected-permanent, source 1 = service-user, reason 3 = calling AE
_REJECT_UNKNOWN_CALLER = (0x01, 0x01, 0x03)


def peer_policy_handler(current_policy: Callable[[], PeerPolicy]) -> Callable[[Event], None]:
    """An EVT_REQUESTED handler that answers A-ASSOCIATE-RJ to callers the allow-list refuses.

    The allow-list is looked up for each new association, so a reloaded ``[[peers]]`` applies to the
    next association and never to one already open. pynetdicom skips its own negotiation when this
    handler has already rejected (PS3.8 9.3.4)."""

    def _check(event: Event) -> None:
        request = event.assoc.requestor.primitive
        calling = str(request.calling_ae_title).strip() if request is not None else ""
        address = event.assoc.requestor.address
        if not current_policy().admits(calling, address):
            log.warning("association rejected: calling AE %r from %s is not a configured peer", calling, address)
            event.assoc.requestor.ae_title = calling
            event.assoc.acse.send_reject(*_REJECT_UNKNOWN_CALLER)
            event.assoc.kill()  # flushes the A-ASSOCIATE-RJ before the socket closes, as pynetdicom does

    return _check


class _GuardedRequestHandler(TunedRequestHandler):
    """Each accepted association gets the input limits of node/limits.py before it starts, and is
    counted in its receiver's load while it runs (node/listener.py)."""

    def _create_association(self):  # type: ignore[no-untyped-def]
        assoc = super()._create_association()
        guard_association(assoc, self.server.limits)
        if self.server.load is not None:
            _hand_count_to(assoc, self.server.load)
        return assoc


_connection = threading.local()  # on a server's per-connection thread: whether an association took its count


def _hand_count_to(assoc: Any, load: AssociationLoad) -> None:
    """The connection was counted in this receiver's load when it was accepted; from now on the
    association holds that count until its thread ends (pynetdicom starts it right after this, and
    the server's per-connection thread ends as soon as it has)."""
    run = assoc.run
    _connection.handed_over = True

    def counted_run() -> None:
        try:
            run()
        finally:
            load.ended()

    assoc.run = counted_run


class _SharedPortServer(ThreadedAssociationServer):
    """Association server on a listening socket shared by the receiver processes (node/listener.py)."""

    listening_socket: socket.socket | None = None
    load: AssociationLoad | None = None
    file_buffers: FileBufferPool | None = None  # read by TunedRequestHandler (node/pynetdicom_tuning.py)
    daemon_threads = True
    limits = DatasetLimits()
    handshake_timeout_s = 30.0
    peer_timeout_s = 60.0

    def server_bind(self) -> None:
        """Serve the socket the supervisor bound, when given, instead of binding a new one."""
        if self.listening_socket is None:  # a server of its own (tests, tools)
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().server_bind()
            return
        self.socket.close()
        self.socket = self.listening_socket
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        """listen(), unless the socket came from the supervisor already listening."""
        if self.listening_socket is None:
            super().server_activate()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept (a shared socket is non-blocking: when another receiver was first, the
        BlockingIOError ends this attempt quietly); wrap in TLS without handshaking here (that
        happens on the connection's thread)."""
        if self.load is not None:
            self.load.yield_to_less_busy()
        client, address = self.socket.accept()
        if self.load is not None:
            self.load.started()  # at once, so that the next connection sees it, even before a thread runs
        try:
            client.settimeout(self.peer_timeout_s)
            if self.ssl_context:
                client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        except BaseException:
            if self.load is not None:
                self.load.ended()
            raise
        return client, address

    def process_request_thread(self, request, client_address):  # type: ignore[no-untyped-def]
        """Serve one connection; its count in the load passes to its association, or ends here."""
        _connection.handed_over = False
        try:
            self._start_association(request, client_address)
        finally:
            if self.load is not None and not _connection.handed_over:
                self.load.ended()

    def _start_association(self, request, client_address):  # type: ignore[no-untyped-def]
        if isinstance(request, ssl.SSLSocket):
            try:
                request.settimeout(self.handshake_timeout_s)
                request.do_handshake()
                request.settimeout(self.peer_timeout_s)
            except (OSError, ValueError) as exc:  # ssl.SSLError, timeout, reset: no association
                log.warning("TLS handshake with %s failed: %s", client_address[0], exc)
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)


def build_application_entity(settings: NodeSettings, receivers: int) -> AE:
    """An AE configured from ``[node]``: called AE title enforced, timeouts and limits set."""
    _config.UNRESTRICTED_STORAGE_SERVICE = True  # accept every storage SOP class (see module doc)
    # pynetdicom's "standard" log handlers (bound to every association's PDU and DIMSE events) only
    # log at DEBUG/INFO, which node/logs.py keeps off for the "pynetdicom" logger (patient data):
    # without them, no handler runs per PDU or message for nothing.
    _config.LOG_HANDLER_LEVEL = "none"
    ae = AE(ae_title=settings.ae_title)
    ae.require_called_aet = True
    ae.maximum_pdu_size = settings.max_pdu_kb * 1024  # advertised; longer PDUs are refused (node/limits.py)
    ae.acse_timeout = settings.acse_timeout_s
    ae.dimse_timeout = settings.dimse_timeout_s
    ae.network_timeout = settings.network_timeout_s
    ae.maximum_associations = max(1, -(-settings.max_associations // receivers))
    ae.add_supported_context(Verification)
    return ae


def start_server(
    ae: AE,
    settings: NodeSettings,
    current_policy: Callable[[], PeerPolicy],
    handlers: list[tuple[Any, Any]],
    listening_socket: socket.socket,
    load: AssociationLoad | None = None,
    *,
    ssl_context: ssl.SSLContext | None = None,
    file_buffers: FileBufferPool | None = None,
) -> ThreadedAssociationServer:
    """Serve associations on ``listening_socket`` (bound and listening, node/listener.py), with TLS
    when ``ssl_context`` is given, in a background thread, and return the server. ``load`` is this
    receiver's share of the association count when several receivers serve the socket; with
    ``file_buffers``, C-STORE datasets are assembled in them (node/received_file.py)."""
    server_class = type("RadnodeServer", (_SharedPortServer,), {
        "listening_socket": listening_socket,
        "load": load,
        "file_buffers": file_buffers,
        "limits": DatasetLimits.from_megabytes(
            settings.max_pdu_kb, settings.max_dataset_mb, settings.max_element_mb, settings.max_inflated_mb
        ),
        "handshake_timeout_s": settings.acse_timeout_s,
        "peer_timeout_s": settings.network_timeout_s,
    })
    server = server_class(
        ae,
        listening_socket.getsockname()[:2],
        settings.ae_title,
        ae.supported_contexts,
        ssl_context,
        evt_handlers=[(evt.EVT_REQUESTED, peer_policy_handler(current_policy)), *handlers],
        request_handler=_GuardedRequestHandler,  # limits, and event-driven waits once tuning is applied
    )
    name = "radnode-acceptor-tls" if ssl_context else "radnode-acceptor"
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    ae._servers.append(server)
    return server
