"""Burned-in overlay: a Secondary Capture series (PS3.3 A.8.1) of RGB images showing the source
slice (windowed to 8 bits) with each segment's outline drawn and its inside lightly tinted.

For archives and viewers that cannot show SEG. One SC image is written per source slice that
contains any segment voxel (slices without mask add nothing a reader needs), in slice order, so the
series scrolls through the whole finding; ``max_images`` thins them out evenly when set. Each image
keeps the source slice's Patient Orientation and Pixel Spacing and names its slice in Image
Comments; Laterality is copied from the source (dciodvfy needs it; FIELD-NOTES).
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from pipelines.volume import Volume
from pipelines.writers.common import MANUFACTURER, SERIES_NUMBERS, ResultIdentity, copy_laterality, software_version

#: Outline colours (RGB) of segments 1, 2, ... (repeats after the last).
COLORS = ((255, 215, 0), (0, 200, 255), (255, 64, 64), (64, 255, 64), (255, 0, 255))
TINT = 0.25


def _orientation_letters(cosine: np.ndarray) -> str:
    """Patient Orientation letters for one LPS direction cosine (PS3.3 C.7.6.1.1.1), largest first."""
    letters = []
    for axis in np.argsort(-np.abs(cosine)):
        if abs(cosine[axis]) < 1e-3 or len(letters) == 3:
            break
        letters.append(("RL", "AP", "FH")[axis][int(cosine[axis] > 0)])
    return "".join(letters)


def _window(volume: Volume) -> tuple[float, float]:
    """(low, high) grey levels mapped to 0..255: the source VOI window when present, else the
    0.5th..99.5th percentile of the volume (real-world values)."""
    ds = volume.frames[0].dataset
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None:
        center = float(center[0] if isinstance(center, Sequence) and not isinstance(center, str) else center)
        width = float(width[0] if isinstance(width, Sequence) and not isinstance(width, str) else width)
        if width > 0:
            return center - width / 2, center + width / 2
    low, high = np.percentile(volume.array[::2, ::2, ::2], [0.5, 99.5])
    return float(low), float(max(high, low + 1e-6))


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of a 2D mask with a 4-neighbour outside the mask."""
    padded = np.pad(mask, 1)
    interior = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def render_slice(image: np.ndarray, labels: np.ndarray, label_values: Sequence[int], window: tuple[float, float]) -> np.ndarray:
    """RGB uint8 (rows, columns, 3) of one slice given as (row, column) arrays."""
    low, high = window
    grey = np.clip((image - low) / (high - low) * 255.0, 0, 255).astype(np.float32)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for index, value in enumerate(label_values):
        color = np.asarray(COLORS[index % len(COLORS)], dtype=np.float32)
        inside = labels == value
        rgb[inside] = (1 - TINT) * rgb[inside] + TINT * color
        rgb[_outline(inside)] = color
    return np.round(rgb).astype(np.uint8)


def write_overlay(
    volume: Volume,
    labels: np.ndarray,
    label_values: Sequence[int],
    identity: ResultIdentity,
    *,
    max_images: int | None = None,
) -> list[Dataset]:
    """Secondary Capture images (RGB, 8 bit) of the slices where ``labels`` (shape of
    ``volume.array``, (column, row, slice)) has any of ``label_values``; empty list if none."""
    present = np.isin(labels, list(label_values))
    slices = np.flatnonzero(present.any(axis=(0, 1)))
    if max_images is not None and len(slices) > max_images:
        slices = slices[np.unique(np.round(np.linspace(0, len(slices) - 1, max_images)).astype(int))]
    window = _window(volume)
    row_cosine, col_cosine = volume.frames[0].orientation[:3], volume.frames[0].orientation[3:]
    orientation = (_orientation_letters(row_cosine), _orientation_letters(col_cosine))
    images: list[Dataset] = []
    for number, k in enumerate(slices, start=1):
        frame = volume.frames[int(k)]
        pixels = render_slice(volume.array[:, :, k].T, labels[:, :, k].T, label_values, window)
        if not images:
            sc = hd.sc.SCImage.from_ref_dataset(
                ref_dataset=frame.dataset,
                pixel_array=pixels,
                photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
                bits_allocated=8,
                coordinate_system=hd.CoordinateSystemNames.PATIENT,
                series_instance_uid=identity.series_uid("sc"),
                series_number=SERIES_NUMBERS["sc"],
                sop_instance_uid=identity.uid("sc", int(k)),
                instance_number=number,
                manufacturer=MANUFACTURER,
                pixel_spacing=frame.pixel_spacing,
                patient_orientation=(orientation[0][0], orientation[1][0]),  # highdicom takes one letter
                transfer_syntax_uid=ExplicitVRLittleEndian,
                series_description=identity.series_description("overlay"),
                software_versions=software_version(),
            )
            sc.PatientOrientation = list(orientation)  # oblique planes: up to 3 letters each
            sc.BurnedInAnnotation = "NO"
        else:
            sc = _next_image(images[0], identity.uid("sc", int(k)), number, pixels)
        copy_laterality(frame.dataset, sc)
        where = f"frame {frame.frame_number} of " if frame.frame_number is not None else ""
        sc.ImageComments = (
            f"{identity.ai_statement} Burned-in outline of the segmentation on {where}source image "
            f"{frame.dataset.SOPInstanceUID}."
        )
        source = Dataset()
        source.ReferencedSOPClassUID = frame.dataset.SOPClassUID
        source.ReferencedSOPInstanceUID = frame.dataset.SOPInstanceUID
        if frame.frame_number is not None:
            source.ReferencedFrameNumber = frame.frame_number
        sc.SourceImageSequence = [source]
        images.append(sc)
    return images


#: Attributes each image of the series sets for itself (all others are shared with the first image).
_PER_IMAGE = ("SOPInstanceUID", "InstanceNumber", "PixelData", "ImageComments", "SourceImageSequence", "Laterality",
              "ImageLaterality")


def _next_image(first: Dataset, sop_instance_uid: str, instance_number: int, pixels: np.ndarray) -> Dataset:
    """Another image of the series: the first image's elements (built and checked by highdicom)
    with its own SOP Instance UID, Instance Number and pixels. Everything else highdicom derives
    (patient, study, series, equipment, image format) is the same for every slice of one source
    series, and building each image through highdicom again costs ~4 ms, most of a 150-slice job's
    writing. The elements are shared, not copied, so the per-image ones are dropped and set anew
    (an assignment to a shared element would change the first image too)."""
    sc = Dataset()
    for element in first:
        if element.keyword not in _PER_IMAGE:
            sc.add(element)
    sc.file_meta = FileMetaDataset()
    for element in first.file_meta:
        if element.keyword != "MediaStorageSOPInstanceUID":
            sc.file_meta.add(element)
    sc.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid
    sc.SOPInstanceUID = sop_instance_uid
    sc.InstanceNumber = instance_number
    sc.PixelData = np.ascontiguousarray(pixels).tobytes()
    return sc
