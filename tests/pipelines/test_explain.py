"""Grad-CAM for a small classification bundle trained here on synthetic volumes whose class is
decided by one bright blob: the map must be higher in the blob than outside it, it goes out as a
FRACTIONAL SEG, and ``explain = "gradcam"`` makes every run of the bundle return that SEG."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from pydantic import ValidationError

from pipelines.base import PipelineResult, RuntimeOptions, SourceSeries
from pipelines.bundle import BundleError, BundlePipeline
from pipelines.evaluation import EvaluationError, LabeledCase, evaluate_case
from pipelines.explain import Explanation, explain_bundle, write_heatmap_seg
from pipelines.nifti_series import read_mask_on_grid, write_nifti_as_series
from pipelines.registry import create_pipeline
from pipelines.settings import BundleSettings
from pipelines.volume import Volume, load_series
from tests.dicom_validation import assert_dataset_dciodvfy_clean
from tests.pipelines.bundle_builder import blob_volume, build_classification_bundle, build_segmentation_bundle


@dataclass
class Explained:
    pipeline: BundlePipeline
    series: SourceSeries
    result: PipelineResult
    volume: Volume
    explanation: Explanation
    blob: np.ndarray  # the discriminative blob on the volume grid
    tmp_path: Path


@pytest.fixture(scope="module")
def explained(blob_classifier_bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    """A positive case written as a DICOM series, classified by kind bundle (the session's blob
    classifier, tests/pipelines/trained_bundles.py) and explained."""
    tmp_path = tmp_path_factory.mktemp("explain")
    image, mask = blob_volume(np.random.default_rng(123), with_blob=True)
    affine = np.diag([1.1, 1.1, 1.6, 1.0])
    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / "image.nii.gz"))
    nib.save(nib.Nifti1Image(mask, affine), str(tmp_path / "blob.nii.gz"))
    paths = write_nifti_as_series(tmp_path / "image.nii.gz", tmp_path / "series", patient_name="Blob^One",
                                  patient_id="BLOB1")
    pipeline = create_pipeline("blob", BundleSettings(path=blob_classifier_bundle),
                               RuntimeOptions(device="cpu", torch_threads=2))
    series = SourceSeries(pydicom.dcmread(paths[0]).SeriesInstanceUID, tuple(paths))
    result = pipeline.run(series)
    volume = load_series(paths)
    explanation = explain_bundle(pipeline, volume)
    blob = read_mask_on_grid(tmp_path / "blob.nii.gz", volume.affine, volume.array.shape)
    return Explained(pipeline, series, result, volume, explanation, blob, tmp_path)


def _heatmap_of(seg, volume: Volume) -> np.ndarray:
    """A FRACTIONAL SEG's segment 1 read back onto the volume grid (column, row, slice), in [0, 1]."""
    read = hd.seg.Segmentation.from_dataset(seg, copy=True)
    uids = [f.dataset.SOPInstanceUID for f in volume.frames]
    values = read.get_pixels_by_source_instance(uids, segment_numbers=[1], assert_missing_frames_are_empty=True,
                                                rescale_fractional=True)
    return values[..., 0].transpose(2, 1, 0)


@pytest.mark.slow
def test_gradcam_is_higher_in_the_blob_and_goes_out_as_a_valid_fractional_seg(explained: Explained) -> None:
    pipeline, result, volume, explanation, blob, tmp_path = (explained.pipeline, explained.result, explained.volume,
                                                             explained.explanation, explained.blob, explained.tmp_path)
    assert result.measurements["probability_blob"] > 0.5, result.measurements
    assert explanation.class_name == "blob" and explanation.heatmap.shape == volume.array.shape
    inside, outside = explanation.heatmap[blob].mean(), explanation.heatmap[~blob].mean()
    print(f"Grad-CAM mean inside the blob {inside:.2f}, outside {outside:.2f}")
    assert inside > 1.5 * outside

    identity = pipeline.identity(volume.frames[0].dataset.SeriesInstanceUID)
    seg = write_heatmap_seg(volume, explanation.heatmap, explanation.class_name, identity)
    assert seg.SegmentationType == "FRACTIONAL" and seg.SeriesDescription.startswith("AI:")
    assert_dataset_dciodvfy_clean(seg, tmp_path, "gradcam.dcm")
    assert np.abs(_heatmap_of(seg, volume) - explanation.heatmap).max() <= 1.0 / 255 + 1e-6


