"""node/dicom_header.py: the identity the receiver takes from the structure check's single pass
(node/limits.py) is the one pydicom reads, in every uncompressed transfer syntax."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from node.dicom_header import IDENTITY_TAGS, identity_from_checked, read_identity
from node.limits import DatasetLimits, check_dataset
from storage.uids import InvalidUID
from tests.support.series import image_dataset


def _encoded(ds: Dataset, syntax: str) -> bytes:
    ds.file_meta.TransferSyntaxUID = syntax
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian,
               little_endian=syntax != ExplicitVRBigEndian)
    return buffer.getvalue()


def _instance(modality: str = "MR") -> Dataset:
    ds = image_dataset(sop_class=CTImageStorage, study_uid=generate_uid(), series_uid=generate_uid()[:63],
                       frame_of_reference_uid=generate_uid(), modality=modality, description="HEADER",
                       instance_number=1)
    ds.ReferencedSeriesSequence = [Dataset()]
    ds.ReferencedSeriesSequence[0].SeriesInstanceUID = generate_uid()  # nested: must not be taken
    return ds


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian,
                                    DeflatedExplicitVRLittleEndian])
def test_the_single_pass_identity_equals_pydicoms(syntax: str) -> None:
    data = _encoded(_instance(), syntax)

    identity = identity_from_checked(check_dataset(data, DatasetLimits(), IDENTITY_TAGS))

    assert identity == read_identity(data)
    assert identity.transfer_syntax_uid == syntax
    assert identity.modality == "MR"


def test_only_top_level_values_are_kept() -> None:
    ds = _instance()
    nested = ds.ReferencedSeriesSequence[0].SeriesInstanceUID
    checked = check_dataset(_encoded(ds, ExplicitVRLittleEndian), DatasetLimits(), IDENTITY_TAGS)
    assert checked.values[0x0020000E].rstrip(b"\x00") == ds.SeriesInstanceUID.encode()
    assert checked.values[0x0020000E].rstrip(b"\x00") != nested.encode()
    assert set(checked.values) == IDENTITY_TAGS


def test_nothing_is_kept_unless_asked() -> None:
    assert check_dataset(_encoded(_instance(), ExplicitVRLittleEndian), DatasetLimits()).values == {}


def test_a_uid_that_is_only_nested_counts_as_missing() -> None:
    ds = _instance()
    del ds.SeriesInstanceUID
    checked = check_dataset(_encoded(ds, ExplicitVRLittleEndian), DatasetLimits(), IDENTITY_TAGS)
    with pytest.raises(InvalidUID, match="SeriesInstanceUID is missing"):
        identity_from_checked(checked)


def test_a_malformed_uid_is_refused_by_name() -> None:
    ds = _instance()
    ds.StudyInstanceUID = "1.2.3/../../etc"
    checked = check_dataset(_encoded(ds, ExplicitVRLittleEndian), DatasetLimits(), IDENTITY_TAGS)
    with pytest.raises(InvalidUID, match="StudyInstanceUID"):
        identity_from_checked(checked)


def test_an_empty_modality_is_an_empty_string() -> None:
    ds = _instance()
    ds.Modality = ""
    data = _encoded(ds, ImplicitVRLittleEndian)
    assert identity_from_checked(check_dataset(data, DatasetLimits(), IDENTITY_TAGS)).modality == ""
