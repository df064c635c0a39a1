"""Bad input gets a clear DIMSE failure status and leaves nothing in the spool (PS3.4 B.2.3)."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from tests.support.scu import send_raw
from tests.support.series import write_series


def _corrupt_copy(source: Path, target: Path, dataset_bytes: bytes) -> Path:
    """Keep the File Meta (so an SCU can propose a context) but replace the dataset bytes."""
    data = source.read_bytes()
    group_length = int.from_bytes(data[140:144], "little")
    target.write_bytes(data[: 144 + group_length] + dataset_bytes)
    return target


def _failure(status: int) -> bool:
    return 0xC000 <= status <= 0xCFFF


def test_truncated_dataset_is_refused_and_not_stored(radnode, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = radnode()
    source = write_series(tmp_path / "s", 1)[0]
    # a (0008,0016) UI element header that declares 200 bytes of value, then the data ends
    truncated = _corrupt_copy(source, tmp_path / "truncated.dcm", b"\x08\x00\x16\x00UI\xc8\x00" + b"1.2.3")

    status = send_raw(node.port, truncated)

    assert _failure(status), hex(status)
    assert node.spool_files() == [] and node.spool_leftovers() == []
    assert node.status()["studies"] == []


def test_garbage_after_the_header_is_refused_and_not_stored(radnode, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = radnode()
    source = write_series(tmp_path / "s", 1)[0]
    garbage = _corrupt_copy(source, tmp_path / "garbage.dcm", bytes(range(256)) * 8)

    status = send_raw(node.port, garbage)

    assert _failure(status), hex(status)
    assert node.spool_files() == [] and node.spool_leftovers() == []


def test_dataset_without_series_uid_is_refused_with_invalid_uid_status(radnode, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = radnode()
    path = write_series(tmp_path / "s", 1)[0]
    ds = pydicom.dcmread(path)
    del ds.SeriesInstanceUID
    ds.save_as(path, enforce_file_format=True)

    status = send_raw(node.port, path)

    assert status == 0xC002
    assert node.spool_files() == []


def test_path_traversal_uid_never_becomes_a_path(radnode, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = radnode()
    path = write_series(tmp_path / "s", 1)[0]
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID = "../../../../escape"
    ds.save_as(path, enforce_file_format=True)

    status = send_raw(node.port, path)

    assert status == 0xC002
    assert node.spool_files() == []
    assert not (node.data_dir.parent.parent / "escape").exists()
    assert not any(node.workdir.rglob("escape*"))


def test_overlong_uid_is_refused(radnode, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = radnode()
    path = write_series(tmp_path / "s", 1)[0]
    ds = pydicom.dcmread(path)
    ds.SeriesInstanceUID = "1." + "2" * 70
    ds.save_as(path, enforce_file_format=True)

    assert send_raw(node.port, path) == 0xC002
    assert node.spool_files() == []


def test_sop_instance_uid_that_differs_from_the_request_is_refused(radnode, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = radnode()
    path = write_series(tmp_path / "s", 1)[0]
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = generate_uid()  # the File Meta (and so the request) keeps the old UID
    ds.save_as(path, enforce_file_format=False)

    assert send_raw(node.port, path) == 0xC003
    assert node.spool_files() == []


def test_free_disk_below_watermark_answers_out_of_resources_and_keeps_what_is_stored(
    radnode, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    node = radnode()
    first = write_series(tmp_path / "a", 1, seed=1)[0]
    assert send_raw(node.port, first) == 0x0000
    node.stop()
    stored_before = {p: p.read_bytes() for p in node.spool_files()}
    # the same node and data_dir, restarted with a watermark no disk can meet (1 EiB)
    node.config_path.write_text(node.config_text.replace("min_free_disk_mb = 1\n", f"min_free_disk_mb = {2**40}\n"))
    node.start()
    second = write_series(tmp_path / "b", 1, seed=2)[0]

    status = send_raw(node.port, second)

    assert status == 0xA700
    assert {p: p.read_bytes() for p in node.spool_files()} == stored_before
    assert node.spool_leftovers() == []
