"""Kind ``bundle``: run a MONAI bundle from a local folder (MONAI Bundle specification; nothing is
downloaded).

Folder layout read (``<root>`` = ``BundleSettings.path``):

* ``configs/metadata.json``: ``name`` and ``version`` (the algorithm name and version written into
  every result), ``network_data_format.inputs`` (the first key is the input key, default ``image``;
  one channel only: radnode feeds one series) and ``network_data_format.outputs`` (the first key is
  the output key, default ``pred``; its ``channel_def`` names the labels or classes).
* ``configs/inference.json`` (or ``.yaml``/``.yml``): ``preprocessing``, ``inferer`` (default
  ``SimpleInferer``), ``postprocessing`` and, for ``models/model.pt``, ``network_def``. They are
  instantiated with :class:`monai.bundle.ConfigParser`, with ``bundle_root`` set to ``<root>`` and
  ``device`` to the selected device. File readers and writers are removed from the transform lists
  before parsing and again from the instantiated ``Compose`` objects (``LoadImage(d)`` from
  ``preprocessing``; ``SaveImage(d)``/``SaveClassification(d)`` from ``postprocessing``): the image
  comes from memory and results go out as DICOM only.
* ``models/model.ts`` (TorchScript; preferred when both exist) or ``models/model.pt`` (a state dict,
  or a checkpoint dict with a ``model`` entry, for ``network_def``).

Task, from ``network_data_format.outputs.<key>``: a *classification* bundle has ``type`` in
:data:`CLASSIFICATION_TYPES` or ``format`` in :data:`CLASSIFICATION_FORMATS` (the MONAI model zoo
writes ``"type": "probabilities", "format": "classes"``); every other bundle is a *segmentation*.

Geometry. :class:`pipelines.volume.Volume` is in DICOM LPS; MONAI and NIfTI use RAS, so the image
is handed to the preprocessing as a channel-first ``MetaTensor`` of shape ``(1, columns, rows,
slices)`` with ``affine = diag(-1, -1, 1, 1) @ volume.affine`` (what ``LoadImage`` would have
produced from the same series). The label map comes back to the source grid through the bundle's
own ``Invertd`` when its postprocessing has one; whatever grid the postprocessed output is still on
(its ``MetaTensor`` affine, else the preprocessed image's affine) is then resampled to the source
grid with nearest-neighbour interpolation, so a bundle without ``Invertd`` also gives a label map
on the source grid.

Segmentation output -> label map: several channels -> argmax over channels (logits, probabilities
and one-hot alike); one channel of integers -> the labels themselves; one channel of other values ->
``> 0.5``. Segments: every label named in ``channel_def`` (except 0, background), every label in
``BundleSettings.segments`` and every label found in the output, in label order. A label with a
configured :class:`~pipelines.settings.SegmentSpec` uses its name and codes; any other label keeps
its ``channel_def`` name (else ``Label N``) and gets the generic code SCT 85756007 "Tissue" as
category and type (:data:`GENERIC_TISSUE`), and a warning is logged when the model is loaded.
Choice: a missing code never refuses a series (a refusal is final and would fail every study the
route sends), but the SEG then says no more than "tissue"; configure ``segments`` for real codes.
A run whose output has no foreground at all is refused (a SEG needs at least one frame).

Segmentation confidence: the postprocessing runs in two parts, split before its first discretising
transform (``AsDiscrete(d)``, e.g. the argmax): what the first part gives (typically softmax +
``Invertd``) is read as per-channel probabilities (:func:`channel_probabilities`; values outside
[0, 1] get softmax or sigmoid) and resampled (trilinear) to the source grid. Each segment's
confidence is the mean probability of its label's channel over the voxels labelled with it; it goes
into the SR (``pipelines.writers.sr``) and the measurement ``<segment>_confidence`` (0..1). An
output that holds no probabilities (integer labels, or only 0 and 1) gives no confidence.

Classification output -> probabilities: the postprocessing without its discretising transforms
(``AsDiscrete(d)``), flattened to one value per class; values already in [0, 1] are taken as
probabilities, otherwise softmax (several classes) or sigmoid (one class) is applied. Class names
come from ``channel_def`` (else ``class N``); a class whose number has a configured segment uses
that segment's type code. The result is a TID 1500 SR with one qualitative evaluation and
probability per class; no overlay. With ``explain = "gradcam"`` (:mod:`pipelines.explain`) the run
also returns a Grad-CAM map of the most probable class as a FRACTIONAL SEG (its own series, stable
UIDs of kind ``gradcam``); the bundle then needs ``network_def`` and ``models/model.pt``, checked when
the pipeline is built.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydicom.dataset import Dataset

from pipelines.base import Pipeline, PipelineRefusal, PipelineResult, RuntimeOptions, SourceSeries
from pipelines.devices import select_device
from pipelines.explain import explain_image, load_hookable_network, to_source_grid, write_heatmap_seg
from pipelines.settings import BundleSettings, CodeSpec, SegmentSpec
from pipelines.volume import Volume, build_volume, read_datasets
from pipelines.writers.common import ResultIdentity
from pipelines.writers.overlay import write_overlay
from pipelines.writers.seg import write_seg
from pipelines.writers.sr import ClassFinding, SegmentVolume, write_sr

log = logging.getLogger(__name__)

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse
#: Category and type of a segment whose label has no configured codes (SNOMED CT "Tissue").
GENERIC_TISSUE = CodeSpec(value="85756007", scheme="SCT", meaning="Tissue")
CLASSIFICATION_TYPES = frozenset({"probabilities", "probability", "logits", "classes", "classification"})
CLASSIFICATION_FORMATS = frozenset({"classes", "class", "classification", "labels"})
#: Transforms removed from the bundle's transform lists before parsing (see the module docstring).
READERS = frozenset({"LoadImage", "LoadImaged"})
WRITERS = frozenset({"SaveImage", "SaveImaged", "SaveClassification", "SaveClassificationd"})
DISCRETISERS = frozenset({"AsDiscrete", "AsDiscreted"})
#: Largest difference (mm) between two affines that still counts as the same grid.
GRID_TOLERANCE_MM = 1e-3
INFERENCE_CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")


class BundleError(Exception):
    """The bundle folder or one of its files is malformed; the message names the file."""


@dataclass(frozen=True)
class BundleFiles:
    """The files of a bundle folder that radnode reads (see the module docstring)."""

    root: Path
    metadata: Path
    inference: Path
    model: Path

    @property
    def is_torchscript(self) -> bool:
        return self.model.suffix == ".ts"


def locate_bundle(root: Path) -> BundleFiles:
    """Check the folder layout of the bundle at ``root``; :class:`BundleError` names what is missing."""
    root = Path(root)
    if not root.is_dir():
        raise BundleError(f"bundle folder {root} does not exist or is not a folder")
    metadata = root / "configs" / "metadata.json"
    if not metadata.is_file():
        raise BundleError(f"bundle {root} has no {metadata} (the MONAI bundle metadata)")
    inference = next((root / "configs" / n for n in INFERENCE_CONFIG_NAMES if (root / "configs" / n).is_file()), None)
    if inference is None:
        raise BundleError(f"bundle {root} has no {root / 'configs' / 'inference.json'} (nor .yaml/.yml)")
    model = next((root / "models" / n for n in ("model.ts", "model.pt") if (root / "models" / n).is_file()), None)
    if model is None:
        raise BundleError(
            f"bundle {root} has no model file: expected {root / 'models' / 'model.ts'} (TorchScript) "
            f"or {root / 'models' / 'model.pt'} (state dict for network_def)"
        )
    return BundleFiles(root=root, metadata=metadata, inference=inference, model=model)


def read_metadata(path: Path) -> dict[str, Any]:
    """``configs/metadata.json`` as a dict; :class:`BundleError` naming the file if it is not a JSON object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise BundleError(f"{path} is not a JSON object")
    return data


