"""Synthetic labeled phantoms for training tests: small noisy volumes, each with one bright
ellipsoid of random size, position and orientation, saved as NIfTI image + label pairs."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

#: Voxel size of the phantoms in mm (anisotropic on purpose) and their RAS affine.
SPACING_MM = (1.2, 1.2, 1.5)


def phantom_affine(spacing: tuple[float, float, float] = SPACING_MM) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-20.0, -25.0, 10.0]
    return affine


def ellipsoid_phantom(rng: np.random.Generator, shape: tuple[int, int, int] = (32, 32, 32)) -> tuple[np.ndarray, np.ndarray]:
    """(image float32, label uint8): an ellipsoid (semi-axes 4-9 voxels, random rotation) of
    intensity ~300 in Gaussian noise (sd 40) on a background of ~100 with a smooth bias field."""
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"), axis=-1)
    semi_axes = rng.uniform(4.0, 9.0, size=3)
    margin = semi_axes.max() + 1
    centre = np.array([rng.uniform(margin, s - 1 - margin) for s in shape])
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    local = (grid - centre) @ q
    label = (np.sum((local / semi_axes) ** 2, axis=-1) <= 1.0).astype(np.uint8)
    bias = 1.0 + 0.2 * np.sin(grid[..., 0] / shape[0] * np.pi + rng.uniform(0, np.pi))
    image = (100.0 + 200.0 * label * rng.uniform(0.8, 1.2)) * bias + rng.normal(0, 40, size=shape)
    return image.astype(np.float32), label


def write_phantom_set(folder: Path, count: int, seed: int = 0, shape: tuple[int, int, int] = (32, 32, 32)
                      ) -> tuple[Path, Path]:
    """Write ``count`` phantoms as ``images/case_NNN.nii.gz`` and ``labels/case_NNN.nii.gz``."""
    images, labels = folder / "images", folder / "labels"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        image, label = ellipsoid_phantom(rng, shape)
        nib.save(nib.Nifti1Image(image, phantom_affine()), str(images / f"case_{index:03d}.nii.gz"))
        nib.save(nib.Nifti1Image(label, phantom_affine()), str(labels / f"case_{index:03d}.nii.gz"))
    return images, labels
