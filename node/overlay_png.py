"""A PNG of a mask over its image on three orthogonal slices, for people to look at."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.volume import Volume

TINT = np.array([230, 60, 60], dtype=np.float32)


def _window(image: np.ndarray) -> np.ndarray:
    low, high = np.percentile(image, [1, 99])
    return np.clip((image - low) / max(high - low, 1e-6), 0, 1)


def _panel(image: np.ndarray, mask: np.ndarray, pixel_size: tuple[float, float], height: int) -> Image.Image:
    """image/mask indexed (row, column); pixel_size (row mm, column mm); resized to ``height`` px."""
    grey = (_window(image)[..., None] * 255).repeat(3, axis=2)
    rgb = np.where(mask[..., None], 0.55 * grey + 0.45 * TINT, grey).astype(np.uint8)
    rows, cols = image.shape
    width = int(round(height * (cols * pixel_size[1]) / (rows * pixel_size[0])))
    return Image.fromarray(rgb).resize((width, height), Image.BILINEAR)


def write_overlay_png(volume: Volume, mask: np.ndarray, path: Path, height: int = 320) -> Path:
    """Axial, coronal and sagittal slices through the mask's centre, side by side (axes as stored:
    axial rows/columns as acquired, coronal and sagittal with the slice axis upwards)."""
    sx, sy, sz = volume.spacing_mm
    centre = np.argwhere(mask).mean(axis=0).round().astype(int) if mask.any() else np.array(mask.shape) // 2
    i, j, k = (int(c) for c in centre)
    data = volume.array
    panels = [
        _panel(data[:, :, k].T, mask[:, :, k].T, (sy, sx), height),
        _panel(data[:, j, :].T[::-1], mask[:, j, :].T[::-1], (sz, sx), height),
        _panel(data[i, :, :].T[::-1], mask[i, :, :].T[::-1], (sz, sy), height),
    ]
    canvas = Image.new("RGB", (sum(p.width for p in panels) + 8 * (len(panels) - 1), height), "black")
    x = 0
    for panel in panels:
        canvas.paste(panel, (x, 0))
        x += panel.width + 8
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