@dataclass(frozen=True)
class DataFormat:
    """What ``network_data_format`` says: input/output keys, task and channel (label/class) names."""

    input_key: str
    output_key: str
    classification: bool
    names: dict[int, str]


def data_format(metadata: Mapping[str, Any], path: Path) -> DataFormat:
    """Read ``network_data_format`` of a bundle's metadata (``path`` is only for messages)."""
    fmt = metadata.get("network_data_format") or {}
    if not isinstance(fmt, Mapping):
        raise BundleError(f"{path}: network_data_format is not an object")
    inputs, outputs = fmt.get("inputs") or {}, fmt.get("outputs") or {}
    if not isinstance(inputs, Mapping) or not isinstance(outputs, Mapping):
        raise BundleError(f"{path}: network_data_format.inputs/outputs must be objects")
    input_key = next(iter(inputs), "image")
    output_key = next(iter(outputs), "pred")
    channels = int((inputs.get(input_key) or {}).get("num_channels", 1) or 1)
    if channels != 1:
        raise BundleError(
            f"{path}: input {input_key!r} has {channels} channels; radnode feeds one series (one channel)"
        )
    output = outputs.get(output_key) or {}
    kind, form = str(output.get("type", "image")).lower(), str(output.get("format", "")).lower()
    names: dict[int, str] = {}
    for key, value in (output.get("channel_def") or {}).items():
        try:
            names[int(key)] = str(value)
        except ValueError:
            raise BundleError(f"{path}: channel_def key {key!r} of output {output_key!r} is not an integer") from None
    return DataFormat(input_key, output_key, kind in CLASSIFICATION_TYPES or form in CLASSIFICATION_FORMATS, names)


