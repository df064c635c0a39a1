"""Input limits of the Storage SCP: what a peer can make a receiver hold in memory, and what it may store.

What is bounded, and when (all per association; a receiver holds at most ``max_associations`` of them):

- **PDU length** (PS3.8 9.3.1, D.1): the acceptor advertises ``max_pdu_kb`` as its Maximum Length.
  A PDU whose header declares more than that (or more than :data:`MIN_PDU_GUARD` for association
  PDUs) is refused *before* its body is read: the connection is closed (A-P-ABORT), so an absurd
  PDU length costs 6 bytes of memory, not 4 GiB.
- **Association slots**: pynetdicom's acceptor waits ``acse_timeout_s`` for the A-ASSOCIATE-RQ
  even when the connection is already closed or sent garbage, so each port scan, health probe or
  garbage connection would hold one of the ``max_associations`` slots for 30 s. Here the waiting
  association is woken as soon as its connection closes or sends an invalid PDU before any
  A-ASSOCIATE-RQ, and gives its slot back at once. A connection that stays open and silent still
  holds a slot for ``acse_timeout_s`` (ARTIM, PS3.8 9.1.5).
- **Command set** (PS3.7 6.3.1): more than :data:`MAX_COMMAND_BYTES` of command fragments is an
  invalid PDU stream; the association is aborted (Evt19), as pynetdicom does for undecodable ones.
- **Dataset size**: fragments are counted as they arrive. Once a C-STORE dataset passes
  ``max_dataset_mb``, what was buffered is dropped and later fragments are discarded; the handler
  then answers 0xA701 (Refused: Out of Resources, PS3.4 B.2.3) and writes nothing. Memory stays
  at most ``max_dataset_mb`` + one PDU per association, whatever the sender declares or sends.
- **Deflate expansion** (Deflated Explicit VR Little Endian, PS3.5 A.5): inflated in bounded
  steps; more than ``max_inflated_mb`` of output answers 0xC005 (a "deflate bomb") before the
  rest is inflated.
- **Element lengths and structure** (PS3.5 7.1-7.5), checked on the received bytes before anything
  parses them with pydicom or writes them: a declared value length above ``max_element_mb``
  answers 0xC004; a length that runs past the end of its dataset or item (truncation, absurd
  lengths), an explicit VR that is not a DICOM VR, an undefined length where PS3.5 7.1.3 forbids
  it, tags out of ascending order (PS3.5 7.1), or nesting deeper than :data:`MAX_DEPTH` answer
  0xC001. Only headers are read; values are skipped.

Pixel values and other element values are not interpreted here: a bit flip inside a value that
leaves a well-formed dataset is indistinguishable from a real value and is stored as received.
"""

from __future__ import annotations

import logging
import struct
import zlib
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Callable

from pydicom.datadict import dictionary_VR

from node.cstore_request import command_values

log = logging.getLogger("radnode.receiver")

MIN_PDU_GUARD = 256 * 1024  # A-ASSOCIATE-RQ/AC PDUs are not bounded by Maximum Length; allow this much
MAX_COMMAND_BYTES = 64 * 1024  # a C-STORE-RQ command set is a few hundred bytes
MAX_DEPTH = 32  # nested sequences
INFLATE_STEP = 1 << 20

DATASET_TOO_LARGE = 0xA701
CANNOT_UNDERSTAND = 0xC001
ELEMENT_TOO_LONG = 0xC004
DEFLATE_BOMB = 0xC005

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
DEFLATED_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1.99"

_VRS = {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"OB", b"OD",
    b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM", b"UC", b"UI",
    b"UL", b"UN", b"UR", b"US", b"UT", b"UV",
}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010


@dataclass(frozen=True)
class DatasetLimits:
    """Limits in bytes; see the module docstring for when each is enforced."""

    max_pdu_bytes: int = 4 * 2**20
    max_dataset_bytes: int = 1024 * 2**20
    max_element_bytes: int = 1024 * 2**20
    max_inflated_bytes: int = 1024 * 2**20

    @classmethod
    def from_megabytes(cls, pdu_kb: int, dataset_mb: int, element_mb: int, inflated_mb: int) -> "DatasetLimits":
        return cls(pdu_kb * 1024, dataset_mb * 2**20, element_mb * 2**20, inflated_mb * 2**20)


