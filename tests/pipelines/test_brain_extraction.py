"""brain-extraction end to end on the real MNI152 T1 head written as a DICOM MR series."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from pipelines.base import PipelineRefusal, PipelineResult, RuntimeOptions, SourceSeries
from pipelines.nifti_series import read_mask_on_grid, write_nifti_as_series
from pipelines.registry import create_pipeline
from pipelines.settings import BrainExtractionSettings
from pipelines.volume import Volume, load_series
from pipelines.writers.sr import CERTAINTY_OF_FINDING
from tests.dicom_validation import assert_dataset_dciodvfy_clean
from tests.support.series import write_series

pytestmark = pytest.mark.slow


@dataclass
class Run:
    pipeline: object
    series: SourceSeries
    volume: Volume
    result: PipelineResult
    reference: np.ndarray  # shipped mask on the volume grid


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, mni152_paths) -> Run:
    """One model run per module: MNI152 -> DICOM MR series -> brain-extraction."""
    folder = tmp_path_factory.mktemp("mni152")
    paths = write_nifti_as_series(mni152_paths.t1, folder, patient_name="MNI^152", patient_id="MNI152")
    series = SourceSeries(pydicom.dcmread(paths[0]).SeriesInstanceUID, tuple(paths))
    pipeline = create_pipeline("brain-extraction", BrainExtractionSettings(), RuntimeOptions(device="cpu", torch_threads=2))
    pipeline.load()
    result = pipeline.run(series)
    volume = load_series(paths)
    reference = read_mask_on_grid(mni152_paths.mask, volume.affine, volume.array.shape)
    return Run(pipeline, series, volume, result, reference)


def _seg(run: Run) -> hd.seg.Segmentation:
    seg = run.result.datasets[0]
    assert seg.Modality == "SEG"
    return hd.seg.Segmentation.from_dataset(seg, copy=True)


def _seg_mask(run: Run) -> np.ndarray:
    """The SEG read back onto the volume grid (column, row, slice) through source instance UIDs."""
    uids = [f.dataset.SOPInstanceUID for f in run.volume.frames]
    pixels = _seg(run).get_pixels_by_source_instance(uids, segment_numbers=[1], assert_missing_frames_are_empty=True)
    return (pixels[..., 0] > 0).transpose(2, 1, 0)


def _content_items(item):
    """Every SR content item below ``item``, depth first."""
    for child in item.get("ContentSequence", []):
        yield child
        yield from _content_items(child)


def test_brain_mask_matches_the_shipped_mni152_mask_with_dice_of_at_least_0_90(run: Run) -> None:
    mask = _seg_mask(run)
    dice = 2 * np.count_nonzero(mask & run.reference) / (np.count_nonzero(mask) + np.count_nonzero(run.reference))
    assert dice >= 0.90, f"Dice {dice:.3f}"


def test_sr_brain_volume_equals_the_seg_voxel_volume_within_1_percent(run: Run) -> None:
    sr = next(ds for ds in run.result.datasets if ds.Modality == "SR")
    numbers = [item for item in _content_items(sr) if item.get("ValueType") == "NUM"
               and item.ConceptNameCodeSequence[0].CodeMeaning == "Volume"]
    assert len(numbers) == 1
    reported = float(numbers[0].MeasuredValueSequence[0].NumericValue)
    seg_volume = np.count_nonzero(_seg_mask(run)) * run.volume.voxel_volume_ml
    assert reported == pytest.approx(seg_volume, rel=0.01)
    assert run.result.measurements["brain_volume_ml"] == pytest.approx(seg_volume, rel=0.01)


def test_sr_reports_the_mean_brain_probability_inside_the_mask_as_certainty_of_finding(run: Run) -> None:
    sr = hd.sr.Comprehensive3DSR.from_dataset(next(ds for ds in run.result.datasets if ds.Modality == "SR"), copy=True)
    certainty = sr.content.get_volumetric_roi_measurement_groups()[0].get_measurements(name=CERTAINTY_OF_FINDING)
    assert len(certainty) == 1 and certainty[0].unit.value == "%"
    print(f"brain confidence {certainty[0].value:.2f} %")
    assert 50.0 < certainty[0].value <= 100.0
    assert run.result.measurements["brain_confidence"] == pytest.approx(certainty[0].value / 100, abs=1e-6)


def test_outputs_are_a_fractional_seg_an_sr_and_overlay_images_for_218_by_182_frames(run: Run) -> None:
    modalities = [ds.Modality for ds in run.result.datasets]
    assert modalities[:2] == ["SEG", "SR"] and set(modalities[2:]) == {"OT"} and len(modalities) > 100
    assert run.result.datasets[0].SegmentationType == "FRACTIONAL"  # 218 * 182 is not a multiple of 8
    assert set(run.result.timings_s) >= {"read", "volume", "inference", "write"}


def test_every_output_is_in_the_source_study_says_it_is_ai_and_passes_dciodvfy(run: Run, tmp_path: Path) -> None:
    source = run.volume.frames[0].dataset
    series_uids = set()
    outputs = run.result.datasets[:2] + run.result.datasets[2::40]
    for number, ds in enumerate(outputs):
        assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == source.PatientID
        assert ds.SeriesDescription.startswith("AI:") and ds.Manufacturer == "radnode"
        series_uids.add(ds.SeriesInstanceUID)
        assert_dataset_dciodvfy_clean(ds, tmp_path, f"{number}.dcm")
    assert len(series_uids) == 3 and source.SeriesInstanceUID not in series_uids


def test_a_ct_series_is_refused(run: Run, tmp_path: Path) -> None:
    paths = write_series(tmp_path, 3, modality="CT")
    with pytest.raises(PipelineRefusal, match="needs an MR series, got modality CT"):
        run.pipeline.run(SourceSeries(pydicom.dcmread(paths[0]).SeriesInstanceUID, tuple(paths)))
