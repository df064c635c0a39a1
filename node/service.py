"""``radnode serve``: the supervising process and its children.

The supervisor migrates the database, recovers the spool, opens the DICOM listening socket(s)
(node/listener.py: a port in use ends start-up with exit code 2), starts receiver and worker processes
(spawned, so no thread or CUDA state is inherited), restarts any that die, and runs the periodic
completion check. SIGTERM or SIGINT stops accepting, lets open associations finish and exits 0.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from multiprocessing.context import SpawnProcess
from typing import Any, Callable, Literal

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine

from node.completion import CompletionChecker
from node.delivery import Deliverer, address_of, echo
from node.config import Config
from node.listener import PortUnavailable, SharedListeners, open_listening_socket
from node.logs import configure_logging
from node.stop_signal import StopSignal
from node.reload import CONFIG_FILE_ENV, ConfigHolder, install_sighup, write_pid_file
from node.metrics import prepare_multiprocess_dir
from node.recovery import release_leases_of_dead_processes, recover_spool, remove_abandoned_outbox_files
from node.receiver_process import run_receiver
from storage.database import create_database_engine, migrate
from storage.deliveries import DeliveryQueue
from storage.index import InstanceIndex
from storage.jobs import JobQueue
from storage.spool import Spool, remove_partial_files_of

log = logging.getLogger("radnode.service")

_TEMPORARY_FILES_FOLDER = {"receiver-": "spool", "worker-": "outbox"}  # by child name prefix; web writes none


def _temporary_files_folder(child_name: str) -> str | None:
    """The data_dir folder where the child process ``child_name`` writes temporary files."""
    return next((folder for prefix, folder in _TEMPORARY_FILES_FOLDER.items() if child_name.startswith(prefix)), None)

Role = Literal["all", "receiver", "worker"]


@dataclass
class _Child:
    name: str
    target: Callable[..., None]
    args: tuple[Any, ...]
    process: SpawnProcess | None = None
    restarts: int = 0


class Supervisor:
    def __init__(self, config: Config, role: Role, config_path: Path | None = None) -> None:
        self.config = config
        self.role = role
        self._holder = ConfigHolder(config, config_path)
        if config_path is not None:  # spawned children re-read it on SIGHUP (node/reload.py)
            os.environ[CONFIG_FILE_ENV] = str(config_path.resolve())
        self._context = multiprocessing.get_context("spawn")
        self._stop = StopSignal(self._context)  # not a multiprocessing.Event: see node/stop_signal.py
        self._children: list[_Child] = []
        self._stopping = threading.Event()
        self._reconfigurable: list[CompletionChecker | Deliverer] = []
        self._engine: Engine | None = None
        self._listeners: SharedListeners | None = None

    def prepare(self) -> None:
        """Schema and spool recovery, before anything listens."""
        data_dir = self.config.node.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        prepare_multiprocess_dir(data_dir)  # before any child starts: they inherit it (node/metrics.py)
        engine = create_database_engine(self.config.database_url)
        migrate(engine)
        if self.role in ("all", "receiver"):
            recover_spool(Spool(data_dir), InstanceIndex(engine))
        if self.role in ("all", "worker"):
            remove_abandoned_outbox_files(data_dir)
            self._release_leases(engine)
        engine.dispose()
        if not self.config.peers:
            log.warning("no [[peers]] configured: any calling AE title may store to this node")

    def _release_leases(self, engine: Engine) -> None:
        """Jobs and deliveries held by processes of this host that died (kill -9, OOM, power cut)
        are taken up again now rather than when their leases expire (node/recovery.py)."""
        release_leases_of_dead_processes(JobQueue(engine, self.config.workers.max_attempts),
                                         DeliveryQueue(engine, self.config.delivery.give_up_after_s))

    def _open_listeners(self) -> SharedListeners:
        """Bind the DICOM port (and the DICOM TLS port) once, for every receiver (node/listener.py)."""
        node = self.config.node
        dicom = open_listening_socket(node.host, node.port)
        try:
            tls = open_listening_socket(node.host, node.tls.port) if node.tls is not None else None
        except PortUnavailable:
            dicom.close()
            raise
        return SharedListeners(dicom, tls, self._context.Array("i", node.receivers))

    def _plan_children(self) -> None:
        if self.role in ("all", "receiver"):
            self._listeners = self._open_listeners()
            for index in range(self.config.node.receivers):
                self._children.append(_Child(f"receiver-{index}", run_receiver,
                                             (self.config, self._stop, self._listeners, index)))
            if self.config.web.enabled:
                from node.web import run_web

                self._children.append(_Child("web", run_web, (self.config, self._stop)))
        if self.role in ("all", "worker"):
            from node.worker import run_worker

            for index in range(self.config.workers.count):
                self._children.append(_Child(f"worker-{index}", run_worker, (self.config, self._stop, index)))

    def _start(self, child: _Child) -> None:
        child.process = self._context.Process(target=child.target, args=child.args, name=child.name, daemon=False)
        child.process.start()

    def _apply_reload(self) -> None:
        """After SIGHUP: reload here, then have receivers and workers reload (web reads the database)."""
        if not self._holder.apply_pending():
            return
        self.config = self._holder.current
        for part in self._reconfigurable:
            part.reconfigure(self.config)
        for child in self._children:
            if child.process is not None and child.process.is_alive() and not child.name.startswith("web"):
                os.kill(child.process.pid, signal.SIGHUP)

    def _watch_children(self) -> None:
        self._apply_reload()
        for child in self._children:
            if self._stopping.is_set():
                return
            if child.process is not None and not child.process.is_alive():
                child.restarts += 1
                log.error(
                    "%s exited with code %s; restarting (restart %d)",
                    child.name,
                    child.process.exitcode,
                    child.restarts,
                )
                if child.name.startswith("worker-") and self._engine is not None:
                    self._release_leases(self._engine)  # its job is taken up at once, not after lease_s
                dead_pid = child.process.pid
                self._start(child)
                folder = _temporary_files_folder(child.name)
                if dead_pid is not None and folder is not None:
                    self._remove_partial_files_of(child.name, dead_pid, self.config.node.data_dir / folder)

    def _remove_partial_files_of(self, name: str, dead_pid: int, folder: Path) -> None:
        """A receiver or worker killed mid-write (OOM, kill -9) leaves its temporary file in
        ``folder`` (the spool or the outbox); delete the files named with its pid, in the
        background (a walk of a large spool takes a while), while the other processes go on
        writing theirs (storage/spool.py)."""

        def remove() -> None:
            try:
                removed = remove_partial_files_of(folder, dead_pid)
            except OSError as exc:
                log.error("cannot remove the partial %s files of %s (pid %d): %s", folder.name, name, dead_pid, exc)
                return
            if removed:
                log.warning("removed %d partial %s file(s) left by %s (pid %d)", removed, folder.name, name, dead_pid)

        threading.Thread(target=remove, name=f"partial-files-{dead_pid}", daemon=True).start()

    def run(self) -> int:
        self.prepare()
        try:
            self._plan_children()
        except PortUnavailable as exc:
            log.error("%s; is another radnode or DICOM server running there?", exc)
            return 2
        for child in self._children:
            self._start(child)
        engine = self._engine = create_database_engine(self.config.database_url)
        scheduler = BackgroundScheduler(daemon=True, timezone="UTC")
        if self.role in ("all", "receiver"):
            checker = CompletionChecker(self.config, engine)
            self._reconfigurable.append(checker)
            scheduler.add_job(
                checker.check,
                "interval",
                seconds=self.config.completion.check_interval_s,
                max_instances=1,
                coalesce=True,
                id="completion",
            )
            from node.retention import RetentionJob

            scheduler.add_job(RetentionJob(self.config, engine).run, "interval",
                              seconds=self.config.retention.check_interval_s, max_instances=1, coalesce=True,
                              id="retention")
        deliverer: Deliverer | None = None
        if self.role in ("all", "worker"):
            deliverer = Deliverer(self.config, engine, owner=f"{socket.gethostname()}:{os.getpid()}:delivery")
            self._reconfigurable.append(deliverer)
            scheduler.add_job(deliverer.dispatch, "interval", seconds=self.config.delivery.check_interval_s,
                              max_instances=1, coalesce=True, id="delivery")
            threading.Thread(target=check_destinations, args=(self.config,), daemon=True).start()
        scheduler.add_job(self._watch_children, "interval", seconds=1.0, max_instances=1, coalesce=True)
        scheduler.start()

        def _request_stop(signum: int, _frame: object) -> None:
            log.info("received %s: shutting down", signal.Signals(signum).name)
            self._stopping.set()

        signal.signal(signal.SIGTERM, _request_stop)
        signal.signal(signal.SIGINT, _request_stop)
        install_sighup(self._holder)
        pid_file = write_pid_file(self.config.node.data_dir)
        self._stopping.wait()
        pid_file.unlink(missing_ok=True)
        scheduler.shutdown(wait=True)
        if deliverer is not None:
            deliverer.close()
        self._stop.set()
        for child in self._children:
            if child.process is not None:
                child.process.join(timeout=30)
                if child.process.is_alive():
                    log.error("%s did not stop in 30 s; terminating it", child.name)
                    child.process.terminate()
                    child.process.join(timeout=5)
        if self._listeners is not None:
            self._listeners.close()
        engine.dispose()
        log.info("radnode stopped")
        return 0


def check_destinations(config: Config) -> None:
    """C-ECHO every destination once at start-up and log the ones that do not answer."""
    for destination in config.destinations:
        address = address_of(destination)
        try:
            echo(address, config.node.ae_title, timeout_s=5)
            log.info("destination %s (%s@%s:%d) answers C-ECHO", destination.name, address.ae_title,
                     address.host, address.port)
        except Exception as exc:
            log.warning("destination %s is unreachable now (%s); results for it wait and are retried",
                        destination.name, exc)


def serve(config: Config, role: Role, config_path: Path | None = None) -> int:
    configure_logging(config.node.log_level, config.node.data_dir)
    return Supervisor(config, role, config_path).run()
