"""Grad-CAM for a small classification bundle trained here on synthetic volumes whose class is
decided by one bright blob: the map's peak must lie in the blob, and it goes out as a FRACTIONAL SEG."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from pipelines.base import RuntimeOptions, SourceSeries
from pipelines.explain import explain_bundle, write_heatmap_seg
from pipelines.nifti_series import read_mask_on_grid, write_nifti_as_series
from pipelines.registry import create_pipeline
from pipelines.settings import BundleSettings
from pipelines.volume import load_series
from tests.dicom_validation import assert_dataset_dciodvfy_clean

SHAPE = (32, 32, 32)
RADIUS = 4.0
#: A small DenseNet: global average pooling makes it position-independent (the blob moves).
NETWORK_DEF = {"_target_": "DenseNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "init_features": 8,
               "growth_rate": 8, "block_config": [2, 2], "bn_size": 2}


def blob_volume(rng: np.random.Generator, with_blob: bool) -> tuple[np.ndarray, np.ndarray]:
    """Noise (sd 1) plus, for class 1, a ball of radius 4 voxels and +3 intensity at a random place."""
    image = rng.normal(0.0, 1.0, SHAPE).astype(np.float32)
    mask = np.zeros(SHAPE, dtype=np.uint8)
    if with_blob:
        centre = rng.uniform(RADIUS + 2, np.array(SHAPE) - RADIUS - 3)
        grid = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"), axis=-1)
        mask = (np.linalg.norm(grid - centre, axis=-1) <= RADIUS).astype(np.uint8)
        image += 3.0 * mask
    return image, mask


def zscore(image: np.ndarray) -> np.ndarray:
    return (image - image.mean()) / image.std()


@pytest.fixture(scope="module")
def classification_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train a tiny MONAI Classifier (blob vs no blob) and write it as a MONAI bundle."""
    from monai.bundle import ConfigParser
    from monai.utils import set_determinism

    set_determinism(seed=0)
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    labels = np.arange(64) % 2
    x = torch.from_numpy(np.stack([zscore(blob_volume(rng, bool(y))[0]) for y in labels])[:, None])
    y = torch.from_numpy(labels).long()
    network = ConfigParser({"net": NETWORK_DEF}).get_parsed_content("net")
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    for epoch in range(40):
        network.train()
        order = torch.randperm(len(y))
        for start in range(0, len(y), 16):
            batch = order[start:start + 16]
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(network(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
        network.eval()
        with torch.no_grad():
            accuracy = float((network(x).argmax(1) == y).float().mean())
        if accuracy == 1.0 and epoch >= 7:
            break
    assert accuracy >= 0.95, accuracy

    root = tmp_path_factory.mktemp("classifier") / "blob-classifier"
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    torch.save(network.state_dict(), root / "models" / "model.pt")
    (root / "configs" / "metadata.json").write_text(json.dumps({
        "name": "blob-classifier", "version": "0.1.0",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "num_channels": 1,
                                 "spatial_shape": list(SHAPE), "channel_def": {"0": "image"}}},
            "outputs": {"pred": {"type": "probabilities", "format": "classes", "num_channels": 2,
                                 "spatial_shape": [2], "channel_def": {"0": "no blob", "1": "blob"}}},
        },
    }))
    (root / "configs" / "inference.json").write_text(json.dumps({
        "bundle_root": ".",
        "device": "$torch.device('cpu')",
        "network_def": NETWORK_DEF,
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image", "image_only": True},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS",
             "labels": [["L", "R"], ["P", "A"], ["I", "S"]]},
            {"_target_": "NormalizeIntensityd", "keys": "image"},
        ]},
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        ]},
    }))
    return root


@pytest.fixture(scope="module")
def explained(classification_bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    """A positive case written as a DICOM series, classified by kind bundle and explained."""
    tmp_path = tmp_path_factory.mktemp("explain")
    image, mask = blob_volume(np.random.default_rng(123), with_blob=True)
    affine = np.diag([1.1, 1.1, 1.6, 1.0])
    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / "image.nii.gz"))
    nib.save(nib.Nifti1Image(mask, affine), str(tmp_path / "blob.nii.gz"))
    paths = write_nifti_as_series(tmp_path / "image.nii.gz", tmp_path / "series", patient_name="Blob^One",
                                  patient_id="BLOB1")
    pipeline = create_pipeline("blob", BundleSettings(path=classification_bundle),
                               RuntimeOptions(device="cpu", torch_threads=2))
    result = pipeline.run(SourceSeries(pydicom.dcmread(paths[0]).SeriesInstanceUID, tuple(paths)))
    volume = load_series(paths)
    explanation = explain_bundle(pipeline, volume)
    blob = read_mask_on_grid(tmp_path / "blob.nii.gz", volume.affine, volume.array.shape)
    return pipeline, result, volume, explanation, blob, tmp_path


@pytest.mark.slow
def test_gradcam_is_higher_in_the_blob_and_goes_out_as_a_valid_fractional_seg(explained) -> None:
    pipeline, result, volume, explanation, blob, tmp_path = explained
    assert result.measurements["probability_blob"] > 0.5, result.measurements
    assert explanation.class_name == "blob" and explanation.heatmap.shape == volume.array.shape
    inside, outside = explanation.heatmap[blob].mean(), explanation.heatmap[~blob].mean()
    print(f"Grad-CAM mean inside the blob {inside:.2f}, outside {outside:.2f}")
    assert inside > 1.5 * outside

    identity = pipeline.identity(volume.frames[0].dataset.SeriesInstanceUID)
    seg = write_heatmap_seg(volume, explanation.heatmap, explanation.class_name, identity)
    assert seg.SegmentationType == "FRACTIONAL" and seg.SeriesDescription.startswith("AI:")
    assert_dataset_dciodvfy_clean(seg, tmp_path, "gradcam.dcm")
    read = hd.seg.Segmentation.from_dataset(seg, copy=True)
    uids = [f.dataset.SOPInstanceUID for f in volume.frames]
    values = read.get_pixels_by_source_instance(uids, segment_numbers=[1], assert_missing_frames_are_empty=True,
                                                rescale_fractional=True)[..., 0].transpose(2, 1, 0)
    assert np.abs(values - explanation.heatmap).max() <= 1.0 / 255 + 1e-6
