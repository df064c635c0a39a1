"""Delivering result objects: C-STORE SCU to destinations or back to the sender (PS3.4 Annex B).

One association carries all objects of a job. Only the presentation contexts the objects need are
proposed, each in the transfer syntax the object is encoded in. An object whose SOP class the
destination refuses (e.g. LABELMAP SEG) is replaced by its fallback (e.g. BINARY SEG) when it has one.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE, Association, _config
from pynetdicom.presentation import build_context
from sqlalchemy import Engine

from node import pynetdicom_tuning
from node.audit import AuditLog
from node.config import Config, DeliverySettings, DestinationSettings
from node.peers import PeerPolicy
from node.tls import client_context
from storage.deliveries import ClaimedDelivery, DeliveryQueue, DeliveryTarget, ResultFile

log = logging.getLogger("radnode.delivery")


class DeliveryError(Exception):
    """A delivery attempt failed; the message says why, for the admin."""


@dataclass(frozen=True)
class Address:
    ae_title: str
    host: str
    port: int
    tls: ssl.SSLContext | None = None  # DICOM TLS (PS3.15 B.1) when set

    def tls_args(self) -> tuple[ssl.SSLContext, str] | None:
        """pynetdicom's ``tls_args``: the context and the host name its certificate must match."""
        return (self.tls, self.host) if self.tls is not None else None


def address_of(destination: DestinationSettings) -> Address:
    """Where a ``[[destinations]]`` entry is reached, with its TLS context when ``tls = true``."""
    context = None
    if destination.tls:
        context = client_context(destination.tls_ca, destination.tls_certificate, destination.tls_private_key,
                                 destination.tls_verify_hostname, f"destinations.{destination.name}")
    return Address(destination.ae_title, destination.host, destination.port, context)


def targets_for(config: Config, send_to: tuple[str, ...], calling_ae_title: str, calling_host: str) -> list[DeliveryTarget]:
    """Delivery rows for a route's ``send_to``; "sender" keeps the caller's AE title and host, its
    port is looked up in ``[[peers]]`` when sending."""
    targets = []
    for name in send_to:
        if name == "sender":
            targets.append(DeliveryTarget("sender", calling_ae_title, calling_host, 0))
        else:
            destination = next(d for d in config.destinations if d.name == name)
            targets.append(DeliveryTarget(name, destination.ae_title, destination.host, destination.port))
    return targets


def resolve(config: Config, delivery: ClaimedDelivery) -> Address:
    """Where a delivery goes now (the config may have changed since it was queued)."""
    if delivery.destination == "sender":
        peer = PeerPolicy(tuple(config.peers)).find(delivery.ae_title, delivery.host)
        if peer is None or peer.port is None:
            raise DeliveryError(
                f"results go back to the sender {delivery.ae_title!r} at {delivery.host}, but no [[peers]] entry "
                f"for it gives a port: add one with ae_title, host and port"
            )
        return Address(delivery.ae_title, delivery.host, peer.port)
    for destination in config.destinations:
        if destination.name == delivery.destination:
            return address_of(destination)
    raise DeliveryError(f"destination {delivery.destination!r} is no longer in the configuration")


def _context_key(path: Path) -> tuple[str, str]:
    meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).file_meta
    return str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)


def disable_nagle(assoc: Association) -> None:
    """Send each PDU at once (TCP_NODELAY) on an established requestor association.

    A C-STORE is a small command PDU followed by the dataset's PDUs (PS3.8 9.3.5); with Nagle's
    algorithm on, the last small segment waits for the peer's delayed ACK (up to ~40 ms on Linux
    loopback) before it leaves, once per object. pynetdicom does not set the option on the sockets
    it opens, so it is set here, after the A-ASSOCIATE exchange and before any DIMSE message."""
    sock = assoc.dul.socket.socket if assoc.dul.socket is not None else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def send_files(address: Address, files: list[ResultFile], data_dir: Path, own_ae_title: str,
               timeout_s: float) -> int:
    """Send ``files`` over one association; return how many objects were stored.

    Fallback objects are sent only when the destination refused the context of a primary object;
    then every primary that has a fallback is replaced by it."""
    paths = {f.sop_instance_uid: data_dir / f.path for f in files}
    keys = {uid: _context_key(path) for uid, path in paths.items()}
    ae = AE(ae_title=own_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.requested_contexts = [build_context(sop_class, syntax) for sop_class, syntax in sorted(set(keys.values()))]
    assoc = ae.associate(address.host, address.port, ae_title=address.ae_title, tls_args=address.tls_args())
    if not assoc.is_established:
        reason = "rejected" if assoc.is_rejected else "no answer or aborted"
        raise DeliveryError(f"association with {address.ae_title}@{address.host}:{address.port} failed ({reason})")
    try:
        disable_nagle(assoc)
        pynetdicom_tuning.tune_requestor(assoc)  # responses read, requests sent without 1 ms polls
        pynetdicom_tuning.hand_stolen_responses_back(assoc)  # a race in pynetdicom's reactor pause
        accepted = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts}
        fallbacks = {f.fallback_for: f for f in files if f.fallback_for}
        primaries = [f for f in files if not f.fallback_for]
        refused = [f for f in primaries if keys[f.sop_instance_uid] not in accepted]
        # One refused primary switches the whole job to its fallbacks, so an SR never references a
        # SEG the destination did not take.
        use_fallbacks = bool(refused)
        if use_fallbacks:
            log.info("%s refused %s; sending the fallback objects", address.ae_title,
                     ", ".join(sorted({keys[f.sop_instance_uid][0] for f in refused})))
        sent = 0
        for item in primaries:
            chosen = fallbacks.get(item.sop_instance_uid, item) if use_fallbacks else item
            if keys[chosen.sop_instance_uid] not in accepted:
                sop_class, syntax = keys[chosen.sop_instance_uid]
                raise DeliveryError(f"{address.ae_title} refused SOP class {sop_class} in {syntax} "
                                    f"and there is no accepted fallback")
            response = assoc.send_c_store(paths[chosen.sop_instance_uid])
            status = int(response.Status) if "Status" in response else None
            if status is None:
                raise DeliveryError(f"no C-STORE response from {address.ae_title} (association lost)")
            if status != 0x0000 and not 0xB000 <= status <= 0xBFFF:
                raise DeliveryError(f"{address.ae_title} answered C-STORE with status 0x{status:04X}")
            sent += 1
        return sent
    finally:
        if assoc.is_established:
            assoc.release()


