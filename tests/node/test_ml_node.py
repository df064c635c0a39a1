"""Models that ML engineers bring, served by a running node over DICOM: the segmentation bundle
that ``radnode train``'s training function wrote from synthetic phantoms, and a classification
bundle with ``explain = "gradcam"`` (both trained once per session, tests/pipelines/trained_bundles.py).
storescu sends one series for each; the node runs both bundles and delivers to a DCMTK storescp
standing in for the PACS; the tests read what arrived there.

One node serves both pipelines (one route each, chosen by Series Description) to start it once.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from pipelines.nifti_series import read_mask_on_grid, write_nifti_as_series
from pipelines.seg_reader import seg_mask_on_volume
from pipelines.volume import Volume, load_series
from pipelines.writers.common import ResultIdentity
from pipelines.writers.sr import CERTAINTY_OF_FINDING
from tests.dicom_validation import assert_dciodvfy_clean
from tests.pipelines.bundle_builder import blob_volume
from tests.pipelines.phantoms import write_phantom_set
from tests.pipelines.trained_bundles import TrainedBundle
from tests.support.dcmtk import DCMTK_ENV, require, storescu
from tests.support.network import free_port
from tests.support.node_process import (RadnodeProcess, delivery_table, destination_table, model_worker_table,
                                        route_table, start_node)

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class SentSeries:
    """A series sent to the node, its reference mask (voxel grid of the series) and the folder that
    holds what the PACS received for its study."""

    paths: list[Path]
    volume: Volume
    reference: np.ndarray
    received: list[Path]

    @property
    def series_uid(self) -> str:
        return str(self.volume.frames[0].dataset.SeriesInstanceUID)

    def received_of(self, modality: str) -> list[Path]:
        return [p for p in self.received if pydicom.dcmread(p, stop_before_pixels=True).Modality == modality]


@dataclass(frozen=True)
class Served:
    blob: SentSeries  # classified and explained by the "blob" pipeline
    phantom: SentSeries  # segmented by the "phantom" pipeline (the bundle radnode train wrote)


def _series_from_nifti(image: Path, folder: Path, description: str, reference: Path) -> tuple[list[Path], Volume, np.ndarray]:
    paths = write_nifti_as_series(image, folder, patient_name=f"Ml^{description}", patient_id=f"ML-{description}",
                                  series_description=description)
    volume = load_series(paths)
    return paths, volume, read_mask_on_grid(reference, volume.affine, volume.array.shape)


def _node_extra(pacs_port: int, blob_bundle: Path, phantom_bundle: Path) -> str:
    return "\n".join([
        model_worker_table(torch_threads=2, lease_s=120),
        delivery_table(first_retry_s=1.0, max_retry_s=2, check_interval_s=0.2),
        destination_table("pacs", "PACS", pacs_port),
        route_table("blob", '{ SeriesDescription = "blob" }', ["pacs"], pipeline="blob"),
        route_table("phantom", '{ SeriesDescription = "phantom" }', ["pacs"], pipeline="phantom"),
        f'[pipelines.blob]\nkind = "bundle"\npath = "{blob_bundle.as_posix()}"\nexplain = "gradcam"\n',
        f'[pipelines.phantom]\nkind = "bundle"\npath = "{phantom_bundle.as_posix()}"\nwrite_overlay = false\n'
        '[[pipelines.phantom.segments]]\nlabel = 1\nname = "Phantom"\n'
        'type = { value = "4147007", scheme = "SCT", meaning = "Mass" }\n',
    ])


def _delivered(node: RadnodeProcess, series_uid: str) -> bool:
    series = node.series_status(series_uid)
    if not series or not series["jobs"]:
        return False
    job = series["jobs"][0]
    if job["state"] in ("failed", "refused"):
        raise AssertionError(f"job of series {series_uid} ended {job['state']}\n{node.log()[-4000:]}")
    return bool(job["deliveries"]) and all(d["state"] == "done" for d in job["deliveries"])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, trained_phantom_bundle: TrainedBundle,
           blob_classifier_bundle: Path) -> Iterator[Served]:
    """Start storescp and a node serving both session bundles (tests/pipelines/trained_bundles.py),
    send one series for each, wait for their delivery."""
    root = tmp_path_factory.mktemp("ml-node")
    phantom_bundle, blob_bundle = trained_phantom_bundle.bundle, blob_classifier_bundle

    cases = root / "cases"
    cases.mkdir()
    image, blob = blob_volume(np.random.default_rng(123), with_blob=True)
    affine = np.diag([1.1, 1.1, 1.6, 1.0])
    nib.save(nib.Nifti1Image(image, affine), str(cases / "blob.nii.gz"))
    nib.save(nib.Nifti1Image(blob, affine), str(cases / "blob-mask.nii.gz"))
    blob_paths, blob_volume_, blob_mask = _series_from_nifti(cases / "blob.nii.gz", root / "blob-series", "blob",
                                                             cases / "blob-mask.nii.gz")
    images, labels = write_phantom_set(root / "unseen", 1, seed=99)
    phantom_paths, phantom_volume, truth = _series_from_nifti(images / "case_000.nii.gz", root / "phantom-series",
                                                              "phantom", labels / "case_000.nii.gz")

    received = root / "pacs"
    received.mkdir()
    pacs_port = free_port()
    scp = subprocess.Popen([require("storescp"), "-aet", "PACS", "-od", str(received), str(pacs_port)],
                           env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    node = None
    try:
        node = start_node(root / "node", workers=1, grace_s=0.5,
                          extra=_node_extra(pacs_port, blob_bundle, phantom_bundle))
        for paths in (blob_paths, phantom_paths):
            assert len(storescu(node.port, paths).acknowledged) == len(paths)
        for volume in (blob_volume_, phantom_volume):
            uid = str(volume.frames[0].dataset.SeriesInstanceUID)
            node.wait_for(lambda: _delivered(node, uid), timeout=240, interval=0.5, what=f"delivery of {uid}")

        def study_files(volume: Volume) -> list[Path]:
            study = volume.frames[0].dataset.StudyInstanceUID
            return [p for p in sorted(received.iterdir())
                    if pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID == study]

        yield Served(
            blob=SentSeries(blob_paths, blob_volume_, blob_mask, study_files(blob_volume_)),
            phantom=SentSeries(phantom_paths, phantom_volume, truth, study_files(phantom_volume)),
        )
    finally:
        if node is not None:
            node.stop()
        scp.terminate()
        scp.wait(timeout=10)


def _only(paths: list[Path]) -> Path:
    assert len(paths) == 1, paths
    return paths[0]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def _heatmap(seg_path: Path, volume: Volume) -> np.ndarray:
    """A FRACTIONAL SEG's segment 1 on the volume grid (column, row, slice), values in [0, 1]."""
    uids = [f.dataset.SOPInstanceUID for f in volume.frames]
    pixels = hd.seg.segread(seg_path).get_pixels_by_source_instance(
        uids, segment_numbers=[1], assert_missing_frames_are_empty=True, rescale_fractional=True)
    return pixels[..., 0].transpose(2, 1, 0)


