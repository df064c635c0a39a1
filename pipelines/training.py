"""Train a 3D segmentation network with MONAI on labeled NIfTI cases and write a MONAI bundle.

Input: ``images/<name>.nii[.gz]`` with ``labels/<name>.nii[.gz]`` (integer label map, 0 =
background, 1..N = classes; same grid as the image).

Training (CPU or GPU): the deterministic preprocessing is the bundle's own ``preprocessing``
(:func:`preprocessing_config`: load, channel first, reorient to RAS, per-image z-score of the
intensities), instantiated from the same config dicts that ``configs/inference.json`` holds, so the
bundle sees at inference exactly what the network saw in training. Then random patches of
``patch_size`` voxels centred on foreground and background alternately, flips, 90 degree rotations
and intensity scale/shift. Loss: Dice + cross-entropy on softmax outputs; Adam. After each epoch
the validation cases are segmented whole with a sliding window (``roi_size = patch_size``) and
scored with the mean foreground Dice; the best epoch's weights are the bundle's model.

Resumable: ``models/checkpoint.pt`` holds network, optimiser, epoch, best score, history and the
train/validation split, rewritten atomically after every epoch; ``train(..., resume=True)`` goes on
from the epoch after it.

Output: a complete MONAI bundle (MONAI Bundle specification):

* ``configs/metadata.json``: versions, task, ``network_data_format`` (inputs ``image``, one channel,
  outputs ``pred``, one channel per class) with ``channel_def``, evaluation metric;
* ``configs/inference.json``: ``network_def``, ``preprocessing``, ``inferer`` (sliding window),
  ``postprocessing`` (softmax, inverse of the preprocessing, argmax, save), ``evaluator``;
* ``models/model.pt`` (state dict for ``network_def``) and ``models/model.ts`` (TorchScript; the
  network wrapped so that any input size works: padded to a multiple of 16, cropped back);
* ``models/checkpoint.pt``, ``models/training_log.json``, ``docs/README.md``.

This module is pure: no database, no network access, no CLI (``radnode train`` drives it).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.progress import progress

NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: Every spatial size given to the exported TorchScript model is padded up to a multiple of this.
SIZE_MULTIPLE = 16
AXCODES = "RAS"


class TrainingError(Exception):
    """The inputs or options cannot be trained on; the message says why."""


@dataclass(frozen=True)
class TrainingOptions:
    """Hyper-parameters. ``patch_size`` is in voxels (x, y, z after reorientation to RAS), each a
    multiple of 16; ``val_split`` the fraction of cases held out (at least one case);
    ``torch_threads`` 0 = torch's default; ``stop_at_dice`` ends training early once the validation
    Dice reaches it (None: run all epochs)."""

    network: Literal["unet", "basicunet"] = "unet"
    patch_size: tuple[int, int, int] = (32, 32, 32)
    epochs: int = 50
    learning_rate: float = 2e-3
    val_split: float = 0.2
    seed: int = 0
    batch_size: int = 4
    samples_per_case: int = 2
    torch_threads: int = 0
    segment_name: str = "Foreground"
    stop_at_dice: float | None = None
    device: str = "auto"

    def validate(self) -> None:
        if len(self.patch_size) != 3 or any(p < 16 or p % SIZE_MULTIPLE for p in self.patch_size):
            raise TrainingError(f"patch size {list(self.patch_size)}: three sizes, each a multiple of {SIZE_MULTIPLE}")
        if self.epochs < 1:
            raise TrainingError("epochs must be at least 1")
        if not 0.0 < self.val_split < 1.0:
            raise TrainingError(f"val_split {self.val_split} must be between 0 and 1")
        if not self.learning_rate > 0:
            raise TrainingError("the learning rate must be positive")
        if self.batch_size < 1 or self.samples_per_case < 1:
            raise TrainingError("batch size and samples per case must be at least 1")


@dataclass
class TrainingResult:
    """What a (possibly resumed) run ended with; ``history`` has one dict per epoch."""

    bundle: Path
    best_dice: float
    best_epoch: int
    epochs_run: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------- data


def _nifti_stem(path: Path) -> str | None:
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def find_pairs(images: Path, labels: Path) -> list[dict[str, str]]:
    """``[{"name", "image", "label"}]`` for every NIfTI image with a label of the same name."""
    for folder in (images, labels):
        if not folder.is_dir():
            raise TrainingError(f"{folder} is not a folder")
    pairs, unmatched = [], []
    for image in sorted(images.iterdir()):
        stem = _nifti_stem(image)
        if stem is None or not image.is_file():
            continue
        label = next((labels / f"{stem}{s}" for s in NIFTI_SUFFIXES if (labels / f"{stem}{s}").is_file()), None)
        if label is None:
            unmatched.append(image.name)
        else:
            pairs.append({"name": stem, "image": str(image), "label": str(label)})
    if unmatched:
        raise TrainingError(f"no label of the same name in {labels} for: {', '.join(unmatched)}")
    if len(pairs) < 2:
        raise TrainingError(f"{images}: need at least two labeled NIfTI cases (one to train, one to validate)")
    return pairs


def split_cases(pairs: Sequence[dict[str, str]], val_split: float, seed: int) -> tuple[list, list]:
    """Shuffle with ``seed`` and hold out ``round(val_split * n)`` cases (at least one, never all)."""
    order = list(pairs)
    random.Random(seed).shuffle(order)
    n_val = min(max(1, round(val_split * len(order))), len(order) - 1)
    return order[n_val:], order[:n_val]


def preprocessing_config(keys: Sequence[str]) -> list[dict[str, Any]]:
    """The deterministic preprocessing as MONAI bundle config dicts (``_target_`` names from
    ``monai.transforms``). ``configs/inference.json`` uses it with ``keys=["image"]``; training
    instantiates the same list with ``["image", "label"]``."""
    keys = list(keys)
    return [
        {"_target_": "LoadImaged", "keys": keys, "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": keys},
        {"_target_": "Orientationd", "keys": keys, "axcodes": AXCODES,
         "labels": [["L", "R"], ["P", "A"], ["I", "S"]]},
        {"_target_": "NormalizeIntensityd", "keys": "image"},
        {"_target_": "EnsureTyped", "keys": keys, "dtype": "$torch.float32"},
    ]


def _instantiate(config: list[dict[str, Any]]) -> list:
    from monai.bundle import ConfigParser

    parser = ConfigParser({"transforms": config})
    return parser.get_parsed_content("transforms")


def network_config(options: TrainingOptions, num_classes: int) -> dict[str, Any]:
    """``network_def`` of the bundle: a MONAI UNet (residual units, 4 levels) or BasicUNet."""
    if options.network == "unet":
        return {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": num_classes,
                "channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 2, "norm": "batch"}
    if options.network == "basicunet":
        return {"_target_": "BasicUNet", "spatial_dims": 3, "in_channels": 1, "out_channels": num_classes,
                "features": [16, 16, 32, 64, 128, 16]}
    raise TrainingError(f"unknown network {options.network!r}: use 'unet' or 'basicunet'")


def build_network(options: TrainingOptions, num_classes: int) -> torch.nn.Module:
    from monai.bundle import ConfigParser

    return ConfigParser({"network_def": network_config(options, num_classes)}).get_parsed_content("network_def")


class PaddedNetwork(torch.nn.Module):
    """The exported model: pads (replicate) each spatial size of a ``(B, C, X, Y, Z)`` input up to
    a multiple of ``multiple``, runs the network, crops its logits back to the input size."""

    def __init__(self, network: torch.nn.Module, multiple: int = SIZE_MULTIPLE) -> None:
        super().__init__()
        self.network = network
        self.multiple = multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sx, sy, sz = x.shape[2], x.shape[3], x.shape[4]
        m = self.multiple
        px, py, pz = (m - sx % m) % m, (m - sy % m) % m, (m - sz % m) % m
        if px + py + pz > 0:
            x = F.pad(x, [0, pz, 0, py, 0, px], mode="replicate")
        return self.network(x)[:, :, :sx, :sy, :sz]


# ---------------------------------------------------------------------------------------- bundle files


def inference_config(options: TrainingOptions, num_classes: int) -> dict[str, Any]:
    """``configs/inference.json``: the MONAI model-zoo layout (runnable with ``python -m
    monai.bundle run --config_file configs/inference.json`` given ``dataset_dir``)."""
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "/workspace/data",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/*.nii*')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": network_config(options, num_classes),
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": preprocessing_config(["image"])},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]",
                    "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 0},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": list(options.patch_size), "sw_batch_size": 4,
                    "overlap": 0.25},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
             "meta_key_postfix": "meta_dict", "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
             "resample": False, "separate_folder": False},
        ]},
        "handlers": [
            {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
             "load_dict": {"model": "@network"}},
            {"_target_": "StatsHandler", "iteration_log": False},
        ],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": False},
        "initialize": ["$monai.utils.set_determinism(seed=0)"],
        "run": ["$@evaluator.run()"],
    }


def _class_names(options: TrainingOptions, num_classes: int) -> dict[str, str]:
    names = {"0": "background"}
    for label in range(1, num_classes):
        names[str(label)] = options.segment_name if label == 1 else f"label {label}"
    return names


def metadata(options: TrainingOptions, num_classes: int, best_dice: float | None, source: str,
             name: str) -> dict[str, Any]:
    """``configs/metadata.json`` with ``network_data_format`` and ``channel_def`` (MONAI Bundle
    specification, metadata schema of 2022-03-24)."""
    import monai

    classes = _class_names(options, num_classes)
    described = ", ".join(f"{k} {v}" for k, v in classes.items())
    patch = list(options.patch_size)
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
                  "meta_schema_20220324.json",
        "version": "0.1.0",
        "changelog": {"0.1.0": "trained with radnode train"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "optional_packages_version": {"nibabel": _version("nibabel")},
        "name": name,
        "task": f"3D segmentation of {options.segment_name}",
        "description": f"MONAI {options.network} trained by radnode train on {source}; classes: {described}.",
        "authors": "radnode train",
        "copyright": "Copyright the owners of the training data",
        "data_source": source,
        "data_type": "nifti",
        "image_classes": "single-channel image, z-score normalised per image after reorientation to RAS",
        "label_classes": described,
        "pred_classes": described,
        "eval_metrics": {"mean_dice": best_dice},
        "intended_use": "Research. Check it with radnode evaluate on held-out cases before routing studies to it.",
        "references": [],
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": "magnitude", "modality": "any", "num_channels": 1,
                "spatial_shape": patch, "dtype": "float32", "value_range": [], "is_patch_data": True,
                "channel_def": {"0": "image"},
            }},
            "outputs": {"pred": {
                "type": "image", "format": "segmentation", "num_channels": num_classes, "spatial_shape": patch,
                "dtype": "float32", "value_range": [0, 1], "is_patch_data": True, "channel_def": classes,
            }},
        },
    }


def _version(package: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _save_torch(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def export_torchscript(network: torch.nn.Module, path: Path, example_size: Sequence[int]) -> None:
    """Script ``PaddedNetwork(network)`` (eval mode, on CPU) to ``path`` and check that it
    reproduces the eager outputs on a random input of ``example_size`` (+1 voxel: padding path)."""
    import copy

    wrapped = PaddedNetwork(copy.deepcopy(network).cpu().eval()).eval()
    with warnings.catch_warnings():  # torch 2.13 marks TorchScript deprecated; MONAI bundles still ship model.ts
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(wrapped)
        tmp = path.with_suffix(".ts.tmp")
        scripted.save(str(tmp))
        os.replace(tmp, path)
        loaded = torch.jit.load(str(path))
    x = torch.randn(1, 1, *[s + 1 for s in example_size])
    with torch.no_grad():
        if not torch.allclose(loaded(x), wrapped(x), atol=1e-4):
            raise TrainingError("the TorchScript export does not reproduce the network's outputs")


def _readme(options: TrainingOptions, num_classes: int, result: dict[str, Any]) -> str:
    return f"""# {options.segment_name} segmentation (radnode train)

