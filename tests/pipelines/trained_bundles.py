"""Bundles trained once per test session and shared by tests/pipelines and tests/node (the
fixtures are registered in tests/conftest.py): the phantom segmentation bundle ``pipelines.training``
writes, and the Grad-CAM blob classifier of :mod:`tests.pipelines.bundle_builder`.

Tests treat both folders as read-only; each test writes its own files into its own temporary folder.
torch, MONAI and the builders are imported when a fixture first runs, so registering the fixtures
costs test sessions that never use them nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pipelines.training import TrainingResult


@dataclass(frozen=True)
class TrainedBundle:
    """What ``train`` returned for the phantom set and its wall-clock seconds."""

    result: "TrainingResult"
    seconds: float

    @property
    def bundle(self) -> Path:
        return self.result.bundle


@pytest.fixture(scope="session")
def trained_phantom_bundle(tmp_path_factory: pytest.TempPathFactory) -> TrainedBundle:
    """``pipelines.training.train`` (what ``radnode train`` runs) on 30 ellipsoid phantoms of 32^3
    voxels (24 train, 6 validation), stopping at validation Dice 0.95."""
    from pipelines.training import TrainingOptions, train
    from tests.pipelines.phantoms import write_phantom_set

    root = tmp_path_factory.mktemp("train")
    images, labels = write_phantom_set(root / "data", 30, seed=1)
    start = time.perf_counter()
    result = train(images, labels, root / "bundle",
                   TrainingOptions(epochs=40, stop_at_dice=0.95, torch_threads=2, seed=0, device="cpu"),
                   show_progress=False)
    return TrainedBundle(result, time.perf_counter() - start)


@pytest.fixture(scope="session")
def blob_classifier_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The blob-vs-noise classifier trained here, as a bundle Grad-CAM can explain (model.pt + network_def)."""
    from tests.pipelines.bundle_builder import build_blob_classifier_bundle

    return build_blob_classifier_bundle(tmp_path_factory.mktemp("classifier") / "blob-classifier")
