"""Built-in ``brain-extraction`` pipeline: T1-weighted MR head -> intracranial (brain) mask.

Weights: the two TorchScript networks shipped in the PyPI wheel ``deepbet`` (MIT), found through
the installed distribution's file list (``data/models/bbox_model.pt`` and ``model.pt``); nothing is
downloaded. Input contract of those networks, as read from deepbet 1.0.2 (re-implemented here):

1. Voxels reordered to the closest RAS+ orientation (axes i -> Right, j -> Anterior, k -> Superior
   of the NIfTI convention); no resampling to a fixed spacing.
2. Intensities: clip to the 0.5th..99.5th percentile (taken on a 128^3 nearest-neighbour
   downsample), scale to [0, 1], standardise to zero mean / unit variance, then ``0.226 x + 0.449``.
3. A localiser network on the whole head at 128^3 (nearest) gives a coarse brain mask; its largest
   component's bounding box (axis profile > 2 %), grown by 10 % of its size on each side, is
   cropped from the full-resolution image and resampled to 256^3 (nearest) for the main network.
4. Channel 1 of each network output is the brain probability. The main output is resampled back
   to the crop (nearest), thresholded, reduced to its largest 26-connected component and its
   enclosed holes filled.

Outputs: SEG ("Brain", SCT 12738006), TID 1500 SR with the brain volume in mL and the mask's
confidence, optional burned-in SC overlay series. Measurements: ``brain_volume_ml`` = mask voxels x
voxel volume (mL); ``brain_confidence`` = the mean, over the final mask's voxels, of the main
network's brain probability (step 4, brought back to the crop like the mask), a fraction in
[0, 1] that the SR reports in percent (``pipelines.writers.sr``).
"""

from __future__ import annotations

import importlib.metadata
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import cc3d
import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from pydicom.dataset import Dataset

from pipelines.base import Pipeline, PipelineRefusal, PipelineResult, RuntimeOptions, SourceSeries
from pipelines.devices import select_device
from pipelines.settings import BrainExtractionSettings, CodeSpec, SegmentSpec
from pipelines.volume import Volume, build_volume, read_datasets
from pipelines.writers.common import ResultIdentity
from pipelines.writers.overlay import write_overlay
from pipelines.writers.seg import write_seg
from pipelines.writers.sr import SegmentVolume, write_sr

BRAIN = SegmentSpec(label=1, name="Brain", type=CodeSpec(value="12738006", scheme="SCT", meaning="Brain"))
LOCALIZER_SHAPE = (128, 128, 128)
MAIN_SHAPE = (256, 256, 256)
BBOX_MARGIN = 0.1  # fraction of the box size added on each side
PROFILE_THRESHOLD = 0.02  # fraction of a plane that must be brain for the plane to be in the box
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def deepbet_weights() -> tuple[Path, Path]:
    """Paths of (localiser, main) TorchScript files of the installed ``deepbet`` distribution."""
    try:
        files = importlib.metadata.files("deepbet") or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise RuntimeError("the deepbet package (brain-extraction weights) is not installed") from exc
    found = {f.name: Path(f.locate()) for f in files if f.parent.name == "models" and f.name.endswith(".pt")}
    missing = {"bbox_model.pt", "model.pt"} - found.keys()
    if missing:
        raise RuntimeError(f"deepbet is installed but ships no {', '.join(sorted(missing))}")
    return found["bbox_model.pt"], found["model.pt"]


