"""NIfTI <-> DICOM grid helpers: write a NIfTI volume as an MR series, read a NIfTI mask on a
DICOM volume's grid.

NIfTI affines map to RAS+ mm (+x towards the patient's Right, +y Anterior, +z Superior); DICOM
uses LPS+ (+x Left, +y Posterior, +z Superior; PS3.3 C.7.6.2.1.1), so
``affine_lps = diag(-1, -1, 1, 1) @ affine_ras``. Voxel indices follow
:mod:`pipelines.volume`: ``(i, j, k)`` = (column, row, slice).
"""

from __future__ import annotations

import datetime
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _to_lps_display_order(image: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    """Reorder voxels so that i -> patient Left, j -> Posterior, k -> Superior as closely as the
    axes allow (standard radiological display for axial slices); returns (array, LPS affine)."""
    data = np.asanyarray(image.dataobj)
    if data.ndim == 4:
        data = data[..., 0]
    current = nib.io_orientation(image.affine)  # axes in RAS terms
    target = nib.orientations.axcodes2ornt(("L", "P", "S"))
    transform = nib.orientations.ornt_transform(current, target)
    array = nib.orientations.apply_orientation(data, transform)
    affine_ras = image.affine @ nib.orientations.inv_ornt_aff(transform, data.shape)
    return np.asarray(array), RAS_TO_LPS @ affine_ras


def _stored_values(array: np.ndarray) -> tuple[np.ndarray, float, float, int]:
    """Integer pixel values plus (slope, intercept, pixel representation) for ``array``."""
    finite = np.nan_to_num(array.astype(np.float64))
    low, high = float(finite.min()), float(finite.max())
    if np.all(np.equal(np.mod(finite, 1), 0)):
        if low >= 0 and high <= 65535:
            return finite.astype(np.uint16), 1.0, 0.0, 0
        if low >= -32768 and high <= 32767:
            return finite.astype(np.int16), 1.0, 0.0, 1
    slope = (high - low) / 65535.0 if high > low else 1.0
    stored = np.round((finite - low) / slope).astype(np.uint16)
    return stored, slope, low, 0


def write_dicom_series(
    array: np.ndarray,
    affine_lps: np.ndarray,
    folder: Path,
    *,
    patient_name: str,
    patient_id: str,
    study_uid: str | None = None,
    series_description: str = "NIfTI import",
    series_number: int = 1,
    modality: str = "MR",
) -> list[Path]:
    """Write ``array`` (i, j, k) with voxel->LPS mm ``affine_lps`` as one MR Image Storage file per
    slice (uncompressed Explicit VR Little Endian), fresh series/instance UIDs. Returns the paths.

    Image Orientation (Patient) is the normalised affine columns 0 (row direction) and 1 (column
    direction), Pixel Spacing is [|col 1|, |col 0|] (row spacing, column spacing; PS3.3
    C.7.6.2.1.1) and Image Position (Patient) of slice k is ``affine_lps @ (0, 0, k, 1)``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    stored, slope, intercept, representation = _stored_values(array)
    col_step, row_step, slice_step = (np.linalg.norm(affine_lps[:3, n]) for n in range(3))
    row_cosine = affine_lps[:3, 0] / col_step
    col_cosine = affine_lps[:3, 1] / row_step
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    frame_of_reference = generate_uid()
    now = datetime.datetime.now()
    paths = []
    for k in range(stored.shape[2]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_of_reference
        ds.PositionReferenceIndicator = ""
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.StudyDate = now.strftime("%Y%m%d")
        ds.StudyTime = now.strftime("%H%M%S")
        ds.SeriesDate = ds.StudyDate
        ds.SeriesTime = ds.StudyTime
        ds.ContentDate = ds.StudyDate
        ds.ContentTime = ds.StudyTime
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.StudyID = "1"
        ds.Manufacturer = "radnode"
        ds.Modality = modality
        ds.SeriesDescription = series_description[:64]
        ds.SeriesNumber = series_number
        ds.InstanceNumber = k + 1
        ds.BodyPartExamined = "HEAD"
        ds.ScanningSequence = "GR"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.EchoTrainLength = 1
        ds.RepetitionTime = "0"
        ds.EchoTime = "0"
        ds.PatientPosition = "HFS"
        ds.SliceThickness = f"{slice_step:.6g}"
        ds.SpacingBetweenSlices = f"{slice_step:.6g}"
        ds.ImagePositionPatient = [f"{v:.6f}" for v in (affine_lps @ np.array([0.0, 0.0, k, 1.0]))[:3]]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row_cosine, *col_cosine)]
        ds.PixelSpacing = [f"{row_step:.8g}", f"{col_step:.8g}"]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = stored.shape[1]
        ds.Columns = stored.shape[0]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = representation
        ds.RescaleIntercept = f"{intercept:.8g}"
        ds.RescaleSlope = f"{slope:.8g}"
        ds.RescaleType = "US"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        path = folder / f"{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_nifti_as_series(nifti_path: Path, folder: Path, **kwargs) -> list[Path]:
    """Write a NIfTI file as a DICOM MR series (see :func:`write_dicom_series` for ``kwargs``).

    Voxels are first reordered to i -> L, j -> P, k -> S (an exact permutation/flip, no
    interpolation), so the slices display as standard axial images.
    """
    array, affine_lps = _to_lps_display_order(nib.load(str(nifti_path)))
    return write_dicom_series(array, affine_lps, folder, **kwargs)


def read_mask_on_grid(nifti_path: Path, affine_lps: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """A NIfTI mask (> 0.5 = inside) sampled by nearest neighbour at the voxel centres of a grid of
    ``shape`` with voxel->LPS ``affine_lps`` (e.g. ``Volume.affine``); outside the NIfTI is False.

    When the grid was written from the same NIfTI this is an exact permutation of its voxels.
    """
    image = nib.load(str(nifti_path))
    data = np.asanyarray(image.dataobj)
    if data.ndim == 4:
        data = data[..., 0]
    inside = data > 0.5
    # grid voxel -> LPS -> RAS -> NIfTI voxel
    grid_to_nifti = np.linalg.inv(image.affine) @ np.linalg.inv(RAS_TO_LPS) @ affine_lps
    out = np.zeros(shape, dtype=bool)
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    for k in range(shape[2]):
        points = np.stack([i, j, np.full_like(i, k), np.ones_like(i)], axis=0).reshape(4, -1)
        index = np.rint(grid_to_nifti @ points)[:3].astype(np.int64)
        valid = np.all((index >= 0) & (index < np.array(inside.shape)[:, None]), axis=0)
        values = np.zeros(index.shape[1], dtype=bool)
        values[valid] = inside[index[0, valid], index[1, valid], index[2, valid]]
        out[:, :, k] = values.reshape(shape[0], shape[1])
    return out