@pytest.mark.slow
def test_gradcam_peak_lies_inside_the_blob(explained: Explained) -> None:
    heat, blob, volume = explained.explanation.heatmap, explained.blob, explained.volume
    peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
    offset_mm = np.linalg.norm(volume.affine[:3, :3] @ (np.asarray(peak) - np.argwhere(blob).mean(axis=0)))
    print(f"Grad-CAM peak {offset_mm:.1f} mm from the blob centre")
    assert blob[peak]


@pytest.mark.slow
def test_explain_gradcam_makes_each_run_return_the_gradcam_seg_beside_the_sr(explained: Explained) -> None:
    pipeline = create_pipeline("blob", BundleSettings(path=explained.pipeline.files.root, explain="gradcam"),
                               RuntimeOptions(device="cpu", torch_threads=2))
    result = pipeline.run(explained.series)
    assert [ds.Modality for ds in result.datasets] == ["SEG", "SR"]
    seg = result.datasets[0]
    identity = pipeline.identity(explained.series.series_instance_uid)
    assert (seg.SOPInstanceUID, seg.SeriesInstanceUID) == (identity.uid("gradcam", 0), identity.series_uid("gradcam"))
    assert seg.SegmentationType == "FRACTIONAL" and seg.SegmentSequence[0].SegmentLabel == "Grad-CAM blob"
    assert result.measurements == pytest.approx(explained.result.measurements)
    assert np.abs(_heatmap_of(seg, explained.volume) - explained.explanation.heatmap).max() <= 1.0 / 255 + 1e-6


def test_explain_gradcam_on_a_segmentation_bundle_is_refused_when_the_pipeline_is_built(tmp_path: Path) -> None:
    root = build_segmentation_bundle(tmp_path / "segmenter", weights="state_dict")
    with pytest.raises(BundleError, match="needs a classification bundle"):
        create_pipeline("seg", BundleSettings(path=root, explain="gradcam"), RuntimeOptions())


def test_explain_gradcam_on_a_torchscript_only_bundle_is_refused_naming_model_pt(tmp_path: Path) -> None:
    root = build_classification_bundle(tmp_path / "classifier")
    with pytest.raises(BundleError, match=r"models/model\.pt \(a state dict for network_def\)"):
        create_pipeline("cls", BundleSettings(path=root, explain="gradcam"), RuntimeOptions())


@pytest.mark.slow
def test_explain_layer_that_the_network_lacks_fails_at_load_naming_it(explained: Explained) -> None:
    pipeline = create_pipeline("blob", BundleSettings(path=explained.pipeline.files.root, explain="gradcam",
                                                      explain_layer="features.conv9"), RuntimeOptions())
    with pytest.raises(BundleError, match="explain_layer 'features.conv9' is not a module"):
        pipeline.load()


@pytest.mark.slow
def test_evaluation_never_scores_a_gradcam_map_as_a_segmentation(explained: Explained) -> None:
    pipeline = create_pipeline("blob", BundleSettings(path=explained.pipeline.files.root, explain="gradcam"),
                               RuntimeOptions(device="cpu", torch_threads=2))
    case = LabeledCase("blob", explained.tmp_path / "image.nii.gz", explained.tmp_path / "blob.nii.gz")
    with pytest.raises(EvaluationError, match="produced no SEG"):
        evaluate_case(pipeline, case, explained.tmp_path / "evaluation")


def test_explain_accepts_only_none_or_gradcam(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="explain"):
        BundleSettings(path=tmp_path, explain="shap")