def _resize(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Nearest-neighbour ('nearest-exact', pixel-centre aligned) resampling of a 3D tensor."""
    return F.interpolate(x[None, None], size=shape, mode="nearest-exact")[0, 0]


def _standardise(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Step 2 of the module docstring."""
    scaled = ((x - low) / (high - low)).clamp(0.0, 1.0)
    return 0.226 * (scaled - scaled.mean()) / scaled.std() + 0.449


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean 3D mask (empty stays empty)."""
    labels = cc3d.connected_components(mask.astype(np.uint8), connectivity=26)
    if labels.max() == 0:
        return np.zeros(mask.shape, dtype=bool)
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    return labels == int(np.argmax(counts))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions (6-connected) that do not touch the array border."""
    labels = cc3d.connected_components((~mask).astype(np.uint8), connectivity=6)
    border = np.unique(
        np.concatenate([labels[0].ravel(), labels[-1].ravel(), labels[:, 0].ravel(), labels[:, -1].ravel(),
                        labels[:, :, 0].ravel(), labels[:, :, -1].ravel()])
    )
    holes = (labels > 0) & ~np.isin(labels, border)
    return mask | holes


@dataclass(frozen=True)
class BrainMask:
    """A brain mask (bool) and its confidence: the mean brain probability over the mask's voxels."""

    mask: np.ndarray
    confidence: float


def _bounding_box(coarse: np.ndarray, shape: tuple[int, int, int]) -> tuple[slice, slice, slice]:
    """Crop of the full image (``shape``) around the coarse mask, grown by :data:`BBOX_MARGIN`."""
    box = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(coarse.mean(axis=others) > PROFILE_THRESHOLD)
        if present.size == 0:
            raise PipelineRefusal("no head found in the image (the localiser network found no brain)")
        scale = shape[axis] / coarse.shape[axis]
        centre = scale * (present[0] + present[-1] + 1) / 2
        size = scale * (present[-1] + 1 - present[0]) * (1 + 2 * BBOX_MARGIN)
        centre, size = round(centre), round(size)
        box.append(slice(max(0, int(centre - size / 2)), min(shape[axis], int(centre + size / 2))))
    return tuple(box)  # type: ignore[return-value]


class BrainExtractionPipeline(Pipeline):
    """T1 MR head -> brain mask SEG + brain volume SR (+ overlay SC); see the module docstring."""

    algorithm_name = "deepbet"

    def __init__(self, name: str, settings: BrainExtractionSettings, runtime: RuntimeOptions) -> None:
        self.name = name
        self.settings = settings
        self.runtime = runtime
        try:
            self.algorithm_version = importlib.metadata.version("deepbet")
        except importlib.metadata.PackageNotFoundError:
            self.algorithm_version = "unknown"
        self.device: torch.device | None = None
        self._localiser: torch.jit.ScriptModule | None = None
        self._network: torch.jit.ScriptModule | None = None
        self.load_time_s: float | None = None

    def load(self) -> None:
        """Load both networks onto the device once (idempotent)."""
        if self._network is not None:
            return
        start = time.perf_counter()
        self.device = select_device(self.runtime)
        localiser_path, network_path = deepbet_weights()
        with warnings.catch_warnings():  # torch 2.13 marks torch.jit.load deprecated; deepbet ships TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            self._localiser = torch.jit.load(str(localiser_path), map_location=self.device).eval()
            self._network = torch.jit.load(str(network_path), map_location=self.device).eval()
        self.load_time_s = time.perf_counter() - start

    @torch.no_grad()
    def predict_canonical(self, image: np.ndarray) -> BrainMask:
        """Brain mask of a head image already in closest-RAS voxel order (steps 2-4), with its
        confidence (module docstring; 0.0 for an empty mask)."""
        assert self._localiser is not None and self._network is not None and self.device is not None
        x = torch.nan_to_num(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(self.device))
        small = _resize(x, LOCALIZER_SHAPE)
        low, high = torch.quantile(small, 0.005), torch.quantile(small, 0.995)
        if not high > low:
            raise PipelineRefusal("the image has no contrast (0.5th and 99.5th percentiles are equal)")
        coarse = self._localiser(_standardise(small, low, high)[None, None])[0, 1] > 0.5
        coarse = largest_component(coarse.cpu().numpy())
        box = _bounding_box(coarse, tuple(x.shape))
        crop = x[box]
        probability = self._network(_standardise(_resize(crop, MAIN_SHAPE), low, high)[None, None])[0, 1]
        # nearest resampling then threshold == threshold then nearest resampling (same source voxel)
        probability = _resize(probability, tuple(crop.shape)).cpu().numpy()
        inside = fill_holes(largest_component(probability > self.settings.threshold))
        mask = np.zeros(image.shape, dtype=bool)
        mask[box] = inside
        confidence = float(probability[inside].mean()) if inside.any() else 0.0
        return BrainMask(mask=mask, confidence=confidence)

    def segment(self, volume: Volume) -> np.ndarray:
        """Brain mask (bool) on the volume grid, shape ``volume.array.shape`` (column, row, slice)."""
        return self.segment_with_confidence(volume).mask

    def segment_with_confidence(self, volume: Volume) -> BrainMask:
        """Brain mask on the volume grid (column, row, slice) and its confidence."""
        self.load()
        ornt = nib.io_orientation(RAS_TO_LPS @ volume.affine)  # voxel axes -> closest RAS axes
        canonical = nib.orientations.apply_orientation(volume.array, ornt)
        found = self.predict_canonical(canonical)
        back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")), ornt)
        mask = np.ascontiguousarray(nib.orientations.apply_orientation(found.mask, back)).astype(bool)
        return BrainMask(mask=mask, confidence=found.confidence)

    def identity(self, series_uid: str) -> ResultIdentity:
        return ResultIdentity(series_uid, self.name, self.algorithm_name, self.algorithm_version)

    def run(self, series: SourceSeries) -> PipelineResult:
        """Read, build the volume, segment and write SEG (+ SR, + SC per settings)."""
        timings: dict[str, float] = {}
        if self._network is None:
            self.load()
            timings["load"] = self.load_time_s or 0.0
        start = time.perf_counter()
        datasets = read_datasets(series.files)
        timings["read"] = time.perf_counter() - start
        modalities = sorted({str(ds.get("Modality", "")) for ds in datasets})
        if modalities != ["MR"]:
            raise PipelineRefusal(f"brain extraction needs an MR series, got modality {'/'.join(modalities) or 'none'}")

        start = time.perf_counter()
        volume = build_volume(datasets)
        timings["volume"] = time.perf_counter() - start

        start = time.perf_counter()
        found = self.segment_with_confidence(volume)
        mask = found.mask
        timings["inference"] = time.perf_counter() - start
        if not mask.any():
            raise PipelineRefusal("no brain found in the series")

        start = time.perf_counter()
        identity = self.identity(series.series_instance_uid)
        labels = mask.astype(np.uint8)
        brain_volume_ml = float(np.count_nonzero(mask)) * volume.voxel_volume_ml
        volumes = [SegmentVolume(1, BRAIN, brain_volume_ml, confidence=found.confidence)]
        seg = write_seg(volume, labels, [BRAIN], identity, seg_format=self.settings.seg_format)
        outputs: list[Dataset] = [seg]
        fallbacks: dict[str, Dataset] = {}
        if self.settings.seg_format == "labelmap":  # archives that refuse LABELMAP get BINARY/FRACTIONAL
            fallback_seg = write_seg(volume, labels, [BRAIN], identity, seg_format="auto", uid_kind="seg-fallback")
            fallbacks[seg.SOPInstanceUID] = fallback_seg
        if self.settings.write_sr:
            sr = write_sr(volume.datasets, identity, seg=seg, volumes=volumes)
            outputs.append(sr)
            if fallbacks:
                fallbacks[sr.SOPInstanceUID] = write_sr(volume.datasets, identity, seg=fallbacks[seg.SOPInstanceUID],
                                                        volumes=volumes, uid_kind="sr-fallback")
        if self.settings.write_overlay:
            outputs.extend(write_overlay(volume, labels, [BRAIN.label], identity))
        timings["write"] = time.perf_counter() - start
        measurements = {"brain_volume_ml": brain_volume_ml, "brain_confidence": found.confidence}
        return PipelineResult(datasets=outputs, measurements=measurements, timings_s=timings,
                              fallbacks=fallbacks)