def echo(address: Address, own_ae_title: str, timeout_s: float) -> None:
    """C-ECHO (PS3.7 9.1.5) a destination; raise DeliveryError when it does not answer success."""
    ae = AE(ae_title=own_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate(address.host, address.port, ae_title=address.ae_title, tls_args=address.tls_args())
    if not assoc.is_established:
        raise DeliveryError(f"no association with {address.ae_title}@{address.host}:{address.port}")
    pynetdicom_tuning.hand_stolen_responses_back(assoc)
    try:
        response = assoc.send_c_echo()
        if int(response.get("Status", -1)) != 0:
            raise DeliveryError(f"C-ECHO to {address.ae_title} did not answer success")
    finally:
        assoc.release()


def retry_delay(settings: DeliverySettings, attempts: int) -> float:
    """Exponential backoff: first_retry_s, doubled each attempt, capped at max_retry_s."""
    return min(settings.max_retry_s, settings.first_retry_s * 2 ** max(0, attempts - 1))


class Deliverer:
    """Claims due deliveries and sends them, at most ``max_associations`` at a time per destination.

    Files are streamed as stored (pynetdicom's STORE_SEND_CHUNKED_DATASET, set for the process that
    delivers): each goes in a context proposed with its own transfer syntax, so nothing needs to be
    decoded and encoded again on the way out."""

    def __init__(self, config: Config, engine: Engine, owner: str) -> None:
        _config.STORE_SEND_CHUNKED_DATASET = True
        pynetdicom_tuning.apply()  # event-driven waits for the associations this process opens
        self._config = config
        self._queue = DeliveryQueue(engine, config.delivery.give_up_after_s)
        self._owner = owner
        self._audit = AuditLog(config.node.data_dir)
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="delivery")
        self._busy: dict[str, int] = {}
        self._lock = threading.Lock()

    def reconfigure(self, config: Config) -> None:
        """Take a reloaded configuration (destinations and peers apply to the next send)."""
        self._config = config

    def _limit(self, destination: str) -> int:
        for d in self._config.destinations:
            if d.name == destination:
                return d.max_associations
        return 2

    def dispatch(self) -> None:
        """Start sends for due deliveries, within each destination's association limit."""
        now = time.time()
        for destination in self._queue.due_destinations(now):
            while True:
                with self._lock:
                    if self._busy.get(destination, 0) >= self._limit(destination):
                        break
                claimed = self._queue.claim(destination, self._owner, self._config.delivery.lease_s, time.time())
                if claimed is None:
                    break
                with self._lock:
                    self._busy[destination] = self._busy.get(destination, 0) + 1
                self._pool.submit(self._deliver, claimed)

    def _deliver(self, delivery: ClaimedDelivery) -> None:
        started = time.perf_counter()
        try:
            address = resolve(self._config, delivery)
            files = self._queue.result_files(delivery.job_id)
            sent = send_files(address, files, self._config.node.data_dir, self._config.node.ae_title,
                              self._config.delivery.timeout_s)
            self._queue.mark_done(delivery.id, self._owner, time.time())
            self._record(delivery, "done", started, objects=sent)
            log.info("delivery %d (job %d) to %s: %d objects in %.2f s", delivery.id, delivery.job_id,
                     delivery.destination, sent, time.perf_counter() - started)
        except Exception as exc:  # every failure is recorded and retried; nothing is dropped
            message = str(exc) if isinstance(exc, DeliveryError) else f"{type(exc).__name__}: {exc}"
            delay = retry_delay(self._config.delivery, delivery.attempts)
            state = self._queue.mark_failed(delivery, self._owner, message, delay, time.time())
            self._record(delivery, "dead" if state == "dead" else "retry", started, objects=0,
                         error=message if isinstance(exc, DeliveryError) else type(exc).__name__)
            log.warning("delivery %d (job %d) to %s failed (attempt %d): %s; now %s%s", delivery.id,
                        delivery.job_id, delivery.destination, delivery.attempts, message, state,
                        f", next try in {delay:.0f} s" if state == "pending" else "")
        finally:
            with self._lock:
                self._busy[delivery.destination] -= 1

    def _record(self, delivery: ClaimedDelivery, outcome: str, started: float, **fields: object) -> None:
        """Audit one delivery attempt: where to, how many objects, the outcome and seconds."""
        self._audit.record("delivery", delivery_id=delivery.id, job_id=delivery.job_id,
                           destination=delivery.destination, ae_title=delivery.ae_title, host=delivery.host,
                           outcome=outcome, attempt=delivery.attempts,
                           seconds=round(time.perf_counter() - started, 3), **fields)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
