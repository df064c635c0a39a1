"""SEG writer: every mask voxel lands on the source pixel it came from; format choice; identity."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from pipelines.volume import Volume, build_volume
from pipelines.writers.seg import LABELMAP_SOP_CLASS_UID, write_seg
from tests.pipelines.conftest import SEGMENTS, identity_for, random_labels


def _read_back(seg, tmp_path: Path) -> hd.seg.Segmentation:
    path = tmp_path / "seg.dcm"
    seg.save_as(path)
    return hd.seg.segread(path)


def _assert_each_frame_on_its_source(volume: Volume, labels: np.ndarray, seg: hd.seg.Segmentation) -> None:
    for k, frame in enumerate(volume.frames):
        pixels = seg.get_pixels_by_source_instance(
            [frame.dataset.SOPInstanceUID], segment_numbers=[1, 2], assert_missing_frames_are_empty=True
        )[0]
        for number, spec in enumerate(SEGMENTS):
            expected = labels[:, :, k].T == spec.label  # (row, column) of source image k
            np.testing.assert_array_equal(pixels[..., number] > 0, expected, err_msg=f"slice {k}, {spec.name}")


@pytest.mark.parametrize("seg_format", ["binary", "fractional"])
def test_seg_read_back_puts_every_mask_voxel_on_its_source_pixel_of_an_oblique_grid(
    oblique_volume: Volume, tmp_path: Path, seg_format: str
) -> None:
    labels = random_labels(oblique_volume.array.shape)
    seg = write_seg(oblique_volume, labels, SEGMENTS, identity_for(oblique_volume), seg_format=seg_format)
    read = _read_back(seg, tmp_path)
    assert read.SegmentationType == seg_format.upper()
    _assert_each_frame_on_its_source(oblique_volume, labels, read)


def test_labelmap_seg_uses_the_label_map_sop_class_and_keeps_every_label_in_place(
    oblique_volume: Volume, tmp_path: Path
) -> None:
    labels = random_labels(oblique_volume.array.shape)
    seg = write_seg(oblique_volume, labels, SEGMENTS, identity_for(oblique_volume), seg_format="labelmap")
    assert seg.SOPClassUID == LABELMAP_SOP_CLASS_UID
    _assert_each_frame_on_its_source(oblique_volume, labels, _read_back(seg, tmp_path))


def test_auto_format_is_binary_for_byte_aligned_frames(oblique_volume: Volume) -> None:
    labels = random_labels(oblique_volume.array.shape)
    seg = write_seg(oblique_volume, labels, SEGMENTS, identity_for(oblique_volume))
    assert seg.SegmentationType == "BINARY"


def test_auto_format_is_fractional_when_rows_times_columns_is_not_a_multiple_of_8(
    unaligned_volume: Volume, tmp_path: Path
) -> None:
    labels = random_labels(unaligned_volume.array.shape)
    seg = write_seg(unaligned_volume, labels, SEGMENTS, identity_for(unaligned_volume))
    assert seg.SegmentationType == "FRACTIONAL" and seg.BitsAllocated == 8
    _assert_each_frame_on_its_source(unaligned_volume, labels, _read_back(seg, tmp_path))


def test_seg_of_an_enhanced_multiframe_source_maps_each_slice_to_its_source_frame(tmp_path: Path) -> None:
    volume = build_volume([pydicom.dcmread(get_testdata_file("eCT_Supplemental.dcm"))])
    labels = np.zeros(volume.array.shape, dtype=np.uint8)
    labels[100:200, 50:60, 0] = 1  # slice 0 is source frame 2
    labels[10:20, 300:400, 1] = 2  # slice 1 is source frame 1
    seg = _read_back(write_seg(volume, labels, SEGMENTS, identity_for(volume), seg_format="binary"), tmp_path)
    uid = volume.frames[0].dataset.SOPInstanceUID
    for k, frame in enumerate(volume.frames):
        pixels = seg.get_pixels_by_source_frame(
            uid, [frame.frame_number], segment_numbers=[1, 2], assert_missing_frames_are_empty=True
        )[0]
        np.testing.assert_array_equal(pixels[..., 0] > 0, labels[:, :, k].T == 1)
        np.testing.assert_array_equal(pixels[..., 1] > 0, labels[:, :, k].T == 2)


def test_seg_is_a_new_ai_series_in_the_source_study_referencing_the_source_series(oblique_volume: Volume) -> None:
    source = oblique_volume.frames[0].dataset
    seg = write_seg(oblique_volume, random_labels(oblique_volume.array.shape), SEGMENTS, identity_for(oblique_volume))
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert (seg.PatientID, str(seg.PatientName)) == (source.PatientID, str(source.PatientName))
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert seg.Manufacturer == "radnode" and seg.SoftwareVersions
    assert seg.SeriesDescription.startswith("AI:")
    assert "AI-generated" in seg.ContentDescription
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("TestNet", "2.1")


def test_result_uids_are_the_same_when_the_same_algorithm_runs_again(oblique_volume: Volume) -> None:
    labels = random_labels(oblique_volume.array.shape)
    first = write_seg(oblique_volume, labels, SEGMENTS, identity_for(oblique_volume))
    again = write_seg(oblique_volume, labels, SEGMENTS, identity_for(oblique_volume))
    assert (first.SeriesInstanceUID, first.SOPInstanceUID) == (again.SeriesInstanceUID, again.SOPInstanceUID)
    other = identity_for(oblique_volume)
    newer = write_seg(oblique_volume, labels, SEGMENTS, type(other)(other.source_series_uid, other.pipeline_name, other.algorithm_name, "2.2"))
    assert newer.SOPInstanceUID != first.SOPInstanceUID
