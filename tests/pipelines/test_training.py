"""``radnode train`` on synthetic phantoms made here; the bundle it writes is then served, unmodified,
by kind ``bundle`` on phantom DICOM series and evaluated with ``pipelines.evaluation``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from node.cli import main
from pipelines.base import RuntimeOptions, SourceSeries
from pipelines.evaluation import evaluate, find_cases
from pipelines.nifti_series import read_mask_on_grid, write_nifti_as_series
from pipelines.registry import create_pipeline
from pipelines.seg_reader import seg_mask_on_volume
from pipelines.settings import BundleSettings, CodeSpec, SegmentSpec
from pipelines.training import TrainingError, TrainingOptions, train
from pipelines.volume import load_series
from tests.pipelines.phantoms import write_phantom_set
from tests.pipelines.trained_bundles import TrainedBundle

PHANTOM = SegmentSpec(label=1, name="Phantom", type=CodeSpec(value="4147007", scheme="SCT", meaning="Mass"))
#: Wall-clock budget for the training run on a 2-core CPU (it takes ~1-2 min on a quiet machine).
TRAIN_BUDGET_S = 420


@pytest.fixture(scope="module")
def trained(trained_phantom_bundle: TrainedBundle, tmp_path_factory: pytest.TempPathFactory):
    """The session's phantom training run (tests/pipelines/trained_bundles.py) and a folder of this module's own."""
    return trained_phantom_bundle.result, trained_phantom_bundle.seconds, tmp_path_factory.mktemp("served")


@pytest.mark.slow
def test_training_reaches_validation_dice_0_9_within_the_budget(trained) -> None:
    result, seconds, _ = trained
    print(f"best validation Dice {result.best_dice:.3f} at epoch {result.best_epoch}, "
          f"{result.epochs_run} epochs, {seconds:.0f} s")
    assert result.best_dice >= 0.9, result.history
    assert seconds < TRAIN_BUDGET_S, f"training took {seconds:.0f} s"
    assert [h["epoch"] for h in result.history] == list(range(1, result.epochs_run + 1))


@pytest.mark.slow
def test_the_bundle_is_complete(trained) -> None:
    result, _, _ = trained
    bundle = result.bundle
    for name in ("configs/metadata.json", "configs/inference.json", "models/model.ts", "models/model.pt",
                 "models/checkpoint.pt", "docs/README.md"):
        assert (bundle / name).is_file(), name
    meta = json.loads((bundle / "configs/metadata.json").read_text())
    fmt = meta["network_data_format"]
    assert fmt["inputs"]["image"]["num_channels"] == 1 and fmt["inputs"]["image"]["channel_def"] == {"0": "image"}
    assert fmt["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "Foreground"}
    assert meta["eval_metrics"]["mean_dice"] == pytest.approx(result.best_dice)
    inference = json.loads((bundle / "configs/inference.json").read_text())
    assert {"network_def", "preprocessing", "inferer", "postprocessing"} <= set(inference)


@pytest.mark.slow
def test_kind_bundle_serves_the_trained_bundle_on_a_phantom_dicom_series(trained) -> None:
    result, _, root = trained
    images, labels = write_phantom_set(root / "unseen", 3, seed=99)
    pipeline = create_pipeline("phantom", BundleSettings(path=result.bundle, segments=[PHANTOM]),
                               RuntimeOptions(device="cpu", torch_threads=2))
    pipeline.load()
    paths = write_nifti_as_series(images / "case_000.nii.gz", root / "series", patient_name="Phantom^One",
                                  patient_id="PH1")
    run = pipeline.run(SourceSeries(pydicom.dcmread(paths[0]).SeriesInstanceUID, tuple(paths)))
    seg = run.datasets[0]
    assert seg.Modality == "SEG" and seg.SegmentSequence[0].SegmentLabel == "Phantom"
    seg.save_as(root / "seg.dcm")
    volume = load_series(paths)
    mask = seg_mask_on_volume(root / "seg.dcm", volume)
    reference = read_mask_on_grid(labels / "case_000.nii.gz", volume.affine, volume.array.shape)
    dice = 2 * np.count_nonzero(mask & reference) / (np.count_nonzero(mask) + np.count_nonzero(reference))
    assert dice >= 0.85, dice

    # And through the evaluation path on all three unseen phantoms.
    report = evaluate(pipeline, find_cases(images, labels), root / "eval", show_progress=False)
    assert report.as_dict()["n_failed"] == 0
    assert report.as_dict()["mean_dice"] >= 0.85, report.as_dict()


@pytest.mark.slow
def test_training_resumes_from_its_checkpoint_and_refuses_to_overwrite(tmp_path: Path) -> None:
    images, labels = write_phantom_set(tmp_path / "data", 6, seed=3)
    out = tmp_path / "bundle"
    options = TrainingOptions(epochs=1, torch_threads=2, device="cpu", val_split=0.34)
    first = train(images, labels, out, options, show_progress=False)
    assert first.epochs_run == 1
    with pytest.raises(TrainingError, match="already holds a training checkpoint"):
        train(images, labels, out, options, show_progress=False)
    # Through the CLI: --resume with more epochs goes on from epoch 2.
    code = main(["train", "--images", str(images), "--labels", str(labels), "--out", str(out), "--epochs", "2",
                 "--threads", "2", "--device", "cpu", "--val-split", "0.34", "--resume", "--no-progress"])
    assert code == 0
    log = json.loads((out / "models" / "training_log.json").read_text())
    assert [h["epoch"] for h in log["history"]] == [1, 2]
    assert log["val_cases"] == [p for p in log["val_cases"]] and len(log["val_cases"]) == 2


def test_training_options_are_checked() -> None:
    with pytest.raises(TrainingError, match="multiple of 16"):
        TrainingOptions(patch_size=(30, 32, 32)).validate()
    with pytest.raises(TrainingError, match="val_split"):
        TrainingOptions(val_split=1.0).validate()


def test_phantom_labels_are_ellipsoids_inside_the_volume(tmp_path: Path) -> None:
    images, labels = write_phantom_set(tmp_path, 2, seed=5)
    label = np.asanyarray(nib.load(str(labels / "case_000.nii.gz")).dataobj)
    image = np.asanyarray(nib.load(str(images / "case_000.nii.gz")).dataobj)
    assert label.shape == (32, 32, 32) and 200 < label.sum() < 4000
    assert image[label == 1].mean() > image[label == 0].mean() + 100