def _certainty_percent(sr_path: Path) -> float:
    sr = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(sr_path))
    found = sr.content.get_volumetric_roi_measurement_groups()[0].get_measurements(name=CERTAINTY_OF_FINDING)
    assert len(found) == 1 and found[0].unit.value == "%"
    return float(found[0].value)


# ------------------------------------------------------------------------------------------ Grad-CAM


def test_classification_bundle_with_explain_gradcam_delivers_a_valid_fractional_seg_brighter_in_the_blob(
    served: Served,
) -> None:
    path = _only(served.blob.received_of("SEG"))
    assert_dciodvfy_clean(path)
    seg = hd.seg.segread(path)
    assert seg.SegmentationType == "FRACTIONAL" and seg.SeriesDescription.startswith("AI: Grad-CAM blob")
    heat = _heatmap(path, served.blob.volume)
    inside, outside = heat[served.blob.reference].mean(), heat[~served.blob.reference].mean()
    print(f"delivered Grad-CAM: mean inside the blob {inside:.3f}, outside {outside:.3f}")
    assert inside > 1.5 * outside


def test_delivered_gradcam_peaks_inside_the_blob(served: Served) -> None:
    heat = _heatmap(_only(served.blob.received_of("SEG")), served.blob.volume)
    assert served.blob.reference[np.unravel_index(int(np.argmax(heat)), heat.shape)]


def test_gradcam_seg_has_the_stable_uids_of_its_series_pipeline_and_model_version(served: Served) -> None:
    seg = pydicom.dcmread(_only(served.blob.received_of("SEG")), stop_before_pixels=True)
    identity = ResultIdentity(served.blob.series_uid, "blob", "blob-classifier", "0.1.0")
    assert (seg.SOPInstanceUID, seg.SeriesInstanceUID) == (identity.uid("gradcam", 0), identity.series_uid("gradcam"))


def test_the_classification_sr_arrives_beside_the_gradcam_seg(served: Served) -> None:
    sr = pydicom.dcmread(_only(served.blob.received_of("SR")))
    assert sr.SeriesDescription.startswith("AI:")
    assert len(served.blob.received) == 2  # the SEG and the SR, nothing else


# ------------------------------------------------------------------------------------------ trained bundle


def test_bundle_written_by_radnode_train_is_served_over_dicom_with_dice_of_at_least_0_85(served: Served) -> None:
    path = _only(served.phantom.received_of("SEG"))
    assert_dciodvfy_clean(path)
    mask = seg_mask_on_volume(path, served.phantom.volume)
    dice = _dice(mask, served.phantom.reference)
    print(f"trained bundle served by the node: Dice {dice:.3f} against the phantom truth")
    assert dice >= 0.85


def test_sr_of_the_served_trained_bundle_reports_its_confidence_above_one_half(served: Served) -> None:
    path = _only(served.phantom.received_of("SR"))
    assert_dciodvfy_clean(path)
    certainty = _certainty_percent(path)
    print(f"trained bundle confidence in the delivered SR: {certainty:.1f} %")
    assert 50.0 < certainty <= 100.0
