"""The DICOM Storage SCP: C-ECHO and C-STORE for every storage SOP class (PS3.4 Annex B).

Built on pynetdicom with three small, isolated extensions:
- the peer allow-list is checked during association negotiation, so an unknown caller gets
  A-ASSOCIATE-RJ "rejected-permanent / service-user / calling-AE-title-not-recognized"
  (PS3.8 9.3.4) even when only its host is wrong;
- the listening socket may be shared by several receiver processes (SO_REUSEPORT);
- unrestricted storage: any storage, private or unknown SOP class is accepted in the first
  transfer syntax the caller proposes, and stored exactly as received.
"""

from __future__ import annotations

import socket
from typing import Any

from pynetdicom import AE, _config, evt
from pynetdicom.acse import ACSE
from pynetdicom.sop_class import Verification
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from node.config import NodeSettings
from node.peers import PeerPolicy

# PS3.8 Table 9-21: result 1 = rejected-permanent, source 1 = service-user, reason 3 = calling AE
_REJECT_UNKNOWN_CALLER = (0x01, 0x01, 0x03)


class _PolicyACSE(ACSE):
    """ACSE that also applies the host part of the peer allow-list when acting as acceptor."""

    policy: PeerPolicy

    def _negotiate_as_acceptor(self) -> None:
        request = self.requestor.primitive
        calling = str(request.calling_ae_title).strip() if request is not None else ""
        address = self.assoc.requestor.address
        if not self.policy.admits(calling, address):
            self.send_reject(*_REJECT_UNKNOWN_CALLER)
            evt.trigger(self.assoc, evt.EVT_REJECTED, {})
            self.assoc.kill()
            return
        super()._negotiate_as_acceptor()


class _PolicyRequestHandler(RequestHandler):
    def _create_association(self):  # type: ignore[no-untyped-def]
        assoc = super()._create_association()
        acse = _PolicyACSE(assoc)
        acse.policy = self.server.peer_policy  # type: ignore[attr-defined]
        assoc.acse = acse
        return assoc


class _SharedPortServer(ThreadedAssociationServer):
    """Association server whose socket can be shared by several processes (SO_REUSEPORT)."""

    reuse_port = False
    daemon_threads = True

    def server_bind(self) -> None:
        if self.reuse_port:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().server_bind()


def build_application_entity(settings: NodeSettings, receivers: int) -> AE:
    """An AE configured from ``[node]``: called AE title enforced, timeouts and limits set."""
    _config.UNRESTRICTED_STORAGE_SERVICE = True  # accept every storage SOP class (see module doc)
    ae = AE(ae_title=settings.ae_title)
    ae.require_called_aet = True
    ae.maximum_pdu_size = 0  # no limit: fewer, larger PDUs
    ae.acse_timeout = settings.acse_timeout_s
    ae.dimse_timeout = settings.dimse_timeout_s
    ae.network_timeout = settings.network_timeout_s
    ae.maximum_associations = max(1, -(-settings.max_associations // receivers))
    ae.add_supported_context(Verification)
    return ae


def start_server(
    ae: AE,
    settings: NodeSettings,
    policy: PeerPolicy,
    handlers: list[tuple[Any, Any]],
    share_port: bool,
) -> ThreadedAssociationServer:
    """Start listening on ``[node] host:port`` in a background thread and return the server."""
    server_class = type("RadnodeServer", (_SharedPortServer,), {"reuse_port": share_port})
    server = server_class(
        ae,
        (settings.host, settings.port),
        settings.ae_title,
        ae.supported_contexts,
        None,
        evt_handlers=handlers,
        request_handler=_PolicyRequestHandler,
    )
    server.peer_policy = policy  # type: ignore[attr-defined]
    import threading

    thread = threading.Thread(target=server.serve_forever, name="radnode-acceptor", daemon=True)
    thread.start()
    ae._servers.append(server)
    return server
