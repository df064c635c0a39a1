"""Reading the few attributes the receiver needs from an encoded dataset, without pixel data.

Two ways to the same :class:`InstanceIdentity`: :func:`identity_from_checked` takes the raw values
the receiver's structure check (node/limits.py) collected on its single pass over a C-STORE
dataset; :func:`read_identity` parses a file with pydicom (start-up recovery of spool files)."""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO

from pydicom import dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.errors import InvalidDicomError

from node.limits import CheckedDataset
from storage.index import ReceivedInstance
from storage.uids import validate_uid

_NEEDED = [
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "Modality",
]


_TAGS = {keyword: int(tag_for_keyword(keyword) or 0) for keyword in _NEEDED}
IDENTITY_TAGS = frozenset(_TAGS.values())  # what identity_from_checked needs check_dataset to keep


class UnreadableDataset(ValueError):
    """The bytes are not a DICOM dataset pydicom can parse."""


@dataclass(frozen=True)
class InstanceIdentity:
    """Validated UIDs of one instance plus its modality (PS3.3 C.7.3.1, C.12.1)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str
    transfer_syntax_uid: str

    def received(self, relative_path: str, size_bytes: int, calling_ae_title: str, calling_host: str,
                 received_at: float) -> ReceivedInstance:
        """The index record of this instance, stored at ``relative_path`` (relative to data_dir)."""
        return ReceivedInstance(
            study_instance_uid=self.study_instance_uid,
            series_instance_uid=self.series_instance_uid,
            sop_instance_uid=self.sop_instance_uid,
            sop_class_uid=self.sop_class_uid,
            transfer_syntax_uid=self.transfer_syntax_uid,
            modality=self.modality,
            relative_path=relative_path,
            size_bytes=size_bytes,
            calling_ae_title=calling_ae_title,
            calling_host=calling_host,
            received_at=received_at,
        )


def read_identity(encoded_file: bytes) -> InstanceIdentity:
    """Parse UIDs from a DICOM file's bytes (preamble + File Meta + dataset); pixel data is skipped.

    Raises UnreadableDataset when the bytes do not parse, storage.uids.InvalidUID when a UID is
    missing or malformed.
    """
    try:
        dataset = dcmread(BytesIO(encoded_file), stop_before_pixels=True, specific_tags=_NEEDED)
        values = {keyword: dataset.get(keyword) for keyword in _NEEDED}
        transfer_syntax = str(dataset.file_meta.get("TransferSyntaxUID", ""))
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OverflowError, OSError) as exc:
        raise UnreadableDataset(f"{type(exc).__name__}: {exc}") from None
    except Exception as exc:  # pydicom raises many kinds on corrupt input; all mean "unreadable"
        raise UnreadableDataset(f"{type(exc).__name__}: {exc}") from None
    return InstanceIdentity(
        study_instance_uid=validate_uid(values["StudyInstanceUID"], "StudyInstanceUID"),
        series_instance_uid=validate_uid(values["SeriesInstanceUID"], "SeriesInstanceUID"),
        sop_instance_uid=validate_uid(values["SOPInstanceUID"], "SOPInstanceUID"),
        sop_class_uid=validate_uid(values["SOPClassUID"], "SOPClassUID"),
        modality=str(values["Modality"] or "").strip(),
        transfer_syntax_uid=transfer_syntax,
    )


def identity_from_checked(checked: CheckedDataset) -> InstanceIdentity:
    """The identity from the raw top-level values of :data:`IDENTITY_TAGS` (node/limits.py).

    UI and CS values are ASCII in every character set (PS3.5 6.1.2.3, 6.2); UIDs may be padded
    with NUL, CS values with spaces. Raises storage.uids.InvalidUID when a UID is missing or malformed.
    """

    def text(keyword: str) -> str | None:
        raw = checked.values.get(_TAGS[keyword])
        return None if raw is None else raw.decode("ascii", "replace")

    return InstanceIdentity(
        study_instance_uid=validate_uid(text("StudyInstanceUID"), "StudyInstanceUID"),
        series_instance_uid=validate_uid(text("SeriesInstanceUID"), "SeriesInstanceUID"),
        sop_instance_uid=validate_uid(text("SOPInstanceUID"), "SOPInstanceUID"),
        sop_class_uid=validate_uid(text("SOPClassUID"), "SOPClassUID"),
        modality=(text("Modality") or "").strip("\x00 "),
        transfer_syntax_uid=checked.transfer_syntax_uid,
    )
