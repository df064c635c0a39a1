"""Every writer's output passes dciodvfy without errors, and the SR/SC carry what viewers need."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.sr.codedict import codes

from pipelines.nifti_series import write_dicom_series
from pipelines.volume import Volume, load_series
from pipelines.writers.overlay import write_overlay
from pipelines.writers.seg import write_seg
from pipelines.writers.sr import ClassFinding, SegmentVolume, write_sr
from tests.dicom_validation import assert_dataset_dciodvfy_clean
from tests.pipelines.conftest import SEGMENTS, identity_for, random_labels
from tests.pipelines.synthetic import oblique_cosines


@pytest.fixture
def mr_volume(tmp_path: Path) -> Volume:
    """A complete (dciodvfy-clean) oblique MR series of 30 x 21 x 5 voxels (0.9 x 1.2 x 3 mm)."""
    row, col = oblique_cosines(15.0)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = 0.9 * row, 1.2 * col, 3.0 * np.cross(row, col)
    affine[:3, 3] = [10.0, -20.0, 5.0]
    array = np.random.default_rng(0).integers(0, 1000, size=(30, 21, 5)).astype(np.int16)
    paths = write_dicom_series(array, affine, tmp_path / "mr", patient_name="Valid^Mr", patient_id="V1")
    return load_series(paths)


@pytest.mark.parametrize("seg_format", ["auto", "binary", "fractional", "labelmap"])
def test_seg_passes_dciodvfy(mr_volume: Volume, tmp_path: Path, seg_format: str) -> None:
    seg = write_seg(mr_volume, random_labels(mr_volume.array.shape), SEGMENTS, identity_for(mr_volume), seg_format=seg_format)
    assert_dataset_dciodvfy_clean(seg, tmp_path / "out")


def test_volume_sr_passes_dciodvfy_and_references_the_seg_segments(mr_volume: Volume, tmp_path: Path) -> None:
    labels = random_labels(mr_volume.array.shape)
    identity = identity_for(mr_volume)
    seg = write_seg(mr_volume, labels, SEGMENTS, identity)
    volumes = [
        SegmentVolume(n, spec, float(np.count_nonzero(labels == spec.label)) * mr_volume.voxel_volume_ml)
        for n, spec in enumerate(SEGMENTS, start=1)
    ]
    sr = write_sr(mr_volume.datasets, identity, seg=seg, volumes=volumes)
    assert_dataset_dciodvfy_clean(sr, tmp_path / "out")
    assert sr.StudyInstanceUID == seg.StudyInstanceUID and sr.SeriesDescription.startswith("AI:")
    groups = [
        item for item in sr.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == "126010"  # Imaging Measurements
    ][0].ContentSequence
    assert len(groups) == 2
    for number, group in enumerate(groups, start=1):
        image_items = [i for i in group.ContentSequence if i.ValueType == "IMAGE"]
        reference = image_items[0].ReferencedSOPSequence[0]
        assert reference.ReferencedSOPInstanceUID == seg.SOPInstanceUID
        assert reference.ReferencedSegmentNumber == number
        numeric = [i for i in group.ContentSequence if i.ValueType == "NUM"][0]
        assert numeric.ConceptNameCodeSequence[0].CodeValue == codes.SCT.Volume.value
        value = numeric.MeasuredValueSequence[0]
        assert value.MeasurementUnitsCodeSequence[0].CodeValue == "mL"
        assert float(value.NumericValue) == pytest.approx(volumes[number - 1].volume_ml, rel=1e-6)


def test_classification_sr_passes_dciodvfy_with_class_and_probability(mr_volume: Volume, tmp_path: Path) -> None:
    sr = write_sr(
        mr_volume.datasets,
        identity_for(mr_volume),
        findings=[ClassFinding("Haemorrhage", 0.83), ClassFinding("No finding", 0.17)],
    )
    assert_dataset_dciodvfy_clean(sr, tmp_path / "out")
    text = str(sr)
    assert "Haemorrhage" in text and "0.83" in text


def test_overlay_images_pass_dciodvfy_one_per_slice_with_mask(mr_volume: Volume, tmp_path: Path) -> None:
    labels = np.zeros(mr_volume.array.shape, dtype=np.uint8)
    labels[5:20, 4:15, 1:4] = 1
    images = write_overlay(mr_volume, labels, [1], identity_for(mr_volume))
    assert len(images) == 3
    source = mr_volume.frames[1].dataset
    assert images[0].SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert images[0].StudyInstanceUID == source.StudyInstanceUID
    assert images[0].SeriesDescription.startswith("AI:") and "AI-generated" in images[0].ImageComments
    assert images[0].pixel_array.shape == (21, 30, 3)
    for number, image in enumerate(images):
        assert_dataset_dciodvfy_clean(image, tmp_path / "out", f"sc{number}.dcm")


def test_overlay_images_each_carry_their_own_slice_and_leave_the_others_untouched(mr_volume: Volume) -> None:
    labels = np.zeros(mr_volume.array.shape, dtype=np.uint8)
    labels[5:20, 4:15, 1:4] = 1
    labels[5:8, 4:6, 2] = 0  # a different mask on the middle slice: different pixels
    images = write_overlay(mr_volume, labels, [1], identity_for(mr_volume))
    sources = [mr_volume.frames[k].dataset.SOPInstanceUID for k in (1, 2, 3)]
    assert [image.SourceImageSequence[0].ReferencedSOPInstanceUID for image in images] == sources
    assert [image.InstanceNumber for image in images] == [1, 2, 3]
    assert len({image.SOPInstanceUID for image in images}) == 3
    assert [image.file_meta.MediaStorageSOPInstanceUID for image in images] == [i.SOPInstanceUID for i in images]
    assert all(source in image.ImageComments for source, image in zip(sources, images, strict=True))
    assert not np.array_equal(images[0].pixel_array, images[1].pixel_array)
    assert {image.SeriesInstanceUID for image in images} == {images[0].SeriesInstanceUID}


def test_overlay_draws_the_outline_in_colour_and_leaves_pixels_outside_grey(mr_volume: Volume) -> None:
    labels = np.zeros(mr_volume.array.shape, dtype=np.uint8)
    labels[5:20, 4:15, 2] = 1
    rgb = write_overlay(mr_volume, labels, [1], identity_for(mr_volume))[0].pixel_array
    assert tuple(rgb[4, 5]) == (255, 215, 0)  # (row 4, column 5) is on the outline
    outside = rgb[18:, 22:]
    assert np.all(outside[..., 0] == outside[..., 1]) and np.all(outside[..., 1] == outside[..., 2])