def _target_name(item: Any) -> str | None:
    """The class name of a config item's ``_target_`` (``monai.transforms.LoadImaged`` -> ``LoadImaged``)."""
    if isinstance(item, Mapping) and isinstance(item.get("_target_"), str):
        return re.split(r"[.#]", item["_target_"])[-1]
    return None


def strip_transforms(config: Any, names: frozenset[str]) -> Any:
    """A copy of a transform config (a ``Compose`` dict, or a list) without items whose
    ``_target_`` class name is in ``names``; nested ``Compose`` lists are handled too."""
    if isinstance(config, list):
        return [strip_transforms(item, names) for item in config if _target_name(item) not in names]
    if isinstance(config, Mapping):
        out = dict(config)
        if isinstance(out.get("transforms"), list):
            out["transforms"] = strip_transforms(out["transforms"], names)
        return out
    return config


def drop_transform_instances(transform: Any, names: frozenset[str]) -> Any:
    """Remove, in place, the transforms whose class name is in ``names`` from an instantiated
    ``Compose`` (nested ones too); catches those a config reaches through ``@references``, which
    :func:`strip_transforms` cannot see. Returns ``transform``."""
    inner = getattr(transform, "transforms", None)
    if isinstance(inner, (list, tuple)):
        kept = [drop_transform_instances(t, names) for t in inner if type(t).__name__ not in names]
        transform.transforms = type(inner)(kept)
    return transform


def ras_affine(volume: Volume) -> np.ndarray:
    """The volume's voxel -> RAS mm affine (MONAI/NIfTI convention) from its LPS affine."""
    return RAS_TO_LPS @ volume.affine


def to_meta_tensor(volume: Volume):
    """The volume as a channel-first MONAI ``MetaTensor`` ``(1, columns, rows, slices)`` with its
    RAS affine, as ``LoadImage`` + ``EnsureChannelFirst`` would produce it."""
    from monai.data import MetaTensor

    affine = torch.as_tensor(ras_affine(volume), dtype=torch.float64)
    meta = {
        "original_channel_dim": 0,
        "spatial_shape": np.asarray(volume.array.shape),
        "original_affine": affine.clone(),
        "filename_or_obj": volume.frames[0].dataset.get("SeriesInstanceUID", "series"),
        "space": "RAS",
    }
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(volume.array[None], dtype=np.float32)),
                      affine=affine, meta=meta)


