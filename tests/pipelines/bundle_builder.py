"""Real MONAI bundle folders for tests, built on disk, and a sphere phantom written as a DICOM series.

The networks are tiny and their weights are set by hand, so each does a known job exactly:

* :func:`sphere_segmenter`: one 3x3x3 convolution with two output channels whose difference is
  ``2 * gain * (local mean - 0.5)``: after the bundle's intensity scaling (0..400 -> 0..1) the
  argmax is "sphere" where the local mean intensity is above 200 (background ~100, sphere ~300).
* :class:`BrightFraction`: a classifier whose logits are ``(-s, s)`` with ``s = gain * (fraction of
  voxels above 0.5 after scaling - 1 %)``: "sphere" when more than 1 % of the volume is bright.

One bundle is trained rather than hand-set, because Grad-CAM needs learned convolutions:
:func:`build_blob_classifier_bundle`, a small CNN (state dict + ``network_def``) that tells noise
volumes with a bright blob (:func:`blob_volume`) from noise alone, in a few seconds on CPU.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.nifti_series import write_dicom_series
from pipelines.settings import CodeSpec, SegmentSpec
from tests.pipelines.synthetic import oblique_cosines

#: Phantom grid (columns, rows, slices), voxel size (mm) and sphere geometry.
SHAPE = (48, 40, 26)
SPACING = (1.0, 1.2, 2.0)
SPHERE_CENTRE_VOXEL = (30.0, 14.0, 9.0)  # off-centre on every axis, so a flipped axis misses it
SPHERE_RADIUS_MM = 13.0
BACKGROUND, SPHERE_VALUE, NOISE_SD = 100.0, 300.0, 30.0
#: How a pipeline configured for the sphere codes its segment.
SPHERE = SegmentSpec(
    label=1,
    name="Sphere",
    category=CodeSpec(value="49755003", meaning="Morphologically Altered Structure"),
    type=CodeSpec(value="4147007", meaning="Mass"),
)


def phantom_affine() -> np.ndarray:
    """Voxel -> LPS mm of the phantom: oblique (15 degrees), anisotropic."""
    row, col = oblique_cosines(15.0)
    affine = np.eye(4)
    affine[:3, 0] = SPACING[0] * row
    affine[:3, 1] = SPACING[1] * col
    affine[:3, 2] = SPACING[2] * np.cross(row, col)
    affine[:3, 3] = [-20.0, 15.0, -30.0]
    return affine


def sphere_phantom(*, with_sphere: bool = True, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(image int16, truth bool), both (columns, rows, slices): a sphere (voxel centres within
    :data:`SPHERE_RADIUS_MM` of the centre) of ~300 in Gaussian noise on ~100."""
    affine = phantom_affine()
    ijk = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in SHAPE], indexing="ij"), axis=-1)
    mm = ijk @ affine[:3, :3].T + affine[:3, 3]
    centre = affine[:3, :3] @ np.asarray(SPHERE_CENTRE_VOXEL) + affine[:3, 3]
    truth = np.linalg.norm(mm - centre, axis=-1) <= SPHERE_RADIUS_MM
    if not with_sphere:
        truth[:] = False
    rng = np.random.default_rng(seed)
    image = BACKGROUND + (SPHERE_VALUE - BACKGROUND) * truth + rng.normal(0.0, NOISE_SD, size=SHAPE)
    return np.round(image).astype(np.int16), truth


def write_phantom_series(folder: Path, *, with_sphere: bool = True, modality: str = "MR") -> tuple[list[Path], np.ndarray]:
    """Write the phantom as a DICOM series; returns (file paths, truth mask on the series grid)."""
    image, truth = sphere_phantom(with_sphere=with_sphere)
    paths = write_dicom_series(image, phantom_affine(), folder, patient_name="Phantom^Sphere",
                               patient_id="SPHERE-1", series_description="sphere phantom", modality=modality)
    return paths, truth


# ------------------------------------------------------------------------------------------ networks


def sphere_segmenter(gain: float = 10.0) -> torch.nn.Conv3d:
    """Conv3d(1 -> 2, 3x3x3) computing (background, sphere) logits from the local mean (see module)."""
    conv = torch.nn.Conv3d(1, 2, kernel_size=3, padding=1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0].fill_(-gain / 27.0)
        conv.weight[1].fill_(gain / 27.0)
        conv.bias.copy_(torch.tensor([gain * 0.5, -gain * 0.5]))
    return conv.eval()


