"""Who may associate: the ``[[peers]]`` allow-list (calling AE title, optionally host)."""

from __future__ import annotations

from dataclasses import dataclass

from node.config import PeerSettings


@dataclass(frozen=True)
class PeerPolicy:
    """Allow-list of calling AE titles and, where a peer names one, the address it must come from.

    An empty list admits anyone (the node logs a warning at start-up)."""

    peers: tuple[PeerSettings, ...]

    @property
    def open_to_all(self) -> bool:
        return not self.peers

    def admits(self, calling_ae_title: str, address: str) -> bool:
        if self.open_to_all:
            return True
        title = calling_ae_title.strip()
        return any(p.ae_title == title and (p.host is None or p.host == address) for p in self.peers)

    def find(self, calling_ae_title: str, address: str) -> PeerSettings | None:
        """The peer entry for an admitted caller, if any (gives the port for send_to = 'sender')."""
        title = calling_ae_title.strip()
        for peer in self.peers:
            if peer.ae_title == title and (peer.host is None or peer.host == address):
                return peer
        return None