def resample_to_grid(labels: torch.Tensor, affine: np.ndarray, target_affine: np.ndarray,
                     target_shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resampling of a label map ``(X, Y, Z)`` with voxel -> mm ``affine`` onto the
    grid ``target_affine``/``target_shape`` (same patient space); voxels outside become 0."""
    if tuple(labels.shape) == tuple(target_shape) and np.allclose(affine, target_affine, atol=GRID_TOLERANCE_MM):
        return labels.cpu().numpy()
    from monai.data import MetaTensor
    from monai.transforms import SpatialResample

    # float32 holds every label up to 2**24 exactly and halves the memory of float64
    resampler = SpatialResample(mode="nearest", padding_mode="zeros", dtype=torch.float32)
    source = labels[None].to(torch.float32).cpu()
    out = resampler(MetaTensor(source, affine=torch.as_tensor(affine, dtype=torch.float64)),
                    dst_affine=torch.as_tensor(target_affine, dtype=torch.float64), spatial_size=tuple(target_shape))
    return np.rint(np.asarray(out[0].cpu())).astype(np.int64)


def label_map(output: torch.Tensor) -> torch.Tensor:
    """Integer label map ``(X, Y, Z)`` from a channel-first segmentation output (module docstring)."""
    if output.ndim != 4:
        raise RuntimeError(f"the segmentation output has shape {tuple(output.shape)}; expected (channels, X, Y, Z)")
    if output.shape[0] > 1:
        return output.argmax(dim=0)
    values = output[0]
    if values.is_floating_point() and not torch.equal(values, values.round()):
        return (values > 0.5).to(torch.int64)
    return values.to(torch.int64)


def class_probabilities(output: torch.Tensor) -> np.ndarray:
    """One probability per class from a classification output (module docstring)."""
    values = torch.as_tensor(output).detach().float().flatten().cpu()
    if values.numel() == 0:
        raise RuntimeError("the classification output is empty")
    if not (values.min() >= 0 and values.max() <= 1):
        values = torch.softmax(values, dim=0) if values.numel() > 1 else torch.sigmoid(values)
    return values.numpy().astype(np.float64)


def channel_probabilities(output: torch.Tensor) -> torch.Tensor | None:
    """Per-channel probabilities ``(C, X, Y, Z)`` float32 from a segmentation output taken before
    discretisation, or None when it holds none (module docstring): values in [0, 1] are taken as
    they are; otherwise softmax over channels (several) or sigmoid (one channel of non-integers);
    one channel of integers (labels) and maps holding only 0 and 1 (already discretised) give None."""
    values = torch.as_tensor(output).as_subclass(torch.Tensor).detach().float().cpu()
    if values.ndim != 4:
        raise RuntimeError(f"the segmentation output has shape {tuple(values.shape)}; expected (channels, X, Y, Z)")
    if not (values.min() >= 0 and values.max() <= 1):
        if values.shape[0] > 1:
            values = torch.softmax(values, dim=0)
        elif torch.equal(values, values.round()):
            return None
        else:
            values = torch.sigmoid(values)
    if bool(((values == 0) | (values == 1)).all()):
        return None
    return values


def _grid_affine(tensor: Any, processed: Any, volume: Volume) -> np.ndarray:
    """Voxel -> RAS mm of a bundle output: its own ``MetaTensor`` affine, else the preprocessed
    image's, else the volume's (module docstring, Geometry)."""
    from monai.data import MetaTensor

    if isinstance(tensor, MetaTensor):
        return np.asarray(tensor.affine, dtype=np.float64)
    if isinstance(processed, MetaTensor):
        return np.asarray(processed.affine, dtype=np.float64)
    return ras_affine(volume)


@dataclass(frozen=True)
class SegmentationOutput:
    """A bundle's segmentation of one volume: ``labels`` (integer map on the volume grid, column,
    row, slice) and ``confidence`` (label -> mean probability in [0, 1] of that label over its
    voxels; labels without a probability channel are absent)."""

    labels: np.ndarray
    confidence: dict[int, float]


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "label"


class BundlePipeline(Pipeline):
    """A MONAI bundle folder as a radnode pipeline; see the module docstring for the contract.

    Construction checks the folder layout and reads ``metadata.json`` (cheap, so a wrong path fails
    at once); :meth:`load` parses ``inference`` and loads the network onto the device once.
    """

    def __init__(self, name: str, settings: BundleSettings, runtime: RuntimeOptions) -> None:
        self.name = name
        self.settings = settings
        self.runtime = runtime
        self.files = locate_bundle(settings.path)
        self.metadata = read_metadata(self.files.metadata)
        self.format = data_format(self.metadata, self.files.metadata)
        self.algorithm_name = str(self.metadata.get("name") or self.files.root.name)[:64]
        self.algorithm_version = str(self.metadata.get("version") or "unknown")[:64]
        self._check_explain()
        self.device: torch.device | None = None
        self.network: torch.nn.Module | None = None
        #: The hookable network Grad-CAM uses (``explain = "gradcam"``), loaded by :meth:`load`.
        self.explain_network: torch.nn.Module | None = None
        self.preprocessing: Any = None
        self.inferer: Any = None
        self.postprocessing: Any = None
        self.load_time_s: float | None = None

    def _check_explain(self) -> None:
        """``explain = "gradcam"`` needs a classification bundle with a state dict for ``network_def``."""
        if self.settings.explain == "none":
            return
        where = f"pipeline {self.name} ({self.files.root})"
        if not self.format.classification:
            raise BundleError(f"{where}: explain = {self.settings.explain!r} needs a classification bundle; "
                              f"{self.files.metadata} describes a segmentation output")
        if not (self.files.root / "models" / "model.pt").is_file():
            raise BundleError(f"{where}: explain = {self.settings.explain!r} needs "
                              f"{self.files.root / 'models' / 'model.pt'} (a state dict for network_def): "
                              "TorchScript takes no Grad-CAM hooks")

    # ------------------------------------------------------------------------------------- loading

    def load(self) -> None:
        """Parse the inference config and load the network onto the device (idempotent)."""
        if self.network is not None:
            return
        start = time.perf_counter()
        from monai.bundle import ConfigParser
        from monai.inferers import SimpleInferer

        self.device = select_device(self.runtime)
        parser = ConfigParser()
        try:
            parser.read_config(str(self.files.inference))
        except Exception as exc:  # noqa: BLE001 - JSON/YAML errors of every kind name the file
            raise BundleError(f"cannot read {self.files.inference}: {exc}") from exc
        parser["bundle_root"] = str(self.files.root)
        if "device" in parser.get():
            parser["device"] = self.device
        post_strip = WRITERS | DISCRETISERS if self.format.classification else WRITERS
        if "preprocessing" in parser.get():
            parser["preprocessing"] = strip_transforms(parser["preprocessing"], READERS)
        if "postprocessing" in parser.get():
            parser["postprocessing"] = strip_transforms(parser["postprocessing"], post_strip)
        try:
            self.preprocessing = parser.get_parsed_content("preprocessing") if "preprocessing" in parser.get() else None
            self.inferer = parser.get_parsed_content("inferer") if "inferer" in parser.get() else SimpleInferer()
            self.postprocessing = (parser.get_parsed_content("postprocessing")
                                   if "postprocessing" in parser.get() else None)
        except Exception as exc:  # noqa: BLE001 - a bad component is a bundle error naming the file
            raise BundleError(f"{self.files.inference}: cannot instantiate its components: {exc}") from exc
        if self.preprocessing is not None:
            drop_transform_instances(self.preprocessing, READERS)
        if self.postprocessing is not None:
            drop_transform_instances(self.postprocessing, post_strip)
        self.network = self._load_network(parser)
        if self.settings.explain == "gradcam":
            try:
                self.explain_network = load_hookable_network(self.files.root, self.files.inference, self.device)
            except Exception as exc:  # noqa: BLE001 - a bad network_def or state dict names the bundle
                raise BundleError(f"pipeline {self.name}: cannot load the network for Grad-CAM: {exc}") from exc
            layers = dict(self.explain_network.named_modules())
            if self.settings.explain_layer is not None and self.settings.explain_layer not in layers:
                raise BundleError(f"pipeline {self.name}: explain_layer {self.settings.explain_layer!r} is not a "
                                  f"module of the network_def in {self.files.inference} (e.g. "
                                  f"{', '.join(repr(n) for n in list(layers)[1:6])})")
        self._warn_uncoded_labels()
        self.load_time_s = time.perf_counter() - start

    def _load_network(self, parser) -> torch.nn.Module:
        assert self.device is not None
        path = self.files.model
        try:
            if self.files.is_torchscript:
                with warnings.catch_warnings():  # torch 2.13 marks torch.jit.load deprecated; bundles ship model.ts
                    warnings.simplefilter("ignore", DeprecationWarning)
                    warnings.simplefilter("ignore", FutureWarning)
                    network = torch.jit.load(str(path), map_location=self.device)
            else:
                if "network_def" not in parser.get():
                    raise BundleError(f"{self.files.inference} has no network_def for the state dict {path}")
                network = parser.get_parsed_content("network_def")
                state = torch.load(str(path), map_location="cpu", weights_only=True)
                if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
                    state = state["model"]
                network.load_state_dict(state)
                network = network.to(self.device)
        except BundleError:
            raise
        except Exception as exc:  # noqa: BLE001 - corrupt or mismatched weights name the file
            raise BundleError(f"cannot load the model {path}: {exc}") from exc
        return network.eval()

    def _warn_uncoded_labels(self) -> None:
        configured = {spec.label for spec in self.settings.segments}
        uncoded = sorted(n for n in self.format.names if n > 0 and n not in configured)
        if uncoded and not self.format.classification:
            log.warning("pipeline %s: labels %s have no codes in [pipelines.%s] segments; their SEG segments are "
                        "coded as generic 'Tissue' (SCT 85756007)", self.name, uncoded, self.name)

    # ------------------------------------------------------------------------------------- running

    def identity(self, series_uid: str) -> ResultIdentity:
        return ResultIdentity(series_uid, self.name, self.algorithm_name, self.algorithm_version)

    @torch.no_grad()
    def infer(self, volume: Volume, *, keep_probabilities: bool = False
              ) -> tuple[torch.Tensor, dict[str, Any], Any]:
        """Preprocess, run the inferer and postprocess; returns (output, the data dict it came from,
        the output as it was before the first discretising transform of the postprocessing, or None
        unless ``keep_probabilities``)."""
        from monai.data import MetaTensor

        self.load()
        assert self.network is not None and self.device is not None
        key, out_key = self.format.input_key, self.format.output_key
        data: dict[str, Any] = {key: to_meta_tensor(volume)}
        if self.preprocessing is not None:
            data = self.preprocessing(data)
        if isinstance(data, list):  # a preprocessing that crops several patches: MONAI returns a list
            raise BundleError(f"{self.files.inference}: preprocessing returned {len(data)} samples, expected one")
        image = data[key]
        batch = torch.as_tensor(image).as_subclass(torch.Tensor)[None].to(self.device, torch.float32)
        prediction = self.inferer(batch, self.network)
        if isinstance(prediction, (tuple, list)):
            prediction = prediction[0]
        elif isinstance(prediction, Mapping):
            prediction = prediction.get(out_key, next(iter(prediction.values())))
        prediction = torch.as_tensor(prediction).as_subclass(torch.Tensor)[0].detach().cpu()
        if isinstance(image, MetaTensor):  # as MONAI's evaluators do: the prediction carries the image's grid
            image = image.cpu()
            prediction = MetaTensor(prediction, meta=copy.deepcopy(dict(image.meta)),
                                    applied_operations=copy.deepcopy(image.applied_operations))
            data[key] = image
        data[out_key] = prediction
        before_discretising = None
        if self.postprocessing is None:
            before_discretising = prediction if keep_probabilities else None
        elif keep_probabilities:
            from monai.transforms import Compose

            post = (self.postprocessing.flatten() if isinstance(self.postprocessing, Compose)
                    else Compose([self.postprocessing]))
            cut = next((i for i, t in enumerate(post.transforms) if type(t).__name__ in DISCRETISERS),
                       len(post.transforms))
            data = post(data, end=cut)
            before_discretising = data[out_key]
            data = post(data, start=cut)
        else:
            data = self.postprocessing(data)
        return data[out_key], data, before_discretising

    def segment(self, volume: Volume) -> np.ndarray:
        """Integer label map on the volume grid, shape ``volume.array.shape`` (column, row, slice)."""
        return self.segment_with_confidence(volume).labels

    def segment_with_confidence(self, volume: Volume) -> SegmentationOutput:
        """Label map on the volume grid and the confidence of each label in it (module docstring)."""
        output, data, before = self.infer(volume, keep_probabilities=True)
        processed = data.get(self.format.input_key)
        labels = resample_to_grid(label_map(torch.as_tensor(output).as_subclass(torch.Tensor)),
                                  _grid_affine(output, processed, volume), ras_affine(volume),
                                  volume.array.shape).astype(np.int64)
        confidence: dict[int, float] = {}
        probabilities = None if before is None else channel_probabilities(torch.as_tensor(before))
        if probabilities is not None:
            affine = _grid_affine(before, processed, volume)
            channels = probabilities.shape[0]
            for label in (int(n) for n in np.unique(labels) if n > 0):
                channel = label if channels > 1 else label - 1  # one channel: the probability of label 1
                if not 0 <= channel < channels:
                    continue  # the output has no probability for this label
                on_grid = to_source_grid(probabilities[channel].numpy(), affine, volume)
                confidence[label] = float(on_grid[labels == label].mean())
        return SegmentationOutput(labels=labels, confidence=confidence)

    def segment_specs(self, present: Sequence[int]) -> list[SegmentSpec]:
        """Segments to write, in label order (module docstring)."""
        configured = {spec.label: spec for spec in self.settings.segments}
        labels = sorted({n for n in self.format.names if n > 0} | set(configured) | {int(n) for n in present if n > 0})
        specs = []
        for label in labels:
            if label in configured:
                specs.append(configured[label])
            else:
                name = self.format.names.get(label) or f"Label {label}"
                specs.append(SegmentSpec(label=label, name=name[:64], category=GENERIC_TISSUE, type=GENERIC_TISSUE))
        return specs

    def classify(self, volume: Volume) -> list[ClassFinding]:
        """One :class:`ClassFinding` per output class, in class order."""
        output, _, _ = self.infer(volume)
        return self._findings(output)

    def _findings(self, output: torch.Tensor) -> list[ClassFinding]:
        probabilities = class_probabilities(output)
        configured = {spec.label: spec for spec in self.settings.segments}
        return [
            ClassFinding(
                name=self.format.names.get(index) or f"class {index}",
                probability=float(np.clip(p, 0.0, 1.0)),
                code=configured[index].type if index in configured else None,
            )
            for index, p in enumerate(probabilities)
        ]

    def run(self, series: SourceSeries) -> PipelineResult:
        """Read, check the modality, build the volume, run the bundle and write the results."""
        timings: dict[str, float] = {}
        if self.network is None:
            self.load()
            timings["load"] = self.load_time_s or 0.0
        start = time.perf_counter()
        datasets = read_datasets(series.files)
        timings["read"] = time.perf_counter() - start
        if self.settings.accepts_modality:
            modalities = sorted({str(ds.get("Modality", "")).upper() for ds in datasets})
            if not set(modalities) <= {m.upper() for m in self.settings.accepts_modality}:
                raise PipelineRefusal(
                    f"pipeline {self.name} accepts modality {'/'.join(self.settings.accepts_modality)}; "
                    f"the series has {'/'.join(modalities) or 'no modality'}"
                )
        start = time.perf_counter()
        volume = build_volume(datasets)
        timings["volume"] = time.perf_counter() - start
        identity = self.identity(series.series_instance_uid)
        if self.format.classification:
            return self._run_classification(volume, identity, timings)
        return self._run_segmentation(volume, identity, timings)

    def _run_classification(self, volume: Volume, identity: ResultIdentity, timings: dict[str, float]) -> PipelineResult:
        start = time.perf_counter()
        output, data, _ = self.infer(volume)
        findings = self._findings(output)
        timings["inference"] = time.perf_counter() - start
        measurements = {f"probability_{_slug(f.name)}": f.probability for f in findings}
        datasets: list[Dataset] = []
        if self.settings.explain == "gradcam":
            start = time.perf_counter()
            if self.explain_network is None:
                raise BundleError(f"pipeline {self.name}: explain = 'gradcam' but load() has not loaded its network")
            top = int(np.argmax([f.probability for f in findings]))
            explanation = explain_image(self.explain_network, data[self.format.input_key], volume, self.format.names,
                                        class_index=top, target_layer=self.settings.explain_layer)
            timings["explain"] = time.perf_counter() - start
            if explanation.heatmap.max() > 0:
                datasets.append(write_heatmap_seg(volume, explanation.heatmap, explanation.class_name, identity))
            else:  # a constant class score has no spatial explanation; the SR still goes out
                log.warning("pipeline %s: the Grad-CAM map of class %r is zero everywhere; no Grad-CAM SEG",
                            self.name, explanation.class_name)
        start = time.perf_counter()
        datasets.append(write_sr(volume.datasets, identity, findings=findings))
        timings["write"] = time.perf_counter() - start
        return PipelineResult(datasets=datasets, measurements=measurements, timings_s=timings)

    def _run_segmentation(self, volume: Volume, identity: ResultIdentity, timings: dict[str, float]) -> PipelineResult:
        start = time.perf_counter()
        segmented = self.segment_with_confidence(volume)
        labels = segmented.labels
        timings["inference"] = time.perf_counter() - start
        present = [int(n) for n in np.unique(labels) if n > 0]
        if not present:
            raise PipelineRefusal(f"the model of pipeline {self.name} found none of its segments in the series")
        start = time.perf_counter()
        specs = self.segment_specs(present)
        volumes = [
            SegmentVolume(number, spec, float(np.count_nonzero(labels == spec.label)) * volume.voxel_volume_ml,
                          confidence=segmented.confidence.get(spec.label))
            for number, spec in enumerate(specs, start=1)
        ]
        seg = write_seg(volume, labels, specs, identity, seg_format=self.settings.seg_format)
        outputs: list[Dataset] = [seg]
        fallbacks: dict[str, Dataset] = {}
        if self.settings.seg_format == "labelmap":  # archives that refuse LABELMAP get BINARY/FRACTIONAL
            fallbacks[seg.SOPInstanceUID] = write_seg(volume, labels, specs, identity, seg_format="auto",
                                                      uid_kind="seg-fallback")
        if self.settings.write_sr:
            sr = write_sr(volume.datasets, identity, seg=seg, volumes=volumes)
            outputs.append(sr)
            if fallbacks:
                fallbacks[sr.SOPInstanceUID] = write_sr(volume.datasets, identity,
                                                        seg=fallbacks[seg.SOPInstanceUID], volumes=volumes,
                                                        uid_kind="sr-fallback")
        if self.settings.write_overlay:
            outputs.extend(write_overlay(volume, labels, [spec.label for spec in specs], identity))
        timings["write"] = time.perf_counter() - start
        measurements = {f"{_slug(v.spec.name)}_volume_ml": v.volume_ml for v in volumes}
        measurements.update({f"{_slug(v.spec.name)}_confidence": v.confidence for v in volumes
                             if v.confidence is not None})
        return PipelineResult(datasets=outputs, measurements=measurements, timings_s=timings, fallbacks=fallbacks)


__all__ = ["BundleError", "BundlePipeline", "BundleFiles", "locate_bundle", "data_format", "strip_transforms", "drop_transform_instances",
           "to_meta_tensor", "resample_to_grid", "label_map", "class_probabilities", "channel_probabilities",
           "SegmentationOutput", "GENERIC_TISSUE"]