class DatasetRefused(Exception):
    """The dataset breaks a limit or is malformed; ``status`` is the C-STORE failure status to answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# -- while receiving (DUL and DIMSE threads of an accepted association) -------------------------

_REFUSALS_ATTR = "_radnode_refusals"
_TALLY_ATTR = "_radnode_message_tally"  # on a guarded Association: its _MessageTally
_PDU_LIMIT_ATTR = "_radnode_pdu_limit"  # on a guarded AssociationSocket: the PDU length limit


def guard_association(assoc: Any, limits: DatasetLimits) -> None:
    """Bound what the peer of an accepted, not yet started Association can make us buffer.

    Wraps, for this association only, its socket's ``recv`` (PDU length) and its DIMSE provider's
    ``receive_primitive`` (command and dataset bytes). pynetdicom 3.0.x internals."""
    refusals: dict[int, DatasetRefused] = {}
    setattr(assoc, _REFUSALS_ATTR, refusals)
    _guard_pdu_length(assoc.dul.socket, max(limits.max_pdu_bytes, MIN_PDU_GUARD))
    _wake_on_early_close(assoc)
    _guard_dimse(assoc, limits.max_dataset_bytes, refusals)


def take_refusal(assoc: Any, message_id: int | None) -> DatasetRefused | None:
    """The refusal decided while the C-STORE with ``message_id`` was arriving, if any (once)."""
    refusals: dict[int, DatasetRefused] | None = getattr(assoc, _REFUSALS_ATTR, None)
    if refusals is None or message_id is None:
        return None
    return refusals.pop(int(message_id), None)


def _wake_on_early_close(assoc: Any) -> None:
    """Connection closed (Evt17) or invalid PDU (Evt19) before an A-ASSOCIATE-RQ was handed over:
    wake the acceptor's wait for it with ``None`` (its "timed out" path: kill, close, free slot)."""
    events = assoc.dul.event_queue
    original_put = events.put

    def put(item: Any, block: bool = True, timeout: float | None = None) -> None:
        original_put(item, block, timeout)
        if item in ("Evt17", "Evt19") and assoc.requestor.primitive is None:
            assoc.dul.to_user_queue.put(None)

    events.put = put


def pdu_length_limit(sock: Any) -> int | None:
    """The PDU length above which the guard closes ``sock``'s association (None: not guarded),
    for a reader that does not go through its ``recv`` for a PDU body (node/pynetdicom_tuning.py)."""
    return getattr(sock, _PDU_LIMIT_ATTR, None)


def count_direct_dataset_bytes(assoc: Any, nr_bytes: int) -> bool:
    """Count ``nr_bytes`` of a C-STORE dataset fragment that the DUL receives straight into its
    assembly buffer, which the guard then sees only as an empty fragment (node/pynetdicom_tuning.py).
    True when they stay within ``max_dataset_mb``; False, counting nothing, when they would not,
    so that the fragment is read as usual and the guard refuses the dataset."""
    tally: _MessageTally | None = getattr(assoc, _TALLY_ATTR, None)
    if tally is None:
        return True
    if tally.over or tally.dataset + nr_bytes > tally.max_dataset:
        return False
    tally.dataset += nr_bytes
    return True


@dataclass
class _MessageTally:
    """Bytes of the DIMSE message an association is receiving (reset when it is complete)."""

    max_dataset: int
    command: int = 0
    dataset: int = 0
    over: bool = False


def _guard_pdu_length(sock: Any, limit: int) -> None:
    original: Callable[[int], bytearray] = sock.recv
    setattr(sock, _PDU_LIMIT_ATTR, limit)

    def recv(nr_bytes: int) -> bytearray:
        # the DUL reads a PDU as recv(6) for type and length, then recv(length) for the body
        if nr_bytes > limit:
            log.warning("closing association: peer declared a PDU of %d bytes (limit %d)", nr_bytes, limit)
            raise ConnectionAbortedError(f"PDU length {nr_bytes} above the limit of {limit} bytes")
        return original(nr_bytes)

    sock.recv = recv


