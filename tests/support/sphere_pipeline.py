"""A small real pipeline for whole-node fault tests: the sphere-segmentation MONAI bundle built by
tests/pipelines/bundle_builder.py (a hand-set 3x3x3 convolution, real MONAI pre/post-processing and
SEG/SR/SC writers), routed for MR, and sphere phantom studies to feed it.

A job on one phantom takes about a second (plus a few seconds of model loading after each start),
and its delivery carries a SEG, an SR and one Secondary Capture per slice that shows the sphere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.nifti_series import write_dicom_series
from tests.pipelines.bundle_builder import build_segmentation_bundle

PIPELINE = "sphere"


def sphere_pipeline_tables(bundle: Path, send_to: list[str], *, rerun_on_late: bool = True) -> str:
    """``[pipelines.sphere]`` (kind bundle) and a route sending every MR series to it."""
    targets = ", ".join(f'"{target}"' for target in send_to)
    return f"""
[pipelines.{PIPELINE}]
kind = "bundle"
path = "{bundle.as_posix()}"

[[pipelines.{PIPELINE}.segments]]
label = 1
name = "Sphere"
type = {{ value = "4147007", meaning = "Mass" }}

[[routes]]
name = "mr-sphere"
pipeline = "{PIPELINE}"
when = {{ Modality = "MR" }}
send_to = [{targets}]
rerun_on_late = {"true" if rerun_on_late else "false"}
"""


def build_sphere_bundle(folder: Path) -> Path:
    """The TorchScript sphere-segmentation bundle folder (see tests/pipelines/bundle_builder.py)."""
    return build_segmentation_bundle(folder)


def write_sphere_study(folder: Path, *, slices: int = 60, size: int = 64, seed: int = 0,
                       patient_id: str = "SPHERE-FAULTS") -> list[Path]:
    """One MR study of one axial series: ``size`` x ``size`` pixels of 1 mm, ``slices`` slices 2 mm
    apart, a sphere of radius 10 mm (~300) in noise on ~100 (fake patient; fresh UIDs)."""
    rng = np.random.default_rng(seed)
    ijk = np.stack(np.meshgrid(np.arange(size), np.arange(size), np.arange(slices), indexing="ij"), axis=-1)
    mm = ijk * np.array([1.0, 1.0, 2.0])
    centre = np.array([size / 2, size / 2, slices])  # the middle slice, in mm
    sphere = np.linalg.norm(mm - centre, axis=-1) <= 10.0
    image = np.round(100.0 + 200.0 * sphere + rng.normal(0.0, 30.0, size=sphere.shape)).astype(np.int16)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    affine[:3, 3] = [-size / 2, -size / 2, -float(slices)]
    return write_dicom_series(image, affine, folder, patient_name="Phantom^Faults", patient_id=patient_id,
                              series_description=f"sphere phantom {seed}", modality="MR")
