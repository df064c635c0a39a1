"""A receiver process: the Storage SCP bound to ``[node] host:port``, until told to stop."""

from __future__ import annotations

import logging
import os
import signal
import time
from multiprocessing.synchronize import Event as StopEvent

from node.config import Config
from node.logs import configure_logging
from node.peers import PeerPolicy
from node.receiver import StoreService
from node.scp import build_application_entity, start_server
from storage.database import create_database_engine
from storage.index import InstanceIndex
from storage.spool import Spool

log = logging.getLogger("radnode.receiver")

DRAIN_SECONDS = 10.0  # on shutdown, open associations get this long to finish


def run_receiver(config: Config, stop: StopEvent, share_port: bool) -> None:
    """Entry point of a receiver process (multiprocessing, spawn)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when to stop
    configure_logging(config.node.log_level, config.node.data_dir)
    parent = os.getppid()
    engine = create_database_engine(config.database_url)
    service = StoreService(
        spool=Spool(config.node.data_dir),
        index=InstanceIndex(engine),
        min_free_bytes=config.node.min_free_disk_mb * 2**20,
    )
    ae = build_application_entity(config.node, config.node.receivers)
    server = start_server(ae, config.node, PeerPolicy(tuple(config.peers)), service.handlers(), share_port)
    log.info(
        "listening on %s:%d as AE %r (pid %d)", config.node.host, config.node.port, config.node.ae_title, os.getpid()
    )
    while not stop.wait(0.5):
        if os.getppid() != parent:  # the supervisor died: do not linger as an orphan
            log.error("supervisor is gone; receiver exits")
            os._exit(1)
    server.shutdown()  # stop accepting; let open associations finish
    deadline = time.monotonic() + DRAIN_SECONDS
    while ae.active_associations and time.monotonic() < deadline:
        time.sleep(0.1)
    ae.shutdown()
    engine.dispose()
    log.info("receiver stopped")