def _guard_dimse(assoc: Any, max_dataset: int, refusals: dict[int, DatasetRefused]) -> None:
    from pynetdicom.dimse_messages import DIMSEMessage

    dimse = assoc.dimse
    original: Callable[[Any], None] = dimse.receive_primitive
    tally = _MessageTally(max_dataset)
    setattr(assoc, _TALLY_ATTR, tally)

    def receive_primitive(primitive: Any) -> None:
        if dimse.message is None:
            dimse.message = DIMSEMessage()
        message = dimse.message
        kept: list[list[Any]] = []
        changed = False
        for context_id, data in primitive.presentation_data_value_list:
            if data[0] & 1:  # command fragment (PS3.8 E.2)
                tally.command += len(data) - 1
                if tally.command > MAX_COMMAND_BYTES:
                    log.warning("aborting association: command set above %d bytes", MAX_COMMAND_BYTES)
                    message.encoded_command_set = BytesIO()
                    assoc.dul.event_queue.put("Evt19")  # invalid PDU: A-ABORT (PS3.8 9.2, AA-8)
                    return
            else:
                tally.dataset += len(data) - 1
                if tally.dataset > max_dataset:
                    if not tally.over:
                        tally.over = True
                        release = getattr(message.data_set, "release", None)  # node/received_file.py
                        if release is not None:
                            release()
                        message.data_set = BytesIO()  # free what was buffered
                        log.warning("C-STORE dataset passed %d bytes: discarding the rest of it", max_dataset)
                    data, changed = bytes(data[:1]), True  # keep the control header (last-fragment bit)
            kept.append([context_id, data])
        if changed:  # pynetdicom's setter takes bytes only; the tuned path hands in memoryviews
            primitive.presentation_data_value_list = [[context_id, bytes(data)] for context_id, data in kept]
        # DIMSE empties the encoded command set once the message is complete
        encoded_command = message.encoded_command_set.getvalue() if tally.over else b""
        original(primitive)
        if dimse.message is not message:  # the message is complete
            if tally.over:
                message_id = _message_id(message, encoded_command)
                if message_id is not None:
                    refusals[int(message_id)] = DatasetRefused(
                        DATASET_TOO_LARGE, f"dataset of {tally.dataset} bytes is above the limit of {max_dataset}"
                    )
            tally.command, tally.dataset, tally.over = 0, 0, False

    dimse.receive_primitive = receive_primitive


def _message_id(message: Any, encoded_command: bytes) -> int | None:
    """The Message ID of a complete DIMSE message: from its decoded command set, or, for a
    C-STORE-RQ typed without decoding it (node/pynetdicom_tuning.py), from ``encoded_command``,
    its command set as encoded."""
    command_set = getattr(message, "command_set", None)
    if command_set is not None:
        return getattr(command_set, "MessageID", None)
    values = command_values(encoded_command)
    return None if values is None else values.get("MessageID")


# -- once received (C-STORE handler) -------------------------------------------------------------


@dataclass(frozen=True)
class CheckedDataset:
    """What :func:`check_dataset` read on its way through a dataset that passed: the File Meta's
    Transfer Syntax UID and the raw values (bytes as encoded, padding included) of the requested
    top-level elements that are present, by tag."""

    transfer_syntax_uid: str
    values: dict[int, bytes]


