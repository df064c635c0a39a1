"""Series -> volume: geometry, slice order, rescale, decoding and refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless, RLELossless

from pipelines.base import PipelineRefusal
from pipelines.volume import build_volume, load_series, read_datasets
from tests.pipelines.synthetic import make_series


def test_oblique_anisotropic_series_in_shuffled_file_order_comes_back_with_its_affine_and_values(tmp_path: Path) -> None:
    series = make_series()
    paths = series.write(tmp_path)
    volume = load_series(paths)
    np.testing.assert_allclose(volume.affine, series.expected_affine, atol=1e-4)
    np.testing.assert_array_equal(volume.array, series.stored.astype(np.float32))
    assert volume.spacing_mm == pytest.approx((0.8, 1.1, 2.5), abs=1e-5)


def test_slices_are_ordered_along_the_normal_even_when_instance_numbers_run_backwards(tmp_path: Path) -> None:
    series = make_series(oblique=False)
    volume = load_series(series.write(tmp_path, seed=3))
    positions = [float(np.dot(f.position, series.normal)) for f in volume.frames]
    assert positions == sorted(positions)
    np.testing.assert_allclose(volume.frames[0].position, series.origin, atol=1e-5)


def test_rescale_slope_and_intercept_give_real_world_values(tmp_path: Path) -> None:
    series = make_series()
    series.slope, series.intercept = 0.5, -1024.0
    volume = load_series(series.write(tmp_path))
    np.testing.assert_allclose(volume.array, series.stored * 0.5 - 1024.0)


def test_localizer_and_derived_secondary_images_are_left_out_of_the_volume(tmp_path: Path) -> None:
    series = make_series(slices=4)
    datasets = read_datasets(series.write(tmp_path))
    localizer = series.dataset(0, instance_number=99)
    localizer.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    localizer.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    secondary = series.dataset(1, instance_number=98)
    secondary.ImageType = ["DERIVED", "SECONDARY", "MPR"]
    volume = build_volume([localizer, *datasets, secondary])
    assert volume.array.shape == (24, 20, 4)


def test_a_gap_in_the_slices_is_refused_naming_the_step_and_the_spacing(tmp_path: Path) -> None:
    series = make_series(slices=6)
    paths = series.write(tmp_path, slices=[0, 1, 2, 4, 5])
    with pytest.raises(PipelineRefusal, match=r"gap between slices 2 and 3: step 5\.000 mm .* spacing is 2\.500 mm"):
        load_series(paths)


def test_mixed_orientations_are_refused(tmp_path: Path) -> None:
    series = make_series(slices=4, oblique=False)
    datasets = read_datasets(series.write(tmp_path))
    datasets[2].ImageOrientationPatient = [1, 0, 0, 0, 0.9950042, 0.0998334]
    with pytest.raises(PipelineRefusal, match="mixed image orientations"):
        build_volume(datasets)


def test_mixed_image_sizes_are_refused(tmp_path: Path) -> None:
    series = make_series(slices=4)
    datasets = read_datasets(series.write(tmp_path))
    small = make_series(columns=16, rows=20, slices=4)
    odd = small.dataset(1, instance_number=2)
    odd.ImagePositionPatient = datasets[0].ImagePositionPatient
    odd.ImageOrientationPatient = datasets[0].ImageOrientationPatient
    datasets[0] = odd
    with pytest.raises(PipelineRefusal, match=r"mixed image sizes in the series: .*20x24.*20x16|mixed image sizes in the series: .*20x16.*20x24"):
        build_volume(datasets)


def test_a_single_slice_is_refused(tmp_path: Path) -> None:
    series = make_series(slices=3)
    with pytest.raises(PipelineRefusal, match="single slice"):
        load_series(series.write(tmp_path, slices=[1]))


def test_missing_geometry_is_refused(tmp_path: Path) -> None:
    series = make_series(slices=3)
    datasets = read_datasets(series.write(tmp_path))
    del datasets[1].ImagePositionPatient
    with pytest.raises(PipelineRefusal, match="has no ImagePositionPatient"):
        build_volume(datasets)


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, RLELossless], ids=["jpeg2000", "rle"])
def test_a_compressed_series_decodes_to_the_same_volume(tmp_path: Path, syntax: str) -> None:
    series = make_series(columns=64, rows=48, slices=4)  # JPEG 2000 needs tiles larger than 2^5
    paths = series.write(tmp_path / "raw")
    compressed = []
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.compress(syntax)
        out = tmp_path / "compressed" / path.name
        out.parent.mkdir(exist_ok=True)
        ds.save_as(out)
        compressed.append(out)
    assert pydicom.dcmread(compressed[0]).file_meta.TransferSyntaxUID == syntax
    reference, decoded = load_series(paths), load_series(compressed)
    np.testing.assert_array_equal(decoded.array, reference.array)
    np.testing.assert_allclose(decoded.affine, reference.affine)


def test_an_enhanced_multiframe_ct_builds_a_volume_from_its_functional_groups() -> None:
    path = get_testdata_file("eCT_Supplemental.dcm")
    assert path is not None, "pydicom-data is not installed (run scripts/bootstrap.sh)"
    ds = pydicom.dcmread(path)
    volume = build_volume([ds])
    assert volume.array.shape == (512, 512, 2)
    assert volume.is_multiframe
    # Shared groups: orientation [-1,0,0, 0,1,0], 0.388672 mm pixels; per-frame z -159 then -149;
    # normal = (-1,0,0) x (0,1,0) = (0,0,-1), so slice order along the normal is z = -149 first.
    expected = np.array(
        [
            [-0.388672, 0, 0, 99.5],
            [0, 0.388672, 0, -301.5],
            [0, 0, -10.0, -149.0],
            [0, 0, 0, 1],
        ]
    )
    np.testing.assert_allclose(volume.affine, expected, atol=1e-5)
    assert [f.frame_number for f in volume.frames] == [2, 1]
    raw = ds.pixel_array.astype(np.float32) - 1024.0  # Pixel Value Transformation: intercept -1024
    np.testing.assert_array_equal(volume.array[:, :, 0], raw[1].T)
