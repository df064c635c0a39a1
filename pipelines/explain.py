"""Explain a classification bundle's decision: a Grad-CAM map (``monai.visualize.GradCAM``) on the
source grid, written as a FRACTIONAL SEG (PS3.3 C.8.20, Segmentation Type FRACTIONAL, Fractional
Type PROBABILITY; values 0..255 stand for 0..1 relevance).

Grad-CAM (Selvaraju et al., 2017) weighs the activations of one convolution layer by the
spatially averaged gradient of the class score and keeps the positive part; MONAI upsamples it to
the network's input size and scales it to [0, 1]. The map is computed on the grid the bundle's own
preprocessing produces (the same one the classifier sees) and resampled (trilinear) back onto the
source volume grid, voxel (column, row, slice), LPS.

TorchScript modules take no hooks, so the network is built from the bundle's ``network_def`` with
the state dict ``models/model.pt`` (a bundle with only ``model.ts`` cannot be explained). The
bundle's preprocessing is reused from a loaded :class:`pipelines.bundle.BundlePipeline`.

In the node, ``explain = "gradcam"`` in a kind ``bundle`` table makes
:class:`pipelines.bundle.BundlePipeline` load that hookable copy once (:func:`load_hookable_network`)
and explain the class its SR reports as most probable with every run (:func:`explain_image`, on the
image its own inference preprocessed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import torch
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from pipelines.settings import CodeSpec, SegmentSpec
from pipelines.volume import Volume
from pipelines.writers.common import MANUFACTURER, ResultIdentity, seg_creator_attributes
from pipelines.writers.seg import coded

#: Series Number of Grad-CAM SEG series (after the SEG/SR/SC numbers of pipelines.writers.common).
GRADCAM_SERIES_NUMBER = 9004
#: Content Label of Grad-CAM SEGs: tells them from segmentations (``radnode evaluate`` skips them).
GRADCAM_CONTENT_LABEL = "GRADCAM"
SALIENCY_CATEGORY = CodeSpec(value="SALIENCY", scheme="99RADNODE", meaning="Saliency map")
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def last_convolution(network: torch.nn.Module) -> str:
    """Dotted name of the network's last 2D/3D convolution module (the usual Grad-CAM layer)."""
    names = [name for name, module in network.named_modules()
             if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d))]
    if not names:
        raise ValueError("the network has no convolution layer for Grad-CAM")
    return names[-1]


def _scale_to_unit(x: torch.Tensor) -> torch.Tensor:
    """Per-sample min-max scaling to [0, 1], highest relevance = 1 (MONAI's default normaliser maps
    the maximum to 0, i.e. flips the map)."""
    flat = x.reshape(x.shape[0], -1)
    low, high = flat.min(dim=1).values, flat.max(dim=1).values
    shape = (-1,) + (1,) * (x.ndim - 1)
    return (x - low.reshape(shape)) / (high - low).clamp_min(1e-12).reshape(shape)


def gradcam_map(network: torch.nn.Module, image: torch.Tensor, class_index: int | None = None,
                target_layer: str | None = None) -> tuple[np.ndarray, int, np.ndarray]:
    """Grad-CAM of ``network`` for one channel-first image ``(1, X, Y, Z)`` (already preprocessed),
    computed on the device the network's parameters are on.

    Returns (map ``(X, Y, Z)`` float32 in [0, 1], the explained class index (the predicted class
    when ``class_index`` is None), class probabilities (softmax of the logits)).
    """
    from monai.visualize import GradCAM

    network = network.eval()
    for module in network.modules():  # a hooked output must not be modified in place (autograd forbids it)
        if hasattr(module, "inplace") and isinstance(module.inplace, bool):
            module.inplace = False
    device = next((p.device for p in network.parameters()), torch.device("cpu"))
    x = torch.as_tensor(image).as_subclass(torch.Tensor)[None].float().to(device)
    with torch.no_grad():
        logits = network(x).reshape(-1)
    probabilities = torch.softmax(logits, dim=0).cpu().numpy().astype(np.float64)
    if class_index is None:
        class_index = int(np.argmax(probabilities))
    if not 0 <= class_index < probabilities.size:
        raise ValueError(f"class index {class_index} is not one of the network's {probabilities.size} classes")
    layer = target_layer or last_convolution(network)
    if layer not in dict(network.named_modules()):
        raise ValueError(f"the network has no layer {layer!r} for Grad-CAM (last convolution: "
                         f"{last_convolution(network)!r})")
    cam = GradCAM(nn_module=network, target_layers=layer, postprocessing=_scale_to_unit)
    with torch.enable_grad():
        heat = cam(x=x, class_idx=class_index)
    return np.asarray(heat[0, 0].detach().cpu(), dtype=np.float32), class_index, probabilities


def to_source_grid(values: np.ndarray, affine_ras: np.ndarray, volume: Volume) -> np.ndarray:
    """Trilinear resampling of a float map with voxel -> RAS mm ``affine_ras`` onto the grid of
    ``volume``; outside the map is 0."""
    target = RAS_TO_LPS @ volume.affine
    if values.shape == volume.array.shape and np.allclose(affine_ras, target, atol=1e-3):
        return values.astype(np.float32)
    from monai.data import MetaTensor
    from monai.transforms import SpatialResample

    source = MetaTensor(torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))[None],
                        affine=torch.as_tensor(affine_ras, dtype=torch.float64))
    out = SpatialResample(mode="bilinear", padding_mode="zeros")(
        source, dst_affine=torch.as_tensor(target, dtype=torch.float64), spatial_size=volume.array.shape)
    return np.clip(np.asarray(out[0].detach().cpu(), dtype=np.float32), 0.0, 1.0)