def check_dataset(encoded_file: bytes | memoryview, limits: DatasetLimits,
                  keep: frozenset[int] = frozenset()) -> CheckedDataset:
    """Check a received file (preamble, File Meta, dataset) against ``limits``; raise DatasetRefused.

    The File Meta is the one pynetdicom wrote from the accepted presentation context, so its
    Transfer Syntax says how the dataset is encoded. The values of the top-level elements whose
    tags are in ``keep`` are returned, so that the caller needs no second parse for them."""
    data = memoryview(encoded_file)
    if len(data) > 132 + limits.max_dataset_bytes:
        raise DatasetRefused(DATASET_TOO_LARGE, f"dataset of {len(data)} bytes is above the limit")
    dataset_start, syntax = _read_meta(data)
    body: memoryview = data[dataset_start:]
    if syntax == DEFLATED_EXPLICIT_VR_LE:
        body = memoryview(inflate_bounded(body, limits.max_inflated_bytes))
    implicit = syntax == IMPLICIT_VR_LE or (len(body) >= 6 and bytes(body[4:6]) not in _VRS)  # as pydicom
    little = syntax != EXPLICIT_VR_BE
    walker = _Walker(body, little, limits.max_element_bytes, keep)
    walker.dataset(0, len(body), 0, False, implicit)
    return CheckedDataset(syntax, walker.kept)


