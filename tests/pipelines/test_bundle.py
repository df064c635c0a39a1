"""Kind ``bundle`` end to end: real MONAI bundle folders built in tmp_path (hand-set tiny networks,
see tests/pipelines/bundle_builder.py) run on a sphere phantom written as an oblique DICOM series."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch

from pipelines.base import Pipeline, PipelineRefusal, PipelineResult, RuntimeOptions, SourceSeries
from pipelines.bundle import GENERIC_TISSUE, BundleError, channel_probabilities
from pipelines.registry import create_pipeline
from pipelines.settings import BundleSettings
from pipelines.volume import Volume, load_series
from pipelines.writers.sr import CERTAINTY_OF_FINDING
from tests.dicom_validation import assert_dataset_dciodvfy_clean
from tests.pipelines.bundle_builder import (SPHERE, build_classification_bundle, build_segmentation_bundle,
                                            write_phantom_series)



@dataclass
class Run:
    root: Path
    pipeline: Pipeline
    series: SourceSeries
    volume: Volume
    truth: np.ndarray
    result: PipelineResult


def _series(paths: list[Path]) -> SourceSeries:
    return SourceSeries(pydicom.dcmread(paths[0]).SeriesInstanceUID, tuple(paths))


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], np.ndarray]:
    return write_phantom_series(tmp_path_factory.mktemp("phantom"))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, phantom) -> Run:
    """One load and one run of the TorchScript segmentation bundle on the sphere phantom."""
    root = build_segmentation_bundle(tmp_path_factory.mktemp("bundles") / "sphere_segmentation")
    paths, truth = phantom
    pipeline = create_pipeline("my-bundle", BundleSettings(path=root, segments=[SPHERE]), RuntimeOptions())
    series = _series(paths)
    result = pipeline.run(series)
    return Run(root, pipeline, series, load_series(paths), truth, result)


def _only(result: PipelineResult, modality: str):
    found = [ds for ds in result.datasets if ds.Modality == modality]
    assert len(found) == 1, [ds.Modality for ds in result.datasets]
    return found[0]


def _seg_mask(seg, volume: Volume, segment_number: int = 1) -> np.ndarray:
    """A SEG segment read back with highdicom onto the volume grid (column, row, slice)."""
    seg = hd.seg.Segmentation.from_dataset(seg, copy=True)
    uids = [f.dataset.SOPInstanceUID for f in volume.frames]
    pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=[segment_number],
                                               assert_missing_frames_are_empty=True)
    return (pixels[..., 0] > 0).transpose(2, 1, 0)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def _content_items(item):
    for child in item.get("ContentSequence", []):
        yield child
        yield from _content_items(child)


def _sr_groups(sr) -> list[list]:
    """Content items of each measurement group (CONTAINER with a NUM child) of an SR."""
    return [list(_content_items(item)) for item in _content_items(sr)
            if item.ValueType == "CONTAINER" and any(c.ValueType == "NUM" for c in item.get("ContentSequence", []))]


def test_seg_marks_the_sphere_with_dice_of_at_least_0_9_against_the_phantom_truth(run: Run) -> None:
    mask = _seg_mask(_only(run.result, "SEG"), run.volume)
    assert _dice(mask, run.truth) >= 0.9, f"Dice {_dice(mask, run.truth):.3f}"


def test_seg_segment_carries_the_configured_codes_and_the_bundle_name_and_version(run: Run) -> None:
    segment = _only(run.result, "SEG").SegmentSequence[0]
    assert segment.SegmentLabel == "Sphere"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "4147007"
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("sphere_segmentation", "0.2.0")


def test_sr_volume_of_the_sphere_equals_the_seg_voxel_volume(run: Run) -> None:
    groups = _sr_groups(_only(run.result, "SR"))
    assert len(groups) == 1
    number = next(item for item in groups[0] if item.ValueType == "NUM")
    reported = float(number.MeasuredValueSequence[0].NumericValue)
    seg_ml = np.count_nonzero(_seg_mask(_only(run.result, "SEG"), run.volume)) * run.volume.voxel_volume_ml
    assert reported == pytest.approx(seg_ml, rel=1e-3)
    assert run.result.measurements["sphere_volume_ml"] == pytest.approx(seg_ml, rel=1e-3)


def test_sr_reports_the_mean_sphere_probability_as_certainty_of_finding_in_percent(run: Run) -> None:
    sr = hd.sr.Comprehensive3DSR.from_dataset(_only(run.result, "SR"), copy=True)
    groups = sr.content.get_volumetric_roi_measurement_groups()
    certainty = groups[0].get_measurements(name=CERTAINTY_OF_FINDING)
    assert len(groups) == 1 and len(certainty) == 1
    assert certainty[0].unit.value == "%" and certainty[0].derivation.value == "373098007"  # SCT Mean
    print(f"sphere confidence {certainty[0].value:.1f} %")
    assert 50.0 < certainty[0].value <= 100.0
    assert run.result.measurements["sphere_confidence"] == pytest.approx(certainty[0].value / 100, abs=1e-6)


def test_seg_sr_and_overlay_pass_dciodvfy_without_errors(run: Run, tmp_path: Path) -> None:
    overlay = [ds for ds in run.result.datasets if ds.Modality == "OT"]
    assert overlay, "write_overlay is on by default"
    for name, dataset in [("seg.dcm", _only(run.result, "SEG")), ("sr.dcm", _only(run.result, "SR")),
                          ("overlay.dcm", overlay[len(overlay) // 2])]:
        assert_dataset_dciodvfy_clean(dataset, tmp_path, name)


def test_second_run_reuses_the_loaded_model_and_writes_the_same_objects(run: Run) -> None:
    network = run.pipeline.network
    again = run.pipeline.run(run.series)
    assert run.pipeline.network is network
    assert "load" in run.result.timings_s and "load" not in again.timings_s
    assert [ds.SOPInstanceUID for ds in again.datasets] == [ds.SOPInstanceUID for ds in run.result.datasets]
    assert np.array_equal(_seg_mask(_only(again, "SEG"), run.volume), _seg_mask(_only(run.result, "SEG"), run.volume))


def test_running_a_bundle_writes_no_files_into_its_folder(run: Run) -> None:
    """The bundle's SaveImaged (model-zoo postprocessing) is dropped: results leave as DICOM only."""
    assert not (run.root / "eval").exists()


