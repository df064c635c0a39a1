"""Series to volume: DICOM files in any order -> one float32 array with a 4x4 LPS affine.

Conventions (used by every module of ``pipelines``):

* ``Volume.array`` has shape ``(columns, rows, slices)`` and is indexed ``array[i, j, k]`` with
  ``i`` the column index, ``j`` the row index of a frame and ``k`` the slice index (the ITK/NIfTI
  voxel order). Values are real-world values after Rescale Slope/Intercept (PS3.3 C.7.6.16.2.9).
* ``Volume.affine`` maps the homogeneous voxel index ``(i, j, k, 1)`` to patient coordinates in mm
  in the DICOM LPS patient coordinate system (PS3.3 C.7.6.2.1.1): column 0 is the row direction
  cosine times the column spacing (Pixel Spacing[1]), column 1 the column direction cosine times the
  row spacing (Pixel Spacing[0]), column 2 the step from one slice origin to the next, column 3 the
  Image Position (Patient) of the first slice (centre of its first transmitted pixel).
* Slices are sorted by their position along the slice normal (row cosine x column cosine), never by
  file order or Instance Number, so ``k`` increases along the normal.

Enhanced multi-frame images (PS3.3 C.7.6.16, per-frame and shared functional groups) are
expanded into their frames; each frame is one slice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from pipelines.base import PipelineRefusal

#: Largest allowed difference between two direction cosines (unitless) of one series.
ORIENTATION_TOLERANCE = 1e-3
#: Allowed deviation of one slice step from the median step, as a fraction of the median spacing.
SPACING_TOLERANCE = 0.05
#: Allowed in-plane pixel spacing difference between slices, in mm.
PIXEL_SPACING_TOLERANCE_MM = 1e-3


@dataclass(frozen=True)
class Frame:
    """One 2D image of the series: a single-frame instance or one frame of a multi-frame instance.

    ``frame_number`` is 1-based (PS3.3 C.7.6.16) or ``None`` for a single-frame instance. Positions
    and cosines are in mm / unitless in LPS; ``pixel_spacing`` is (row spacing, column spacing) mm.
    """

    dataset: Dataset
    frame_number: int | None
    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    slope: float
    intercept: float


@dataclass
class Volume:
    """A 3D image on a regular grid; see the module docstring for the axis and affine conventions.

    ``frames[k]`` is the source frame of slice ``k`` (its dataset, as read, for referencing in
    result objects).
    """

    array: np.ndarray
    affine: np.ndarray
    frames: list[Frame]

    @property
    def datasets(self) -> list[Dataset]:
        """Source datasets in slice order, each once (a multi-frame instance appears once)."""
        seen: dict[str, Dataset] = {}
        for frame in self.frames:
            seen.setdefault(frame.dataset.SOPInstanceUID, frame.dataset)
        return list(seen.values())

    @property
    def is_multiframe(self) -> bool:
        return self.frames[0].frame_number is not None

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size along (i, j, k) in mm."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in mL (= cm^3): |det(affine[:3, :3])| mm^3 / 1000."""
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0

    @property
    def modality(self) -> str:
        return str(self.frames[0].dataset.get("Modality", ""))


def read_datasets(paths: Iterable[Path | str]) -> list[Dataset]:
    """Read DICOM files (pixel data still encoded; decoding happens in :func:`build_volume`)."""
    return [pydicom.dcmread(str(path)) for path in paths]


def is_localizer_or_derived(ds: Dataset) -> bool:
    """True for images that are not part of the acquired volume: Image Type (PS3.3 C.7.6.1.1.2)
    contains LOCALIZER, or starts with DERIVED\\SECONDARY (reformats, screenshots, MIPs)."""
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "LOCALIZER" in image_type:
        return True
    return image_type[:2] == ["DERIVED", "SECONDARY"]


