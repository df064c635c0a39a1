"""A receiver process: the Storage SCP bound to ``[node] host:port``, until told to stop."""

from __future__ import annotations

import logging
import os
import signal
import time

from node.audit import AuditLog
from node.config import Config
from node.stop_signal import StopSignal
from node.limits import DatasetLimits
from node.listener import AssociationLoad, SharedListeners
from node.logs import configure_logging
from node.peers import PeerPolicy
from node.reload import ConfigHolder, config_file_of_supervisor, install_sighup
from node import pynetdicom_tuning
from node.receiver import StoreService
from node.received_file import FileBufferPool
from node.scp import build_application_entity, start_server
from node.tls import server_context
from storage.database import create_database_engine
from storage.index import InstanceIndex
from storage.spool import Spool

log = logging.getLogger("radnode.receiver")

DRAIN_SECONDS = 10.0  # on shutdown, open associations get this long to finish


def run_receiver(config: Config, stop: StopSignal, listeners: SharedListeners, index: int) -> None:
    """Entry point of receiver ``index`` (multiprocessing, spawn); it serves the sockets the
    supervisor opened (node/listener.py)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when to stop
    configure_logging(config.node.log_level, config.node.data_dir)
    parent = os.getppid()
    engine = create_database_engine(config.database_url)
    service = StoreService(
        spool=Spool(config.node.data_dir),
        index=InstanceIndex(engine),
        min_free_bytes=config.node.min_free_disk_mb * 2**20,
        audit=AuditLog(config.node.data_dir),
        limits=DatasetLimits.from_megabytes(config.node.max_pdu_kb, config.node.max_dataset_mb,
                                            config.node.max_element_mb, config.node.max_inflated_mb),
    )
    tuned = pynetdicom_tuning.apply()  # this process only: see the module docstring
    ae = build_application_entity(config.node, config.node.receivers)
    holder = ConfigHolder(config, config_file_of_supervisor())
    install_sighup(holder)

    def policy() -> PeerPolicy:
        return PeerPolicy(tuple(holder.current.peers))

    load = AssociationLoad(listeners.counts, index)
    file_buffers = FileBufferPool()  # shared by this process's associations, plain and TLS
    servers = [start_server(ae, config.node, policy, service.handlers(), listeners.dicom, load,
                            file_buffers=file_buffers)]
    tls = config.node.tls
    if tls is not None and listeners.tls is not None:  # same AE: max_associations counts both together
        context = server_context(tls.certificate, tls.private_key, tls.client_ca)
        servers.append(start_server(ae, config.node, policy, service.handlers(), listeners.tls, load,
                                    ssl_context=context, file_buffers=file_buffers))
        log.info("DICOM TLS on %s:%d (client certificates %s)", config.node.host, tls.port,
                 "required" if tls.client_ca else "not required")
    log.info(
        "listening on %s:%d as AE %r (pid %d, pynetdicom tuning %s)",
        config.node.host,
        config.node.port,
        config.node.ae_title,
        os.getpid(),
        "on" if tuned else "off",
    )
    while not stop.wait(0.5):
        if os.getppid() != parent:  # the supervisor died: do not linger as an orphan
            log.error("supervisor is gone; receiver exits")
            os._exit(1)
        holder.apply_pending()
    for server in servers:
        server.shutdown()  # stop accepting; let open associations finish
    deadline = time.monotonic() + DRAIN_SECONDS
    while ae.active_associations and time.monotonic() < deadline:
        time.sleep(0.1)
    ae.shutdown()
    engine.dispose()
    log.info("receiver stopped")
