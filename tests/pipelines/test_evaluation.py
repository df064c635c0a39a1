"""``radnode evaluate`` on the real MNI152 head and its shipped mask, on one phantom case in both
input layouts (NIfTI labels, and a DICOM series with a DICOM SEG ground truth), plus the pure
metric helpers.

Artifact for a person to look at: test-artifacts/evaluate/report.png (the HTML report as headless
Chromium renders it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from node.cli import main
from pipelines.base import RuntimeOptions, SourceSeries
from pipelines.evaluation import EvaluationError, dice, find_cases, hausdorff95_mm, summarise, CaseResult
from pipelines.nifti_series import read_mask_on_grid, write_nifti_as_series
from pipelines.registry import create_pipeline
from pipelines.seg_reader import seg_mask_on_volume
from pipelines.settings import BrainExtractionSettings
from pipelines.volume import load_series
from pipelines.writers.common import ResultIdentity
from pipelines.writers.seg import write_seg
from tests.pipelines.bundle_builder import SPHERE, build_segmentation_bundle, phantom_affine, sphere_phantom

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "evaluate"
CHROMIUM = Path("/usr/bin/chromium")


# ---------------------------------------------------------------------------------------- helpers


def test_dice_of_known_overlaps() -> None:
    a = np.zeros((10, 10, 10), bool)
    b = np.zeros((10, 10, 10), bool)
    a[:5] = True
    b[:5] = True
    assert dice(a, b) == 1.0
    b[:] = False
    b[3:8] = True  # 2 of 5 planes shared
    assert dice(a, b) == pytest.approx(2 * 200 / 1000)
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0


def test_hausdorff95_is_in_mm_along_each_axis() -> None:
    a = np.zeros((20, 20, 20), bool)
    a[5:15, 5:15, 5:15] = True
    shifted = np.roll(a, 2, axis=2)  # 2 voxels along k
    assert hausdorff95_mm(a, shifted, (1.0, 1.0, 3.0)) == pytest.approx(6.0)
    assert hausdorff95_mm(a, shifted, (1.0, 1.0, 1.0)) == pytest.approx(2.0)
    assert hausdorff95_mm(a, np.zeros_like(a), (1.0, 1.0, 1.0)) is None


def test_summary_skips_undefined_values() -> None:
    summary = summarise([CaseResult("a", dice=0.8, hd95_mm=None), CaseResult("b", dice=0.9, hd95_mm=2.0)])
    assert summary["dice"]["mean"] == pytest.approx(0.85) and summary["dice"]["n"] == 2
    assert summary["hd95_mm"]["n"] == 1 and summary["seconds"]["mean"] is None


def test_find_cases_names_unmatched_images(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    (tmp_path / "images" / "a.nii.gz").write_bytes(b"")
    (tmp_path / "images" / "b.nii").write_bytes(b"")
    (tmp_path / "labels" / "a.nii.gz").write_bytes(b"")
    with pytest.raises(EvaluationError, match="for: b.nii"):
        find_cases(tmp_path / "images", tmp_path / "labels")
    (tmp_path / "images" / "b.nii").unlink()
    assert [c.name for c in find_cases(tmp_path / "images", tmp_path / "labels")] == ["a"]


# ---------------------------------------------------------------------------------------- DICOM SEG labels


def test_dicom_series_with_a_dicom_seg_ground_truth_scores_the_same_dice_as_its_nifti_labels(tmp_path: Path) -> None:
    """One sphere phantom in both layouts of the same ``--images``/``--labels`` pair: ``nifti_case``
    (NIfTI image + NIfTI mask) and ``dicom_case`` (the DICOM series written from that NIfTI, with
    the mask as a DICOM SEG on it). The sphere bundle must score both the same."""
    images, labels, out = tmp_path / "images", tmp_path / "labels", tmp_path / "out"
    labels.mkdir()
    image, truth = sphere_phantom()
    affine_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ phantom_affine()
    images.mkdir()
    nib.save(nib.Nifti1Image(image, affine_ras), str(images / "nifti_case.nii.gz"))
    nib.save(nib.Nifti1Image(truth.astype(np.uint8), affine_ras), str(labels / "nifti_case.nii.gz"))
    paths = write_nifti_as_series(images / "nifti_case.nii.gz", images / "dicom_case", patient_name="Phantom^Gt",
                                  patient_id="PH-GT")
    volume = load_series(paths)
    mask = read_mask_on_grid(labels / "nifti_case.nii.gz", volume.affine, volume.array.shape)
    identity = ResultIdentity(volume.frames[0].dataset.SeriesInstanceUID, "ground-truth", "annotator", "1")
    write_seg(volume, mask.astype(np.uint8), [SPHERE], identity).save_as(labels / "dicom_case.dcm",
                                                                        enforce_file_format=True)
    bundle = build_segmentation_bundle(tmp_path / "sphere-bundle")
    config = tmp_path / "config.toml"
    config.write_text(f'[workers]\ndevice = "cpu"\ntorch_threads = 2\n\n[pipelines.sphere]\nkind = "bundle"\n'
                      f'path = "{bundle.as_posix()}"\nwrite_overlay = false\n')

    code = main(["evaluate", "--config", str(config), "--pipeline", "sphere", "--images", str(images),
                 "--labels", str(labels), "--out", str(out), "--no-progress"])

    assert code == 0
    cases = {case["name"]: case for case in json.loads((out / "report.json").read_text())["cases"]}
    assert set(cases) == {"nifti_case", "dicom_case"}
    print(f"Dice with DICOM SEG labels {cases['dicom_case']['dice']:.4f}, "
          f"with NIfTI labels {cases['nifti_case']['dice']:.4f}")
    assert cases["nifti_case"]["dice"] >= 0.9
    assert cases["dicom_case"]["dice"] == pytest.approx(cases["nifti_case"]["dice"], abs=1e-9)
    assert cases["dicom_case"]["reference_ml"] == pytest.approx(cases["nifti_case"]["reference_ml"], rel=1e-9)


# ---------------------------------------------------------------------------------------- MNI152


@pytest.mark.slow
def test_radnode_evaluate_on_mni152_matches_the_direct_pipeline_dice_and_renders(
    tmp_path: Path, mni152_paths
) -> None:
    images, labels, out = tmp_path / "images", tmp_path / "labels", tmp_path / "out"
    images.mkdir()
    labels.mkdir()
    shutil.copy(mni152_paths.t1, images / "mni152.nii.gz")
    shutil.copy(mni152_paths.mask, labels / "mni152.nii.gz")
    config = tmp_path / "config.toml"
    config.write_text('[workers]\ndevice = "cpu"\ntorch_threads = 2\n')

    code = main(["evaluate", "--config", str(config), "--pipeline", "brain-extraction", "--images", str(images),
                 "--labels", str(labels), "--out", str(out), "--no-progress"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    case = report["cases"][0]
    assert report["n_cases"] == 1 and report["n_failed"] == 0 and case["name"] == "mni152"
    assert report["mean_dice"] == case["dice"] and report["summary"]["dice"]["mean"] == case["dice"]
    assert set(case) >= {"dice", "hd95_mm", "predicted_ml", "reference_ml", "seconds"}

    # The same Dice computed directly, as the pipeline test does (tests/pipelines/test_brain_extraction.py).
    paths = write_nifti_as_series(mni152_paths.t1, tmp_path / "direct", patient_name="MNI^152", patient_id="MNI152")
    pipeline = create_pipeline("brain-extraction", BrainExtractionSettings(), RuntimeOptions("cpu", 2))
    result = pipeline.run(SourceSeries(pydicom.dcmread(paths[0]).SeriesInstanceUID, tuple(paths)))
    volume = load_series(paths)
    result.datasets[0].save_as(tmp_path / "seg.dcm")
    mask = seg_mask_on_volume(tmp_path / "seg.dcm", volume)
    reference = read_mask_on_grid(mni152_paths.mask, volume.affine, volume.array.shape)
    direct = 2 * np.count_nonzero(mask & reference) / (np.count_nonzero(mask) + np.count_nonzero(reference))
    assert case["dice"] >= 0.90
    assert abs(case["dice"] - direct) <= 0.01, (case["dice"], direct)
    assert case["predicted_ml"] == pytest.approx(result.measurements["brain_volume_ml"], rel=0.001)
    assert case["reference_ml"] == pytest.approx(np.count_nonzero(reference) * volume.voxel_volume_ml)
    assert 0 < case["hd95_mm"] < 15 and case["seconds"] > 0

    page = (out / "report.html").read_text()
    assert "<svg" in page and page.count("data:image/png;base64,") == 1
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # no external assets
    assert (out / "overlays" / "mni152.png").is_file() and (out / "segs" / "mni152.dcm").is_file()

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing (Debian package chromium; scripts/bootstrap.sh installs it)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    png = ARTIFACTS / "report.png"
    png.unlink(missing_ok=True)
    subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--screenshot={png}",
         "--window-size=1200,1600", (out / "report.html").as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    from PIL import Image

    with Image.open(png) as shot:
        pixels = np.asarray(shot.convert("RGB"))
    assert pixels.shape[:2] == (1600, 1200)
    red = (pixels[..., 0] > 180) & (pixels[..., 1] < 140) & (pixels[..., 2] < 140)
    assert red.sum() > 1000, "the overlay (prediction tinted red) is not visible in the rendered page"
