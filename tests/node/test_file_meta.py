"""The receiver's File Meta Information encoder (node/file_meta.py) writes what pynetdicom writes."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.dsutils import encode_file_meta as pynetdicom_encode_file_meta

from node.file_meta import encode_file, encode_file_meta

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"  # even length
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
IMPLICIT_LE = "1.2.840.10008.1.2"  # odd length: padded with NUL
JPEG_2000 = "1.2.840.10008.1.2.4.90"


def _as_pynetdicom_writes_it(sop_class: str, sop_instance: str, syntax: str) -> bytes:
    """The elements pynetdicom 3.0's Event.file_meta sets, encoded by pynetdicom."""
    meta = FileMetaDataset()
    meta.FileMetaInformationGroupLength = 0
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = PYNETDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = PYNETDICOM_IMPLEMENTATION_VERSION
    return pynetdicom_encode_file_meta(meta)


@pytest.mark.parametrize(("sop_class", "sop_instance", "syntax"), [
    (CT_IMAGE, "1.2.3.4", IMPLICIT_LE),
    (MR_IMAGE, "1.2.826.0.1.3680043.8.498.12345678901234567890123456789012345678901", JPEG_2000),
    (CT_IMAGE, "1.2.3", "1.2.840.10008.1.2.1"),
])
def test_file_meta_is_byte_identical_to_pynetdicoms(sop_class: str, sop_instance: str, syntax: str) -> None:
    assert encode_file_meta(sop_class, sop_instance, syntax) == _as_pynetdicom_writes_it(sop_class, sop_instance, syntax)


def test_request_uid_padding_is_not_doubled() -> None:
    """A UID as decoded from a request may keep its NUL pad; the file must not get a second one."""
    assert encode_file_meta(CT_IMAGE, "1.2.3\x00", IMPLICIT_LE) == encode_file_meta(CT_IMAGE, "1.2.3", IMPLICIT_LE)


def test_encoded_file_reads_back_with_the_dataset_untouched() -> None:
    dataset = b"\x08\x00\x18\x00\x08\x00\x00\x001.2.3.4\x00"  # (0008,0018) SOPInstanceUID, implicit VR LE
    encoded = encode_file(CT_IMAGE, "1.2.3.4", IMPLICIT_LE, memoryview(dataset))
    assert encoded.endswith(dataset)
    read = dcmread(BytesIO(encoded))
    assert read.file_meta.TransferSyntaxUID == IMPLICIT_LE
    assert read.file_meta.MediaStorageSOPClassUID == CT_IMAGE
    assert read.SOPInstanceUID == "1.2.3.4"
