"""Reading a SEG back onto the grid of its source volume (for the demo, evaluation and tests)."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np

from pipelines.volume import Volume


def seg_mask_on_volume(seg_path: Path, volume: Volume, segment_number: int = 1) -> np.ndarray:
    """Boolean mask ``(columns, rows, slices)`` of one segment, matched to ``volume`` through the
    source SOP Instance UIDs each SEG frame references (PS3.3 C.8.20.2, Derivation Image)."""
    seg = hd.seg.segread(seg_path)
    uids = [frame.dataset.SOPInstanceUID for frame in volume.frames]
    pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=[segment_number],
                                               assert_missing_frames_are_empty=True)
    return (pixels[..., 0] > 0).transpose(2, 1, 0)