def _functional_item(ds: Dataset, index: int, sequence: str) -> Dataset | None:
    """The ``sequence`` item for frame ``index`` (0-based): per-frame first, then shared groups."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    candidates = ([per_frame[index]] if index < len(per_frame) else []) + ([shared[0]] if shared else [])
    for item in candidates:
        if sequence in item and len(item[sequence].value) > 0:
            return item[sequence].value[0]
    return None


def _frames_of(ds: Dataset) -> list[Frame]:
    """Geometry of every frame of one instance; refuses when geometry attributes are missing."""
    uid = ds.get("SOPInstanceUID", "?")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise PipelineRefusal(f"instance {uid} is not a grayscale image (SamplesPerPixel != 1)")
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        frames = []
        for index in range(int(ds.get("NumberOfFrames", 1))):
            position = _functional_item(ds, index, "PlanePositionSequence")
            orientation = _functional_item(ds, index, "PlaneOrientationSequence")
            measures = _functional_item(ds, index, "PixelMeasuresSequence")
            if position is None or orientation is None or measures is None or "PixelSpacing" not in measures:
                raise PipelineRefusal(
                    f"frame {index + 1} of multi-frame instance {uid} has no plane position, plane "
                    "orientation or pixel measures (PS3.3 C.7.6.16.2)"
                )
            transform = _functional_item(ds, index, "PixelValueTransformationSequence")
            source = transform if transform is not None else ds
            frames.append(
                Frame(
                    dataset=ds,
                    frame_number=index + 1,
                    position=np.asarray(position.ImagePositionPatient, dtype=np.float64),
                    orientation=np.asarray(orientation.ImageOrientationPatient, dtype=np.float64),
                    pixel_spacing=(float(measures.PixelSpacing[0]), float(measures.PixelSpacing[1])),
                    slope=float(source.get("RescaleSlope", 1.0) or 1.0),
                    intercept=float(source.get("RescaleIntercept", 0.0) or 0.0),
                )
            )
        return frames
    missing = [k for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing") if not ds.get(k)]
    if missing:
        raise PipelineRefusal(f"instance {uid} has no {', '.join(missing)}: the volume geometry is unknown")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise PipelineRefusal(f"instance {uid} has several frames but no functional groups for their geometry")
    return [
        Frame(
            dataset=ds,
            frame_number=None,
            position=np.asarray(ds.ImagePositionPatient, dtype=np.float64),
            orientation=np.asarray(ds.ImageOrientationPatient, dtype=np.float64),
            pixel_spacing=(float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])),
            slope=float(ds.get("RescaleSlope", 1.0) or 1.0),
            intercept=float(ds.get("RescaleIntercept", 0.0) or 0.0),
        )
    ]


def _check_uniform_grid(frames: Sequence[Frame]) -> np.ndarray:
    """Check that the (already sorted) frames form one regular grid; return the slice step (mm, LPS)."""
    first = frames[0]
    rows, cols = int(first.dataset.Rows), int(first.dataset.Columns)
    for frame in frames[1:]:
        if (int(frame.dataset.Rows), int(frame.dataset.Columns)) != (rows, cols):
            raise PipelineRefusal(
                f"mixed image sizes in the series: {rows}x{cols} and "
                f"{int(frame.dataset.Rows)}x{int(frame.dataset.Columns)} (rows x columns)"
            )
        if np.max(np.abs(frame.orientation - first.orientation)) > ORIENTATION_TOLERANCE:
            raise PipelineRefusal(
                "mixed image orientations in the series: "
                f"{np.round(first.orientation, 4).tolist()} and {np.round(frame.orientation, 4).tolist()}"
            )
        if max(abs(a - b) for a, b in zip(frame.pixel_spacing, first.pixel_spacing)) > PIXEL_SPACING_TOLERANCE_MM:
            raise PipelineRefusal(
                f"mixed pixel spacings in the series: {first.pixel_spacing} and {frame.pixel_spacing} mm"
            )
    steps = np.diff(np.stack([f.position for f in frames]), axis=0)
    lengths = np.linalg.norm(steps, axis=1)
    if np.any(lengths < 1e-3):
        k = int(np.argmin(lengths))
        raise PipelineRefusal(
            f"two images share the position {np.round(frames[k].position, 3).tolist()} mm: several "
            "volumes (echoes, phases, repeats) in one series are not supported"
        )
    median_step = np.median(steps, axis=0)
    spacing = float(np.linalg.norm(median_step))
    deviation = np.linalg.norm(steps - median_step, axis=1)
    worst = int(np.argmax(deviation))
    if deviation[worst] > SPACING_TOLERANCE * spacing:
        kind = "gap" if lengths[worst] > spacing else "uneven spacing"
        raise PipelineRefusal(
            f"{kind} between slices {worst} and {worst + 1}: step {lengths[worst]:.3f} mm where the "
            f"series spacing is {spacing:.3f} mm (tolerance {SPACING_TOLERANCE:.0%}); missing or extra images?"
        )
    return (frames[-1].position - frames[0].position) / (len(frames) - 1)


def _pixels(frames: Sequence[Frame]) -> np.ndarray:
    """Decode pixel data (any transfer syntax with a pydicom/pylibjpeg decoder) into (k, row, col)."""
    out = np.empty((len(frames), int(frames[0].dataset.Rows), int(frames[0].dataset.Columns)), np.float32)
    decoded: dict[str, np.ndarray] = {}
    for k, frame in enumerate(frames):
        uid = frame.dataset.SOPInstanceUID
        if uid not in decoded:
            try:
                decoded[uid] = frame.dataset.pixel_array
            except Exception as exc:  # noqa: BLE001 - every decoder failure becomes a refusal message
                raise PipelineRefusal(f"cannot decode pixel data of instance {uid}: {exc}") from exc
        pixels = decoded[uid]
        plane = pixels[frame.frame_number - 1] if frame.frame_number is not None and pixels.ndim == 3 else pixels
        out[k] = plane.astype(np.float32) * np.float32(frame.slope) + np.float32(frame.intercept)
    return out


def build_volume(datasets: Sequence[Dataset]) -> Volume:
    """Build a :class:`Volume` from the instances of one series (any order).

    Localizers and DERIVED\\SECONDARY images are dropped first. Raises :class:`PipelineRefusal`
    for missing geometry, mixed orientations/sizes/pixel spacings, duplicate positions, gaps or
    uneven slice spacing (beyond :data:`SPACING_TOLERANCE`), or fewer than two slices.
    """
    images = [ds for ds in datasets if "PixelData" in ds and not is_localizer_or_derived(ds)]
    if not images:
        raise PipelineRefusal("the series has no original images (only localizers, derived images or no pixel data)")
    frames = [frame for ds in images for frame in _frames_of(ds)]
    if len(frames) < 2:
        raise PipelineRefusal("the series has a single slice: a volume needs at least two")
    row_cosine, col_cosine = frames[0].orientation[:3], frames[0].orientation[3:]
    normal = np.cross(row_cosine, col_cosine)
    frames.sort(key=lambda f: float(np.dot(f.position, normal)))
    step = _check_uniform_grid(frames)
    row_spacing, col_spacing = frames[0].pixel_spacing
    affine = np.eye(4)
    affine[:3, 0] = row_cosine * col_spacing
    affine[:3, 1] = col_cosine * row_spacing
    affine[:3, 2] = step
    affine[:3, 3] = frames[0].position
    array = np.ascontiguousarray(_pixels(frames).transpose(2, 1, 0))
    return Volume(array=array, affine=affine, frames=frames)


def load_series(paths: Iterable[Path | str]) -> Volume:
    """Read files and build their volume: :func:`read_datasets` then :func:`build_volume`."""
    return build_volume(read_datasets(paths))
