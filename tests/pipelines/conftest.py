"""Fixtures of tests/pipelines: small oblique volumes and label maps on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.settings import CodeSpec, SegmentSpec
from pipelines.volume import Volume, load_series
from pipelines.writers.common import ResultIdentity
from tests.pipelines.synthetic import make_series

SEGMENTS = [
    SegmentSpec(label=1, name="Liver", type=CodeSpec(value="10200004", meaning="Liver")),
    SegmentSpec(label=2, name="Spleen", type=CodeSpec(value="78961009", meaning="Spleen")),
]


def load_oblique(folder: Path, columns: int, rows: int) -> Volume:
    return load_series(make_series(columns=columns, rows=rows, slices=6).write(folder))


@pytest.fixture
def oblique_volume(tmp_path: Path) -> Volume:
    """Oblique, anisotropic 24 x 20 x 6 volume (Rows*Columns = 480, a multiple of 8)."""
    return load_oblique(tmp_path / "source", columns=24, rows=20)


@pytest.fixture
def unaligned_volume(tmp_path: Path) -> Volume:
    """Oblique 23 x 19 x 6 volume (Rows*Columns = 437, not a multiple of 8)."""
    return load_oblique(tmp_path / "source", columns=23, rows=19)


def random_labels(shape: tuple[int, ...], seed: int = 1) -> np.ndarray:
    """Labels 0/1/2 scattered at random, with slice 0 left empty (an omitted SEG frame)."""
    labels = np.random.default_rng(seed).choice([0, 0, 1, 2], size=shape).astype(np.uint8)
    labels[:, :, 0] = 0
    return labels


def identity_for(volume: Volume) -> ResultIdentity:
    return ResultIdentity(volume.frames[0].dataset.SeriesInstanceUID, "test-pipeline", "TestNet", "2.1")