class BrightFraction(torch.nn.Module):
    """(B, 1, X, Y, Z) -> (B, 2) logits of (no sphere, sphere); see the module docstring."""

    def __init__(self, gain: float = 500.0, threshold: float = 0.01) -> None:
        super().__init__()
        self.gain = gain
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fraction = (x > 0.5).float().flatten(1).mean(dim=1)
        score = self.gain * (fraction - self.threshold)
        return torch.stack([-score, score], dim=1)


def save_torchscript(module: torch.nn.Module, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # torch 2.13 marks TorchScript deprecated; bundles still ship model.ts
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(module.eval()).save(str(path))


# ------------------------------------------------------------------------------------------ configs

PREPROCESSING = [
    {"_target_": "LoadImaged", "keys": "image", "image_only": True},
    {"_target_": "EnsureChannelFirstd", "keys": "image"},
    {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
    {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 1.5], "mode": "bilinear"},
    {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": 0.0, "a_max": 400.0, "b_min": 0.0,
     "b_max": 1.0, "clip": True},
    {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
]


def segmentation_inference(*, invert: bool = True) -> dict[str, Any]:
    """A model-zoo style ``inference.json``: sliding window, softmax, Invertd, argmax, SaveImaged."""
    post = [{"_target_": "Activationsd", "keys": "pred", "softmax": True}]
    if invert:
        post.append({"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
                     "meta_key_postfix": "meta_dict", "nearest_interp": False, "to_tensor": True})
    post += [{"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
             {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
              "separate_folder": False}]
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "/workspace/data",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/*.nii*')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 2, "kernel_size": 3,
                        "padding": 1},
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": PREPROCESSING},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [24, 24, 24], "sw_batch_size": 2,
                    "overlap": 0.25},
        "postprocessing": {"_target_": "Compose", "transforms": post},
    }


def classification_inference() -> dict[str, Any]:
    return {
        "imports": ["$import os"],
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "preprocessing": {"_target_": "Compose", "transforms": PREPROCESSING[:3] + PREPROCESSING[4:]},
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True, "to_onehot": 2},
        ]},
    }


def metadata(name: str, *, classification: bool = False, channel_def: dict[str, str] | None = None) -> dict[str, Any]:
    if classification:
        output = {"type": "probabilities", "format": "classes", "num_channels": 2, "spatial_shape": [2],
                  "dtype": "float32", "value_range": [0, 1], "is_patch_data": False,
                  "channel_def": channel_def or {"0": "no sphere", "1": "sphere"}}
    else:
        output = {"type": "image", "format": "segmentation", "num_channels": 2, "spatial_shape": [24, 24, 24],
                  "dtype": "float32", "value_range": [0, 1], "is_patch_data": True,
                  "channel_def": channel_def or {"0": "background", "1": "sphere"}}
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
                  "meta_schema_20220324.json",
        "version": "0.2.0",
        "changelog": {"0.2.0": "hand-set weights"},
        "monai_version": "1.6.1",
        "pytorch_version": "2.13.0",
        "numpy_version": np.__version__,
        "name": name,
        "task": "sphere classification" if classification else "sphere segmentation",
        "description": "test bundle with hand-set weights",
        "authors": "radnode tests",
        "copyright": "public domain",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "MR", "num_channels": 1,
                                 "spatial_shape": [24, 24, 24], "dtype": "float32", "value_range": [],
                                 "is_patch_data": not classification, "channel_def": {"0": "image"}}},
            "outputs": {"pred": output},
        },
    }


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def build_segmentation_bundle(root: Path, *, weights: str = "torchscript", invert: bool = True,
                              channel_def: dict[str, str] | None = None) -> Path:
    """Write a sphere-segmentation bundle; ``weights`` is ``torchscript`` (models/model.ts) or
    ``state_dict`` (models/model.pt for ``network_def``)."""
    _write_json(root / "configs" / "metadata.json", metadata("sphere_segmentation", channel_def=channel_def))
    _write_json(root / "configs" / "inference.json", segmentation_inference(invert=invert))
    network = sphere_segmenter()
    if weights == "torchscript":
        save_torchscript(network, root / "models" / "model.ts")
    else:
        (root / "models").mkdir(parents=True, exist_ok=True)
        torch.save(network.state_dict(), root / "models" / "model.pt")
    (root / "docs").mkdir(exist_ok=True)
    (root / "docs" / "README.md").write_text("# sphere segmentation (test bundle)\n", encoding="utf-8")
    return root


def build_classification_bundle(root: Path) -> Path:
    _write_json(root / "configs" / "metadata.json", metadata("sphere_classification", classification=True))
    _write_json(root / "configs" / "inference.json", classification_inference())
    save_torchscript(BrightFraction(), root / "models" / "model.ts")
    return root


# ------------------------------------------------------------------------------------------ Grad-CAM

BLOB_SHAPE = (32, 32, 32)
BLOB_RADIUS = 4.0
#: The blob classifier's ``network_def`` (a config expression, as model-zoo bundles write them): one
#: stride-2 convolution, two more at that half resolution (16^3 for a 32^3 input), global max pooling
#: (position-independent: the blob moves) and a linear layer. Grad-CAM weighs the last convolution, so
#: its map has a cell every 2 voxels and its peak lands in the blob; a small DenseNet, whose last
#: feature map is 4^3 here, put the peak about 8 mm from the blob centre.
BLOB_NETWORK_DEF = "$torch.nn.Sequential(" + ", ".join([
    "torch.nn.Conv3d(1, 8, 3, stride=2, padding=1)", "torch.nn.ReLU()",
    "torch.nn.Conv3d(8, 16, 3, padding=1)", "torch.nn.ReLU()",
    "torch.nn.Conv3d(16, 16, 3, padding=1)", "torch.nn.ReLU()",
    "torch.nn.AdaptiveMaxPool3d(1)", "torch.nn.Flatten()", "torch.nn.Linear(16, 2)",
]) + ")"


def blob_volume(rng: np.random.Generator, with_blob: bool) -> tuple[np.ndarray, np.ndarray]:
    """(image float32, blob mask uint8), both :data:`BLOB_SHAPE` voxels: noise (sd 1) plus, when
    ``with_blob``, a ball of radius 4 voxels and +3 intensity at a random place inside."""
    image = rng.normal(0.0, 1.0, BLOB_SHAPE).astype(np.float32)
    mask = np.zeros(BLOB_SHAPE, dtype=np.uint8)
    if with_blob:
        centre = rng.uniform(BLOB_RADIUS + 2, np.array(BLOB_SHAPE) - BLOB_RADIUS - 3)
        grid = np.stack(np.meshgrid(*[np.arange(s) for s in BLOB_SHAPE], indexing="ij"), axis=-1)
        mask = (np.linalg.norm(grid - centre, axis=-1) <= BLOB_RADIUS).astype(np.uint8)
        image += 3.0 * mask
    return image, mask


def _zscore(image: np.ndarray) -> np.ndarray:
    return (image - image.mean()) / image.std()


def train_blob_classifier(network_def: str | dict[str, Any] = BLOB_NETWORK_DEF, cases: int = 64,
                          max_epochs: int = 40) -> torch.nn.Module:
    """Train ``network_def`` (blob vs no blob, seeded) until it classifies every training case right."""
    from monai.bundle import ConfigParser
    from monai.utils import set_determinism

    set_determinism(seed=0)
    rng = np.random.default_rng(0)
    labels = np.arange(cases) % 2
    x = torch.from_numpy(np.stack([_zscore(blob_volume(rng, bool(y))[0]) for y in labels])[:, None])
    y = torch.from_numpy(labels).long()
    network = ConfigParser({"net": network_def}).get_parsed_content("net")
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    accuracy = 0.0
    for epoch in range(max_epochs):
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
    if accuracy < 0.95:
        raise AssertionError(f"the blob classifier reached only {accuracy:.2f} training accuracy")
    return network.eval()


def build_blob_classifier_bundle(root: Path, network_def: str | dict[str, Any] = BLOB_NETWORK_DEF) -> Path:
    """Train the blob classifier and write it as a MONAI bundle (``models/model.pt`` for ``network_def``)."""
    network = train_blob_classifier(network_def)
    (root / "models").mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), root / "models" / "model.pt")
    _write_json(root / "configs" / "metadata.json", {
        "name": "blob-classifier", "version": "0.1.0",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "num_channels": 1,
                                 "spatial_shape": list(BLOB_SHAPE), "channel_def": {"0": "image"}}},
            "outputs": {"pred": {"type": "probabilities", "format": "classes", "num_channels": 2,
                                 "spatial_shape": [2], "channel_def": {"0": "no blob", "1": "blob"}}},
        },
    })
    _write_json(root / "configs" / "inference.json", {
        "bundle_root": ".",
        "device": "$torch.device('cpu')",
        "network_def": network_def,
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
    })
    return root
