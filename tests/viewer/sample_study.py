"""The study that tests/viewer opens in OHIF: the MNI152 T1 head as an axial MR series plus the brain
SEG that radnode itself makes of it.

The MR series comes from ``pipelines.nifti_series`` and the SEG from the built-in ``brain-extraction``
pipeline (deepbet + ``pipelines.writers.seg``), so the test checks what radnode really sends to a PACS.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pipelines.base import RuntimeOptions, SourceSeries
from pipelines.nifti_series import write_nifti_as_series
from pipelines.registry import create_pipeline
from pipelines.settings import BrainExtractionSettings

SAMPLES = Path(__file__).resolve().parents[2] / ".samples"
T1_NIFTI = SAMPLES / "MNI152_T1.nii.gz"
MASK_NIFTI = SAMPLES / "MNI152_mask.nii.gz"


@dataclass(frozen=True)
class Study:
    """Files of one study on disk: the source MR series and the SEG that references it."""

    study_instance_uid: str
    source_files: tuple[Path, ...]
    seg_file: Path
    source: str  # how the SEG was made, for the test's report

    @property
    def all_files(self) -> tuple[Path, ...]:
        return (*self.source_files, self.seg_file)


def _seg_from_pipeline(source_files: list[Path]) -> tuple[Dataset, str]:
    series_uid = str(dcmread(source_files[0], stop_before_pixels=True).SeriesInstanceUID)
    pipeline = create_pipeline(
        "brain-extraction", BrainExtractionSettings(write_sr=False, write_overlay=False), RuntimeOptions()
    )
    pipeline.load()
    result = pipeline.run(SourceSeries(series_uid, tuple(source_files)))
    segs = [ds for ds in result.datasets if getattr(ds, "Modality", "") == "SEG"]
    if len(segs) != 1:
        raise AssertionError(f"brain-extraction returned {len(segs)} SEG datasets, expected 1")
    algorithm = f"{pipeline.algorithm_name} {pipeline.algorithm_version}"
    return segs[0], f"SEG from the brain-extraction pipeline ({algorithm})"


def build_study(out_dir: Path) -> Study:
    """Write the MR series and its brain SEG under ``out_dir``."""
    for path in (T1_NIFTI, MASK_NIFTI):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run scripts/bootstrap.sh (it fetches the samples)")
    study_uid = generate_uid()
    source_files = write_nifti_as_series(
        T1_NIFTI,
        out_dir / "mr",
        patient_name="MNI152^Head",
        patient_id="MNI152",
        study_uid=study_uid,
        series_description="T1 MNI152",
    )
    seg, how = _seg_from_pipeline(source_files)
    seg_file = out_dir / "seg.dcm"
    seg.save_as(seg_file, enforce_file_format=True)
    return Study(study_uid, tuple(source_files), seg_file, f"MR from pipelines.nifti_series; {how}")
