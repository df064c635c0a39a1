"""Synthetic DICOM series with fresh UIDs, small enough for fast tests (fake patient data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    PYDICOM_IMPLEMENTATION_UID,
    generate_uid,
)


def image_dataset(
    *,
    sop_class: str,
    study_uid: str,
    series_uid: str,
    frame_of_reference_uid: str,
    modality: str,
    description: str,
    instance_number: int,
    patient_name: str = "Testpatient^Alpha",
    patient_id: str = "PID-TEST-0001",
    series_number: int = 1,
) -> Dataset:
    """File Meta plus the patient, study, series and instance attributes of one synthetic image
    (fresh SOP Instance UID); the caller adds geometry and pixels."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.Modality = modality
    ds.SeriesDescription = description
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    return ds


def write_series(
    folder: Path,
    count: int,
    *,
    modality: str = "CT",
    description: str = "TEST SERIES",
    study_uid: str | None = None,
    series_uid: str | None = None,
    size: int = 64,
    patient_name: str = "Testpatient^Alpha",
    patient_id: str = "PID-TEST-0001",
    seed: int = 0,
) -> list[Path]:
    """Write ``count`` axial slices of one series (1 mm pixels, 2 mm apart) and return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_of_reference = generate_uid()
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    paths = []
    for index in range(count):
        ds = image_dataset(
            sop_class=sop_class, study_uid=study_uid, series_uid=series_uid,
            frame_of_reference_uid=frame_of_reference, modality=modality, description=description,
            instance_number=index + 1, patient_name=patient_name, patient_id=patient_id,
        )
        ds.ImagePositionPatient = [-32.0, -32.0, 2.0 * index]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [1.0, 1.0]
        ds.SliceThickness = 2.0
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = size
        ds.Columns = size
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.PixelData = rng.integers(0, 4000, size=(size, size), dtype=np.uint16).tobytes()
        path = folder / f"{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset of a DICOM file without preamble and File Meta Information (PS3.10 7.1).

    A receiver writes its own File Meta, so "stored exactly as received" compares these bytes."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM", f"{path} is not a DICOM Part 10 file"
    group_length = int.from_bytes(data[140:144], "little")  # (0002,0000) UL, explicit VR LE
    return data[144 + group_length:]