def inflate_bounded(data: memoryview | bytes, limit: int) -> bytes:
    """Inflate raw deflate data (PS3.5 A.5) producing at most ``limit`` bytes; raise DatasetRefused."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    pending = bytes(data)
    try:
        while pending:
            out += inflater.decompress(pending, INFLATE_STEP)
            if len(out) > limit:
                raise DatasetRefused(DEFLATE_BOMB, f"deflated dataset inflates beyond {limit} bytes")
            pending = inflater.unconsumed_tail
            if inflater.eof:
                break
        out += inflater.flush()
    except zlib.error as exc:
        raise DatasetRefused(CANNOT_UNDERSTAND, f"deflated dataset does not inflate: {exc}") from None
    if len(out) > limit:
        raise DatasetRefused(DEFLATE_BOMB, f"deflated dataset inflates beyond {limit} bytes")
    return bytes(out)


def _read_meta(data: memoryview) -> tuple[int, str]:
    """Offset of the dataset and the Transfer Syntax UID from the File Meta (explicit VR LE, PS3.10 7.1)."""
    if len(data) < 144 or bytes(data[128:132]) != b"DICM":
        raise DatasetRefused(CANNOT_UNDERSTAND, "no File Meta Information")
    pos, syntax = 132, ""
    while pos + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            break
        vr = bytes(data[pos + 4 : pos + 6])
        if vr in _LONG_VRS:
            length = struct.unpack_from("<L", data, pos + 8)[0]
            pos += 12
        else:
            length = struct.unpack_from("<H", data, pos + 6)[0]
            pos += 8
        if pos + length > len(data):
            raise DatasetRefused(CANNOT_UNDERSTAND, "File Meta Information is truncated")
        if element == 0x0010:
            syntax = bytes(data[pos : pos + length]).decode("ascii", "replace").rstrip("\x00 ")
        pos += length
    return pos, syntax


class _Walker:
    """Reads element headers only (PS3.5 7.1-7.5); raises DatasetRefused on the first problem."""

    def __init__(self, data: memoryview, little: bool, max_element: int, keep: frozenset[int] = frozenset()) -> None:
        self.data = data
        self.max_element = max_element
        self.order = "<" if little else ">"
        self.keep = keep
        self.kept: dict[int, bytes] = {}

    def _bad(self, pos: int, why: str) -> DatasetRefused:
        return DatasetRefused(CANNOT_UNDERSTAND, f"malformed dataset at byte {pos}: {why}")

    def _tag_and_length(self, pos: int, end: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
        """(tag, VR or None, value length, offset of the value) of the element at ``pos``."""
        if pos + 8 > end:
            raise self._bad(pos, "element header runs past the end")
        group, element = struct.unpack_from(self.order + "HH", self.data, pos)
        tag = group << 16 | element
        if group == 0xFFFE or implicit:  # item delimitation tags never carry a VR (PS3.5 7.5)
            return tag, None, struct.unpack_from(self.order + "L", self.data, pos + 4)[0], pos + 8
        vr = bytes(self.data[pos + 4 : pos + 6])
        if vr not in _VRS:
            raise self._bad(pos, f"({group:04X},{element:04X}) has an unknown VR {vr!r}")
        if vr in _LONG_VRS:
            if pos + 12 > end:
                raise self._bad(pos, "element header runs past the end")
            return tag, vr, struct.unpack_from(self.order + "L", self.data, pos + 8)[0], pos + 12
        return tag, vr, struct.unpack_from(self.order + "H", self.data, pos + 6)[0], pos + 8

    def dataset(self, pos: int, end: int, depth: int, until_item_end: bool, implicit: bool) -> int:
        """Walk a dataset (or an item's) from ``pos``; return the offset after it."""
        if depth > MAX_DEPTH:
            raise self._bad(pos, f"sequences nested deeper than {MAX_DEPTH}")
        previous = -1
        while pos < end:
            tag, vr, length, value = self._tag_and_length(pos, end, implicit)
            if tag == _ITEM_END and until_item_end:
                return value
            if tag >> 16 == 0xFFFE:
                raise self._bad(pos, f"unexpected delimiter ({tag >> 16:04X},{tag & 0xFFFF:04X})")
            if tag <= previous:
                raise self._bad(pos, f"tag ({tag >> 16:04X},{tag & 0xFFFF:04X}) is not in ascending order")
            previous = tag
            is_sequence = vr == b"SQ" or (vr is None and self._dictionary_vr(tag) == "SQ")
            if length == _UNDEFINED:
                if tag == _PIXEL_DATA and vr in (b"OB", b"OW", None):
                    pos = self._fragments(value, end)
                elif vr in (b"SQ", b"UN") or vr is None:  # UN of undefined length: implicit VR LE SQ
                    pos = self._items(value, end, depth, True, implicit or vr == b"UN")
                else:
                    raise self._bad(pos, f"undefined length is not allowed for VR {vr!r}")
                continue
            if length > self.max_element:
                raise DatasetRefused(
                    ELEMENT_TOO_LONG,
                    f"({tag >> 16:04X},{tag & 0xFFFF:04X}) declares {length} bytes, above the limit of {self.max_element}",
                )
            if value + length > end:
                raise self._bad(pos, f"({tag >> 16:04X},{tag & 0xFFFF:04X}) declares {length} bytes past the end")
            if is_sequence and length:
                self._items(value, value + length, depth, False, implicit)
            elif depth == 0 and tag in self.keep:
                self.kept[tag] = bytes(self.data[value : value + length])
            pos = value + length
        if until_item_end:
            raise self._bad(pos, "item without its delimitation item")
        return pos

    def _items(self, pos: int, end: int, depth: int, undefined: bool, implicit: bool) -> int:
        while pos < end:
            tag, _, length, value = self._tag_and_length(pos, end, True)
            if tag == _SEQUENCE_END and undefined:
                return value
            if tag != _ITEM:
                raise self._bad(pos, "a sequence holds something other than an item")
            if length == _UNDEFINED:
                pos = self.dataset(value, end, depth + 1, True, implicit)
            else:
                if value + length > end:
                    raise self._bad(pos, f"item declares {length} bytes past the end")
                self.dataset(value, value + length, depth + 1, False, implicit)
                pos = value + length
        if undefined:
            raise self._bad(pos, "sequence without its delimitation item")
        return pos

    def _fragments(self, pos: int, end: int) -> int:
        """Encapsulated pixel data (PS3.5 A.4): items of defined length, then a sequence delimiter."""
        while pos < end:
            tag, _, length, value = self._tag_and_length(pos, end, True)
            if tag == _SEQUENCE_END:
                return value
            if tag != _ITEM or length == _UNDEFINED:
                raise self._bad(pos, "encapsulated pixel data holds something other than fragments")
            if length > self.max_element or value + length > end:
                raise self._bad(pos, f"pixel data fragment declares {length} bytes past the end or limit")
            pos = value + length
        raise self._bad(pos, "encapsulated pixel data without its sequence delimiter")

    @staticmethod
    def _dictionary_vr(tag: int) -> str | None:
        try:
            return str(dictionary_VR(tag))
        except KeyError:
            return None