@dataclass
class Explanation:
    """A Grad-CAM map on the source grid (column, row, slice) in [0, 1] and what it explains."""

    heatmap: np.ndarray
    class_index: int
    class_name: str
    probabilities: np.ndarray


def load_hookable_network(root: Path, inference: Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """A fresh instance of the bundle's ``network_def`` (from ``inference``) with the weights of
    ``<root>/models/model.pt`` (a state dict, or a checkpoint dict with a ``model`` entry), in eval
    mode on ``device``: a module Grad-CAM can hook, unlike TorchScript."""
    from monai.bundle import ConfigParser

    model_pt = Path(root) / "models" / "model.pt"
    if not model_pt.is_file():
        raise ValueError(f"{model_pt} is missing: Grad-CAM needs the state dict (TorchScript takes no hooks)")
    parser = ConfigParser()
    parser.read_config(str(inference))
    parser["bundle_root"] = str(root)
    if "network_def" not in parser.get():
        raise ValueError(f"{inference} has no network_def: Grad-CAM needs the network as Python modules")
    network = parser.get_parsed_content("network_def", lazy=False)
    state = torch.load(str(model_pt), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{model_pt} does not fit the network_def of {inference}: {exc}") from exc
    return network.to(device).eval()


def explain_image(network: torch.nn.Module, image: torch.Tensor, volume: Volume, names: Mapping[int, str],
                  class_index: int | None = None, target_layer: str | None = None) -> Explanation:
    """Grad-CAM of ``network`` on ``image``, the channel-first output of the bundle's preprocessing
    for ``volume`` (a ``MetaTensor`` whose affine maps its voxels to RAS mm; a plain tensor is taken
    to be on the volume's own grid); the map comes back on ``volume``'s grid. ``names`` maps class
    indices to names (``channel_def``)."""
    from pipelines.bundle import ras_affine

    affine = np.asarray(getattr(image, "affine", torch.as_tensor(ras_affine(volume))), dtype=np.float64)
    heat, index, probabilities = gradcam_map(network, image, class_index, target_layer)
    return Explanation(
        heatmap=to_source_grid(heat, affine, volume),
        class_index=index,
        class_name=names.get(index) or f"class {index}",
        probabilities=probabilities,
    )


def explain_bundle(pipeline, volume: Volume, class_index: int | None = None,
                   target_layer: str | None = None) -> Explanation:
    """Grad-CAM for a classification bundle served by ``pipeline`` (a
    :class:`pipelines.bundle.BundlePipeline`): its preprocessing, its ``network_def`` +
    ``models/model.pt``; the map comes back on ``volume``'s grid."""
    from pipelines.bundle import to_meta_tensor

    pipeline.load()
    network = getattr(pipeline, "explain_network", None) or load_hookable_network(
        pipeline.files.root, pipeline.files.inference, pipeline.device or "cpu")
    key = pipeline.format.input_key
    data = {key: to_meta_tensor(volume)}
    if pipeline.preprocessing is not None:
        data = pipeline.preprocessing(data)
    return explain_image(network, data[key], volume, pipeline.format.names, class_index, target_layer)


def write_heatmap_seg(volume: Volume, heatmap: np.ndarray, name: str, identity: ResultIdentity) -> Dataset:
    """A FRACTIONAL SEG (probability, 8 bit, max value 255) with one segment holding ``heatmap``
    (shape ``volume.array.shape``, values in [0, 1]); slices where the map is 0 are omitted."""
    if heatmap.shape != volume.array.shape:
        raise ValueError(f"heatmap shape {heatmap.shape} differs from the volume shape {volume.array.shape}")
    if not (heatmap > 0).any():
        raise ValueError(f"the Grad-CAM map of {name!r} is zero everywhere: a SEG needs at least one frame")
    spec = SegmentSpec(label=1, name=f"Grad-CAM {name}"[:64], category=SALIENCY_CATEGORY,
                       type=CodeSpec(value="GRADCAM", scheme="99RADNODE", meaning="Grad-CAM relevance"))
    frames = np.ascontiguousarray(np.clip(heatmap, 0.0, 1.0).transpose(2, 1, 0))
    if volume.is_multiframe:
        frames = frames[np.argsort([f.frame_number for f in volume.frames])]
    algorithm = hd.AlgorithmIdentificationSequence(
        name=identity.algorithm_name, version=identity.algorithm_version,
        family=hd.sr.CodedConcept("123109", "DCM", "Artificial Intelligence"), source=MANUFACTURER,
    )
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label=spec.name, segmented_property_category=coded(spec.category),
        segmented_property_type=coded(spec.type), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm, tracking_uid=identity.uid("gradcam-segment", 1), tracking_id=spec.name,
    )
    first = volume.frames[0].dataset
    return hd.seg.Segmentation(
        source_images=[first] if volume.is_multiframe else [f.dataset for f in volume.frames],
        pixel_array=frames[..., None].astype(np.float32),
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        segment_descriptions=[description],
        series_instance_uid=identity.series_uid("gradcam"),
        series_number=GRADCAM_SERIES_NUMBER,
        sop_instance_uid=identity.uid("gradcam", 0),
        instance_number=1,
        **seg_creator_attributes(identity),
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        max_fractional_value=255,
        content_label=GRADCAM_CONTENT_LABEL,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=identity.series_description(f"Grad-CAM {name}"),
    )
