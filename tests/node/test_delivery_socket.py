"""How delivery associations use their TCP socket (node/delivery.py)."""

from __future__ import annotations

import socket
import subprocess
import time

from pynetdicom import AE

from node.delivery import disable_nagle
from tests.support.dcmtk import DCMTK_ENV, echoscu, require
from tests.support.network import free_port


def test_delivery_association_sends_without_nagle_delay(tmp_path) -> None:
    """Without TCP_NODELAY every C-STORE waits for the PACS's delayed ACK (~40 ms on loopback)."""
    port = free_port()
    scp = subprocess.Popen([require("storescp"), "-aet", "PACS", "-od", str(tmp_path), str(port)],
                           env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while echoscu(port, called="PACS").returncode != 0:
            assert time.monotonic() < deadline, "storescp did not start"
            time.sleep(0.1)
        ae = AE(ae_title="RADNODE")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
        assert assoc.is_established
        try:
            sock = assoc.dul.socket.socket
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0  # pynetdicom's default
            disable_nagle(assoc)
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            assert assoc.send_c_echo().Status == 0x0000
        finally:
            assoc.release()
    finally:
        scp.terminate()
        scp.wait(timeout=10)
