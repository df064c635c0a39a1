"""NIfTI -> DICOM MR series keeps the LPS geometry; a NIfTI mask reads back onto the DICOM grid."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom

from pipelines.nifti_series import RAS_TO_LPS, read_mask_on_grid, write_nifti_as_series
from pipelines.volume import load_series
from tests.dicom_validation import assert_dciodvfy_clean


def _oblique_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A 12 x 10 x 8 RAS volume with an oblique, anisotropic affine (voxel -> RAS mm)."""
    a = np.deg2rad(12.0)
    rotation = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-0.9, 1.3, 2.0])  # i towards the patient's left (LAS-like)
    affine[:3, 3] = [40.0, -60.0, -10.0]
    data = np.random.default_rng(0).integers(0, 500, size=(12, 10, 8)).astype(np.int16)
    nib.save(nib.Nifti1Image(data, affine), path)
    return data, affine


def _world(affine: np.ndarray, index: np.ndarray) -> np.ndarray:
    return (affine @ np.append(index, 1.0))[:3]


def test_every_nifti_voxel_lands_at_the_same_patient_position_in_the_dicom_volume(tmp_path: Path) -> None:
    data, affine_ras = _oblique_nifti(tmp_path / "t1.nii.gz")
    paths = write_nifti_as_series(tmp_path / "t1.nii.gz", tmp_path / "dicom", patient_name="N^I", patient_id="N1")
    volume = load_series(paths)
    to_volume = np.linalg.inv(volume.affine) @ RAS_TO_LPS @ affine_ras
    for index in [(0, 0, 0), (11, 9, 7), (3, 7, 2), (6, 0, 5)]:
        target = np.rint((to_volume @ np.append(index, 1.0))[:3]).astype(int)
        np.testing.assert_allclose(_world(volume.affine, target), _world(RAS_TO_LPS @ affine_ras, np.array(index)), atol=1e-3)
        assert volume.array[tuple(target)] == data[index]


def test_written_series_is_one_dciodvfy_clean_mr_file_per_slice_in_the_given_study(tmp_path: Path) -> None:
    _oblique_nifti(tmp_path / "t1.nii.gz")
    paths = write_nifti_as_series(
        tmp_path / "t1.nii.gz", tmp_path / "dicom", patient_name="N^I", patient_id="N1", study_uid="1.2.3.4"
    )
    assert len(paths) == 8
    ds = pydicom.dcmread(paths[0])
    assert (ds.Modality, ds.StudyInstanceUID, ds.PatientID) == ("MR", "1.2.3.4", "N1")
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert_dciodvfy_clean(paths[0])


def test_a_mask_from_the_same_nifti_grid_reads_back_voxel_for_voxel(tmp_path: Path) -> None:
    data, affine_ras = _oblique_nifti(tmp_path / "t1.nii.gz")
    mask = (data > 250).astype(np.uint8)
    nib.save(nib.Nifti1Image(mask, affine_ras), tmp_path / "mask.nii.gz")
    paths = write_nifti_as_series(tmp_path / "t1.nii.gz", tmp_path / "dicom", patient_name="N^I", patient_id="N1")
    volume = load_series(paths)
    on_grid = read_mask_on_grid(tmp_path / "mask.nii.gz", volume.affine, volume.array.shape)
    np.testing.assert_array_equal(on_grid, volume.array > 250)
