"""Synthetic single-frame series with hand-built geometry (fake patient), for geometry tests.

Geometry here is written from first principles (PS3.3 C.7.6.2.1.1), independently of
``pipelines.volume``, so that a test compares two separate derivations.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage, generate_uid

from tests.support.series import image_dataset


def oblique_cosines(degrees: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """Row and column direction cosines of an axial plane rotated about x then z."""
    a = np.deg2rad(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(a / 2), -np.sin(a / 2), 0], [np.sin(a / 2), np.cos(a / 2), 0], [0, 0, 1]])
    rotation = rz @ rx
    return rotation[:, 0], rotation[:, 1]


@dataclass
class SyntheticSeries:
    """Stored values (i = column, j = row, k = slice) and the geometry they were written with."""

    stored: np.ndarray  # int16, (columns, rows, slices)
    row_cosine: np.ndarray
    col_cosine: np.ndarray
    column_spacing: float  # mm between columns (PixelSpacing[1])
    row_spacing: float  # mm between rows (PixelSpacing[0])
    slice_spacing: float  # mm along the normal
    origin: np.ndarray
    slope: float = 1.0
    intercept: float = 0.0
    study_uid: str = field(default_factory=generate_uid)
    series_uid: str = field(default_factory=generate_uid)
    frame_of_reference_uid: str = field(default_factory=generate_uid)

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_cosine, self.col_cosine)

    def position(self, k: int) -> np.ndarray:
        return self.origin + k * self.slice_spacing * self.normal

    @property
    def expected_affine(self) -> np.ndarray:
        affine = np.eye(4)
        affine[:3, 0] = self.row_cosine * self.column_spacing
        affine[:3, 1] = self.col_cosine * self.row_spacing
        affine[:3, 2] = self.normal * self.slice_spacing
        affine[:3, 3] = self.origin
        return affine

    def dataset(self, k: int, instance_number: int) -> Dataset:
        ds = image_dataset(
            sop_class=MRImageStorage, study_uid=self.study_uid, series_uid=self.series_uid,
            frame_of_reference_uid=self.frame_of_reference_uid, modality="MR", description="synthetic geometry",
            instance_number=instance_number, patient_name="Synthetic^Geometry", patient_id="SYN-0001",
            series_number=3,
        )
        ds.PatientBirthDate = ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in self.position(k)]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*self.row_cosine, *self.col_cosine)]
        ds.PixelSpacing = [self.row_spacing, self.column_spacing]
        ds.SliceThickness = self.slice_spacing
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = self.stored.shape[1]
        ds.Columns = self.stored.shape[0]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope = self.slope
        ds.RescaleIntercept = self.intercept
        ds.PixelData = np.ascontiguousarray(self.stored[:, :, k].T).astype(np.int16).tobytes()
        return ds

    def write(self, folder: Path, *, seed: int = 0, slices: list[int] | None = None) -> list[Path]:
        """Write the slices (default all) as files named in a shuffled order, with shuffled Instance
        Numbers, so neither file order nor Instance Number follows the geometry."""
        folder.mkdir(parents=True, exist_ok=True)
        chosen = list(range(self.stored.shape[2])) if slices is None else slices
        shuffled = chosen[:]
        random.Random(seed).shuffle(shuffled)
        paths = []
        for name, k in enumerate(shuffled):
            path = folder / f"{name:04d}.dcm"
            self.dataset(k, instance_number=len(shuffled) - name).save_as(path, enforce_file_format=True)
            paths.append(path)
        return paths


def make_series(
    columns: int = 24, rows: int = 20, slices: int = 7, *, oblique: bool = True, seed: int = 0
) -> SyntheticSeries:
    """A small anisotropic (0.8 x 1.1 x 2.5 mm) series with random values, oblique by default."""
    rng = np.random.default_rng(seed)
    stored = rng.integers(-1000, 3000, size=(columns, rows, slices), dtype=np.int16)
    row_cosine, col_cosine = oblique_cosines() if oblique else (np.array([1.0, 0, 0]), np.array([0, 1.0, 0]))
    return SyntheticSeries(
        stored=stored,
        row_cosine=row_cosine,
        col_cosine=col_cosine,
        column_spacing=0.8,
        row_spacing=1.1,
        slice_spacing=2.5,
        origin=np.array([-12.5, 30.25, -40.0]),
    )
