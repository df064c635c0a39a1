"""Segmentation (SEG) objects on the source grid (PS3.3 A.51, C.8.20) written with highdicom.

Formats (``seg_format``):

* ``binary``: Segmentation Storage (1.2.840.10008.5.1.4.1.1.66.4), 1 bit per pixel.
* ``fractional``: same SOP class, 8-bit frames holding 0 or ``max_fractional_value`` (PROBABILITY).
* ``auto``: ``binary`` when Rows*Columns is a multiple of 8, else ``fractional``: bit-packed frames
  that do not end on a byte boundary never load in OHIF over Orthanc (FIELD-NOTES.md).
* ``labelmap``: Label Map Segmentation Storage (1.2.840.10008.5.1.4.1.1.66.7), one integer per pixel;
  shown by OHIF only and refused by some archives.

Frames are the source frames (one per slice with any segment; empty frames are omitted) and each
references its source image (Derivation Image, Referenced Series Sequence), so viewers place every
mask pixel exactly on the source pixel it came from.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from pipelines.settings import CodeSpec, SegFormat, SegmentSpec
from pipelines.volume import Volume
from pipelines.writers.common import MANUFACTURER, SERIES_NUMBERS, ResultIdentity, seg_creator_attributes

LABELMAP_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.7"


def coded(spec: CodeSpec) -> hd.sr.CodedConcept:
    """A highdicom coded concept from a settings :class:`CodeSpec`."""
    return hd.sr.CodedConcept(value=spec.value, scheme_designator=spec.scheme, meaning=spec.meaning)


def resolve_format(seg_format: SegFormat, rows: int, columns: int) -> str:
    """The concrete segmentation type for ``seg_format`` on frames of ``rows`` x ``columns`` pixels."""
    if seg_format == "auto":
        return "binary" if (rows * columns) % 8 == 0 else "fractional"
    return seg_format


def _frame_order(volume: Volume) -> np.ndarray:
    """Permutation from slice index k to the order highdicom expects the mask frames in."""
    if volume.is_multiframe:
        # One multi-frame source: pixel_array frames follow the source frame numbers.
        return np.argsort([f.frame_number for f in volume.frames])
    return np.arange(len(volume.frames))


def write_seg(
    volume: Volume,
    labels: np.ndarray,
    segments: Sequence[SegmentSpec],
    identity: ResultIdentity,
    *,
    seg_format: SegFormat = "auto",
    uid_kind: str = "seg",
) -> Dataset:
    """Write a SEG with one segment per ``segments`` entry.

    ``labels`` is an integer label map on the volume grid (shape ``volume.array.shape``, indexed
    (column, row, slice), 0 = background); segment ``n`` (1-based, in ``segments`` order) holds the
    voxels equal to ``segments[n-1].label``. Returns a highdicom ``Segmentation`` (a pydicom Dataset).
    ``uid_kind`` names the object for its stable SOP Instance UID (another value for a fallback copy).
    """
    if labels.shape != volume.array.shape:
        raise ValueError(f"label map shape {labels.shape} differs from the volume shape {volume.array.shape}")
    if not segments:
        raise ValueError("a SEG needs at least one segment")
    first = volume.frames[0].dataset
    kind = resolve_format(seg_format, int(first.Rows), int(first.Columns))
    order = _frame_order(volume)
    # (i, j, k) -> (k, row j, column i), then into the source frame order.
    frames = np.ascontiguousarray(labels.transpose(2, 1, 0))[order]
    if kind == "labelmap":
        pixel_array = np.zeros(frames.shape, dtype=np.uint16 if len(segments) > 255 else np.uint8)
        for number, spec in enumerate(segments, start=1):
            pixel_array[frames == spec.label] = number
        segmentation_type = hd.seg.SegmentationTypeValues.LABELMAP
    else:
        stacked = np.stack([frames == spec.label for spec in segments], axis=-1)
        if kind == "binary":
            pixel_array = stacked
            segmentation_type = hd.seg.SegmentationTypeValues.BINARY
        elif kind == "fractional":
            pixel_array = stacked.astype(np.float32)
            segmentation_type = hd.seg.SegmentationTypeValues.FRACTIONAL
        else:
            raise ValueError(f"unknown seg_format {seg_format!r}")
    algorithm = hd.AlgorithmIdentificationSequence(
        name=identity.algorithm_name,
        version=identity.algorithm_version,
        family=hd.sr.CodedConcept("123109", "DCM", "Artificial Intelligence"),
        source=MANUFACTURER,
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=spec.name,
            segmented_property_category=coded(spec.category),
            segmented_property_type=coded(spec.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=identity.uid("seg-segment", number),
            tracking_id=spec.name,
        )
        for number, spec in enumerate(segments, start=1)
    ]
    source_images = [first] if volume.is_multiframe else [f.dataset for f in volume.frames]
    seg = hd.seg.Segmentation(
        source_images=source_images,
        pixel_array=pixel_array,
        segmentation_type=segmentation_type,
        segment_descriptions=descriptions,
        series_instance_uid=identity.series_uid("seg"),
        series_number=SERIES_NUMBERS["seg"],
        sop_instance_uid=identity.uid(uid_kind, 0),
        instance_number=1,
        **seg_creator_attributes(identity),
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        max_fractional_value=255,
        content_label=_content_label(identity.pipeline_name),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=identity.series_description("segmentation"),
    )
    return seg


def _content_label(name: str) -> str:
    """Content Label (CS, 16 chars, upper case letters, digits, space and underscore; PS3.5 6.2)."""
    cleaned = "".join(c if c.isalnum() else "_" for c in name.upper())
    return (cleaned or "SEGMENTATION")[:16]