A MONAI bundle written by `radnode train`: {options.network}, {num_classes} output channels
({', '.join(f'{k} = {v}' for k, v in _class_names(options, num_classes).items())}),
patch {list(options.patch_size)}, best validation Dice {result.get('best_dice')} at epoch {result.get('best_epoch')}.

Serve it from radnode:

```toml
[pipelines.my-model]
kind = "bundle"
path = "path/to/this/folder"
segments = [{{ label = 1, name = "{options.segment_name}", type = {{ value = "...", scheme = "SCT", meaning = "..." }} }}]
```

Preprocessing (configs/inference.json `preprocessing`): reorientation to RAS and per-image z-score
normalisation; inference with a sliding window of the patch size; argmax of the softmax.
`models/model.ts` pads any input to a multiple of {SIZE_MULTIPLE} voxels and crops its output back.
"""


# ---------------------------------------------------------------------------------------- training


def _set_seed(seed: int) -> None:
    from monai.utils import set_determinism

    set_determinism(seed=seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def _select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _label_classes(pairs: Sequence[dict[str, str]]) -> int:
    import nibabel as nib

    highest = 0
    for pair in pairs:
        data = np.asanyarray(nib.load(pair["label"]).dataobj)
        if not np.all(np.equal(np.mod(data, 1), 0)) or data.min() < 0:
            raise TrainingError(f"{pair['label']}: labels must be non-negative integers")
        highest = max(highest, int(data.max()))
    if highest < 1:
        raise TrainingError("every label map is empty: nothing to learn")
    return highest + 1


def _validate(network: torch.nn.Module, loader, options: TrainingOptions, num_classes: int,
              device: torch.device) -> float:
    """Mean over validation cases of the mean foreground-class Dice (sliding window, argmax)."""
    from monai.inferers import sliding_window_inference
    from monai.metrics import DiceMetric

    metric = DiceMetric(include_background=False, reduction="mean", ignore_empty=False)
    network.eval()
    with torch.no_grad():
        for batch in loader:
            image, label = batch["image"].to(device), batch["label"].to(device)
            logits = sliding_window_inference(image, options.patch_size, 4, network, overlap=0.25)
            prediction = F.one_hot(logits.argmax(dim=1), num_classes).permute(0, 4, 1, 2, 3)
            reference = F.one_hot(label[:, 0].long(), num_classes).permute(0, 4, 1, 2, 3)
            metric(y_pred=prediction, y=reference)
    value = float(metric.aggregate().item())
    metric.reset()
    return value


def train(
    images: Path,
    labels: Path,
    out: Path,
    options: TrainingOptions = TrainingOptions(),
    *,
    resume: bool = False,
    show_progress: bool = True,
) -> TrainingResult:
    """Train on the cases in ``images``/``labels`` and write the bundle to ``out`` (see the module
    docstring). With ``resume``, continue from ``out/models/checkpoint.pt`` (same split, optimiser
    state and history; ``options.epochs`` is the total, so a larger value trains further)."""
    from monai.data import CacheDataset, DataLoader, Dataset
    from monai.losses import DiceCELoss
    from monai.transforms import (
        Compose,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandRotate90d,
        RandScaleIntensityd,
        RandShiftIntensityd,
        SpatialPadd,
    )

    options.validate()
    started = time.perf_counter()
    checkpoint_path = out / "models" / "checkpoint.pt"
    state: dict[str, Any] | None = None
    if resume:
        if not checkpoint_path.is_file():
            raise TrainingError(f"nothing to resume: {checkpoint_path} does not exist")
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    elif checkpoint_path.exists():
        raise TrainingError(f"{out} already holds a training checkpoint: pass --resume, or choose another folder")

    if options.torch_threads > 0:
        torch.set_num_threads(options.torch_threads)
    _set_seed(options.seed + (state["epoch"] if state else 0))
    device = _select_device(options.device)

    if state is not None:
        train_pairs, val_pairs = state["split"]["train"], state["split"]["val"]
        num_classes = int(state["num_classes"])
    else:
        pairs = find_pairs(images, labels)
        train_pairs, val_pairs = split_cases(pairs, options.val_split, options.seed)
        num_classes = _label_classes(pairs)

    keys = ["image", "label"]
    deterministic = _instantiate(preprocessing_config(keys))
    augment = [
        SpatialPadd(keys=keys, spatial_size=options.patch_size, mode="edge"),
        RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=options.patch_size, pos=1, neg=1,
                               num_samples=options.samples_per_case, image_key="image", image_threshold=-math.inf),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=2),
        RandRotate90d(keys=keys, prob=0.5, max_k=3, spatial_axes=(0, 1)),
        RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
    ]
    train_set = CacheDataset(train_pairs, Compose(deterministic + augment), progress=False)
    val_set = Dataset(val_pairs, Compose(deterministic))
    train_loader = DataLoader(train_set, batch_size=max(1, options.batch_size // options.samples_per_case),
                              shuffle=True, num_workers=0)
    val_loader = DataLoader(val_set, batch_size=1, num_workers=0)

    network = build_network(options, num_classes).to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=options.learning_rate, weight_decay=1e-5)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    history: list[dict[str, float]] = []
    best_dice, best_epoch, first_epoch = -1.0, 0, 1
    if state is not None:
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        history, best_dice, best_epoch = state["history"], float(state["best_dice"]), int(state["best_epoch"])
        first_epoch = int(state["epoch"]) + 1
        if state.get("stopped_early") and options.stop_at_dice is not None and best_dice >= options.stop_at_dice:
            first_epoch = options.epochs + 1  # already done

    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(parents=True, exist_ok=True)
    (out / "docs").mkdir(parents=True, exist_ok=True)
    _write_json(out / "configs" / "inference.json", inference_config(options, num_classes))
    write_metadata = lambda: _write_json(  # noqa: E731 - rewritten with each new best
        out / "configs" / "metadata.json",
        metadata(options, num_classes, best_dice if best_dice >= 0 else None, str(images), out.resolve().name))
    write_metadata()

    stopped_early = False
    epochs = range(first_epoch, options.epochs + 1)
    bar = progress(epochs, total=len(epochs), desc="train", enabled=show_progress)
    for epoch in bar:
        network.train()
        epoch_start = time.perf_counter()
        losses = []
        for batch in train_loader:
            image, label = batch["image"].to(device), batch["label"].to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_function(network(image), label)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.item()))
        val_dice = _validate(network, val_loader, options, num_classes, device)
        record = {"epoch": epoch, "loss": float(np.mean(losses)), "val_dice": val_dice,
                  "seconds": time.perf_counter() - epoch_start}
        history.append(record)
        if val_dice > best_dice:
            best_dice, best_epoch = val_dice, epoch
            _save_torch(out / "models" / "model.pt", network.state_dict())
            export_torchscript(network, out / "models" / "model.ts", options.patch_size)
            write_metadata()
        stopped_early = options.stop_at_dice is not None and best_dice >= options.stop_at_dice
        _save_torch(checkpoint_path, {
            "network": network.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
            "best_dice": best_dice, "best_epoch": best_epoch, "history": history, "num_classes": num_classes,
            "split": {"train": train_pairs, "val": val_pairs}, "options": asdict(options),
            "stopped_early": stopped_early,
        })
        bar.set_postfix_str(f"loss {record['loss']:.3f} val Dice {val_dice:.3f} best {best_dice:.3f}@{best_epoch}")
        if stopped_early:
            break
    if hasattr(bar, "close"):
        bar.close()

    seconds = time.perf_counter() - started
    summary = {"best_dice": best_dice, "best_epoch": best_epoch, "epochs_run": len(history),
               "train_cases": [p["name"] for p in train_pairs], "val_cases": [p["name"] for p in val_pairs],
               "options": asdict(options), "history": history}
    _write_json(out / "models" / "training_log.json", summary)
    write_metadata()
    (out / "docs" / "README.md").write_text(_readme(options, num_classes, summary), encoding="utf-8")
    return TrainingResult(bundle=out, best_dice=best_dice, best_epoch=best_epoch, epochs_run=len(history),
                          seconds=seconds, history=history)