def test_state_dict_bundle_without_invertd_still_gives_the_sphere_on_the_source_grid(tmp_path: Path, phantom) -> None:
    root = build_segmentation_bundle(tmp_path / "bundle", weights="state_dict", invert=False)
    paths, truth = phantom
    pipeline = create_pipeline("pt-bundle", BundleSettings(path=root, segments=[SPHERE], write_overlay=False),
                               RuntimeOptions())
    result = pipeline.run(_series(paths))
    assert _dice(_seg_mask(_only(result, "SEG"), load_series(paths)), truth) >= 0.9


def test_label_without_configured_codes_keeps_its_channel_def_name_and_gets_the_generic_tissue_code(
    tmp_path: Path, phantom
) -> None:
    root = build_segmentation_bundle(tmp_path / "bundle", channel_def={"0": "background", "1": "sphere", "2": "cyst"})
    pipeline = create_pipeline("uncoded", BundleSettings(path=root, segments=[SPHERE], write_overlay=False),
                               RuntimeOptions())
    result = pipeline.run(_series(phantom[0]))
    segments = _only(result, "SEG").SegmentSequence
    assert [s.SegmentLabel for s in segments] == ["Sphere", "cyst"]
    assert segments[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == GENERIC_TISSUE.value
    assert result.measurements["cyst_volume_ml"] == 0.0


def test_series_of_a_modality_not_accepted_is_refused_naming_both_modalities(tmp_path: Path) -> None:
    root = build_segmentation_bundle(tmp_path / "bundle")
    paths, _ = write_phantom_series(tmp_path / "ct", modality="CT")
    pipeline = create_pipeline("mr-only", BundleSettings(path=root, accepts_modality=["MR"]), RuntimeOptions())
    with pytest.raises(PipelineRefusal, match="accepts modality MR; the series has CT"):
        pipeline.run(_series(paths))


def test_bundle_without_metadata_json_fails_naming_the_file(tmp_path: Path) -> None:
    root = build_segmentation_bundle(tmp_path / "bundle")
    (root / "configs" / "metadata.json").unlink()
    with pytest.raises(BundleError, match=r"configs/metadata\.json"):
        create_pipeline("broken", BundleSettings(path=root), RuntimeOptions())


def test_bundle_without_model_file_fails_naming_model_ts_and_model_pt(tmp_path: Path) -> None:
    root = build_segmentation_bundle(tmp_path / "bundle")
    shutil.rmtree(root / "models")
    with pytest.raises(BundleError, match=r"models/model\.ts.*models/model\.pt"):
        create_pipeline("broken", BundleSettings(path=root), RuntimeOptions())


def test_classification_bundle_gives_only_an_sr_with_the_class_probabilities(tmp_path: Path, phantom) -> None:
    root = build_classification_bundle(tmp_path / "classifier")
    pipeline = create_pipeline("sphere-classifier", BundleSettings(path=root), RuntimeOptions())
    result = pipeline.run(_series(phantom[0]))
    assert [ds.Modality for ds in result.datasets] == ["SR"]
    assert_dataset_dciodvfy_clean(result.datasets[0], tmp_path / "out", "sr.dcm")
    probabilities = {}
    for group in _sr_groups(result.datasets[0]):
        finding = next(item for item in group if item.ValueType == "CODE")
        number = next(item for item in group if item.ValueType == "NUM")
        probabilities[finding.ConceptCodeSequence[0].CodeMeaning] = float(number.MeasuredValueSequence[0].NumericValue)
    assert set(probabilities) == {"no sphere", "sphere"}
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-3)
    assert probabilities["sphere"] > 0.9
    assert result.measurements["probability_sphere"] == pytest.approx(probabilities["sphere"], abs=1e-6)


def test_classification_of_a_phantom_without_the_sphere_favours_no_sphere(tmp_path: Path) -> None:
    root = build_classification_bundle(tmp_path / "classifier")
    paths, _ = write_phantom_series(tmp_path / "empty", with_sphere=False)
    result = create_pipeline("sphere-classifier", BundleSettings(path=root), RuntimeOptions()).run(_series(paths))
    assert result.measurements["probability_no_sphere"] > 0.9


def test_channel_probabilities_keep_probabilities_and_turn_logits_into_softmax() -> None:
    probabilities = torch.tensor([0.2, 0.9]).reshape(2, 1, 1, 1).expand(2, 2, 2, 2)
    assert torch.equal(channel_probabilities(probabilities), probabilities)
    logits = torch.tensor([1.0, 3.0]).reshape(2, 1, 1, 1).expand(2, 2, 2, 2)
    assert torch.allclose(channel_probabilities(logits)[1], torch.sigmoid(torch.tensor(2.0)))


def test_channel_probabilities_are_none_for_integer_labels_and_one_hot_maps() -> None:
    labels = torch.tensor([0.0, 1.0, 2.0, 0.0]).reshape(1, 2, 2, 1)
    one_hot = torch.stack([labels == 0, labels == 1, labels == 2]).squeeze(1).float()
    assert channel_probabilities(labels) is None
    assert channel_probabilities(one_hot) is None
