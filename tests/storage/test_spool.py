"""Durable file writes of the spool and the outbox (storage/spool.py, storage/outbox.py)."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from storage.outbox import Outbox
from storage.spool import TEMP_SUFFIX, write_many_atomically
from tests.support.series import write_series


def test_a_batch_is_written_complete_under_the_final_names_with_no_temporary_file_left(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    batch = [(first, "1.dcm", b"one" * 1000), (first, "2.dcm", b"two"), (second, "3.dcm", b"")]
    write_many_atomically(batch)
    for folder, name, data in batch:
        assert (folder / name).read_bytes() == data
    assert not list(tmp_path.rglob(f"*{TEMP_SUFFIX}"))


def test_a_failing_batch_creates_no_final_name_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    folder = tmp_path / "a"
    folder.mkdir()
    batch = [(folder, "1.dcm", b"one"), (tmp_path / "missing", "2.dcm", b"two")]
    with pytest.raises(FileNotFoundError):
        write_many_atomically(batch)
    assert list(tmp_path.rglob("*")) == [folder]  # nothing inside it


def test_outbox_writes_a_jobs_objects_in_order_as_readable_dicom_files(tmp_path: Path) -> None:
    datasets = [pydicom.dcmread(p) for p in write_series(tmp_path / "src", 3, seed=5)]
    outbox = Outbox(tmp_path / "data")
    written = outbox.write_all(datasets)
    assert [path.relative for path, _ in written] == [
        f"outbox/{d.StudyInstanceUID}/{d.SeriesInstanceUID}/{d.SOPInstanceUID}.dcm" for d in datasets
    ]
    for (path, size), dataset in zip(written, datasets, strict=True):
        assert path.absolute.stat().st_size == size
        assert pydicom.dcmread(path.absolute).SOPInstanceUID == dataset.SOPInstanceUID
    assert not list((tmp_path / "data").rglob(f"*{TEMP_SUFFIX}"))
