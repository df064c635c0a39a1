"""C-STORE and association event handlers: validate, persist durably, index, then answer.

Status codes (PS3.4 B.2.3 and PS3.7 C.4.2): 0x0000 only once the file is fsynced in the spool
and indexed; 0xA700 when free disk is below the watermark (nothing is touched) or when the spool
or the database runs out of space while storing (what was written is removed); 0xC001 for a
dataset that cannot be parsed, 0xC002 for a missing or malformed UID, 0xC003 when the dataset's
SOP Instance UID differs from the request's; 0x0110 (processing failure) for an internal error,
which is logged with the SOP Instance UID. Input limits (node/limits.py): 0xA701 for a dataset
above ``max_dataset_mb``, 0xC004 for an element length above ``max_element_mb``, 0xC005 for a
deflated dataset inflating beyond ``max_inflated_mb``, 0xC001 for a malformed element structure.
Nothing of a refused dataset stays in the spool.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from pynetdicom import evt
from pynetdicom.events import Event

from node import metrics
from node.audit import AuditLog
from node.dicom_header import IDENTITY_TAGS, InstanceIdentity, identity_from_checked
from node.file_meta import encode_file, file_header
from node.limits import DatasetLimits, DatasetRefused, check_dataset, take_refusal
from node.received_file import ReceivedFileBuffer
from storage.database import is_out_of_space
from storage.index import InstanceIndex, RecordOutcome
from storage.spool import Spool
from storage.uids import InvalidUID

log = logging.getLogger("radnode.receiver")

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
INVALID_UID = 0xC002
UID_MISMATCH = 0xC003
PROCESSING_FAILURE = 0x0110


@dataclass
class _AssociationTally:
    calling_ae_title: str
    address: str
    started: float
    stored: int = 0
    refused: int = 0
    bytes: int = 0
    series_ids: set[int] = field(default_factory=set)


def received_file(event: Event) -> bytes | memoryview:
    """The C-STORE dataset as received, in the DICOM File Format (node/file_meta.py): a view of the
    page-aligned buffer it was assembled in, behind this same header (node/received_file.py), or
    else header and dataset joined into a new ``bytes``."""
    request = event.request
    uids = (str(request.AffectedSOPClassUID or ""), str(request.AffectedSOPInstanceUID or ""),
            str(event.context.transfer_syntax))
    dataset = request.DataSet
    if isinstance(dataset, ReceivedFileBuffer):
        whole_file = dataset.file_view(file_header(*uids))
        if whole_file is not None:
            return whole_file
    with dataset.getbuffer() as encoded:
        return encode_file(*uids, encoded)


def release_received_dataset(event: Event) -> None:
    """Hand a C-STORE's assembly buffer (node/received_file.py) back for the next image, once the
    handler is done with it."""
    dataset = event.request.DataSet
    if isinstance(dataset, ReceivedFileBuffer):
        dataset.release()


class StoreService:
    """Handlers bound to the SCP; one instance per receiver process, shared by its threads."""

    def __init__(self, spool: Spool, index: InstanceIndex, min_free_bytes: int,
                 audit: AuditLog | None = None, limits: DatasetLimits | None = None) -> None:
        self._spool = spool
        self._limits = limits or DatasetLimits()
        self._audit = audit
        self._index = index
        self._min_free_bytes = min_free_bytes
        self._tallies: dict[int, _AssociationTally] = {}
        self._lock = threading.Lock()

    def handlers(self) -> list[tuple[object, object]]:
        return [
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_ACCEPTED, self.on_accepted),
            (evt.EVT_RELEASED, self.on_released),
            (evt.EVT_ABORTED, self.on_aborted),
            (evt.EVT_REJECTED, self.on_rejected),
        ]

    # -- association events -------------------------------------------------------------------
    def on_accepted(self, event: Event) -> None:
        assoc = event.assoc
        with self._lock:
            self._tallies[id(assoc)] = _AssociationTally(
                calling_ae_title=assoc.requestor.ae_title, address=assoc.requestor.address, started=time.time()
            )

    def on_released(self, event: Event) -> None:
        tally = self._pop_tally(event)
        if tally is not None:
            self._index.mark_released(tally.series_ids, time.time())
            self._log_association(tally, "released")

    def on_aborted(self, event: Event) -> None:
        tally = self._pop_tally(event)
        if tally is not None:
            self._log_association(tally, "aborted")  # completion then waits for the quiet period

    def on_rejected(self, event: Event) -> None:
        assoc = event.assoc
        log.warning(
            "association from %s rejected in negotiation (called AE title not ours, or association limit reached)",
            assoc.requestor.address,
        )
        metrics.ASSOCIATIONS.labels("rejected").inc()
        if self._audit is not None:
            self._audit.record("association", outcome="rejected", calling_ae_title=assoc.requestor.ae_title,
                               address=assoc.requestor.address, instances=0, refused=0, bytes=0, duration_s=0.0)

    def _pop_tally(self, event: Event) -> _AssociationTally | None:
        with self._lock:
            return self._tallies.pop(id(event.assoc), None)

    def _log_association(self, tally: _AssociationTally, outcome: str) -> None:
        metrics.ASSOCIATIONS.labels(outcome).inc()
        if self._audit is not None:
            self._audit.record("association", outcome=outcome, calling_ae_title=tally.calling_ae_title,
                               address=tally.address, instances=tally.stored, refused=tally.refused,
                               bytes=tally.bytes, series=len(tally.series_ids),
                               duration_s=round(time.time() - tally.started, 3))
        log.info(
            "association %s: calling AE %r from %s, %d stored, %d refused, %d bytes, %.2f s",
            outcome,
            tally.calling_ae_title,
            tally.address,
            tally.stored,
            tally.refused,
            tally.bytes,
            time.time() - tally.started,
        )

    # -- DIMSE services --------------------------------------------------------------------
    def on_echo(self, event: Event) -> int:
        return SUCCESS

    def on_store(self, event: Event) -> int:
        requested_uid = str(event.request.AffectedSOPInstanceUID or "")
        tally = self._tallies.get(id(event.assoc))
        started = time.perf_counter()
        try:
            status = self._store(event, requested_uid, tally)
        except Exception:
            log.exception("C-STORE of SOP Instance %s failed with an internal error", requested_uid)
            status = PROCESSING_FAILURE
        finally:
            release_received_dataset(event)
        metrics.CSTORE_SECONDS.observe(time.perf_counter() - started)
        if status != SUCCESS:
            metrics.INSTANCES_REFUSED.labels(f"0x{status:04X}").inc()
        if tally is not None and status != SUCCESS:
            tally.refused += 1
        return status

    def _store(self, event: Event, requested_uid: str, tally: _AssociationTally | None) -> int:
        refused = take_refusal(event.assoc, event.request.MessageID)  # decided while it arrived
        if refused is not None:
            log.warning("refused SOP Instance %s: %s", requested_uid[:80], refused.reason)
            return refused.status
        data = received_file(event)
        try:  # one pass over the element headers, before a byte is written
            checked = check_dataset(data, self._limits, IDENTITY_TAGS)
        except DatasetRefused as exc:
            log.warning("refused SOP Instance %s: %s", requested_uid[:80], exc.reason)
            return exc.status
        try:
            identity = identity_from_checked(checked)
        except InvalidUID as exc:
            log.warning("refused SOP Instance %r: %s", requested_uid[:80], exc)
            return INVALID_UID
        if identity.sop_instance_uid != requested_uid.rstrip("\x00 "):
            log.warning(
                "refused SOP Instance %s: the dataset's SOPInstanceUID differs from the request's", requested_uid
            )
            return UID_MISMATCH
        if self._spool.free_bytes() - len(data) < self._min_free_bytes:
            log.error(
                "refused SOP Instance %s: free disk below the %d MB watermark",
                requested_uid,
                self._min_free_bytes // 2**20,
            )
            return OUT_OF_RESOURCES
        target = self._spool.path_for(
            identity.study_instance_uid, identity.series_instance_uid, identity.sop_instance_uid
        )
        try:
            existed = self._spool.write(target, data)
        except OSError as exc:
            log.error("refused SOP Instance %s: cannot write to the spool (%s)", requested_uid, exc.strerror)
            return OUT_OF_RESOURCES
        try:
            outcome = self._record(event, identity, target.relative, len(data))
        except Exception as exc:
            if not existed:  # keep spool and index in step; an earlier acknowledged copy stays
                target.absolute.unlink(missing_ok=True)
            if is_out_of_space(exc):  # the database's disk is full: a resource, not a processing failure
                log.error("refused SOP Instance %s: the database cannot grow (disk full): %s", requested_uid,
                          type(exc).__name__)
                return OUT_OF_RESOURCES
            raise
        if outcome.reopened:
            log.info("series %s reopened by a late instance", identity.series_instance_uid)
        metrics.INSTANCES_RECEIVED.inc()
        metrics.BYTES_RECEIVED.inc(len(data))
        if tally is not None:
            tally.stored += 1
            tally.bytes += len(data)
            tally.series_ids.add(outcome.series_id)
        return SUCCESS

    def _record(self, event: Event, identity: InstanceIdentity, relative_path: str, size: int) -> RecordOutcome:
        assoc = event.assoc
        return self._index.record(
            identity.received(relative_path, size, assoc.requestor.ae_title, assoc.requestor.address, time.time())
        )
