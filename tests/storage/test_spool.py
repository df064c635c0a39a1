"""Durable file writes of the spool and the outbox (storage/spool.py, storage/outbox.py)."""

from __future__ import annotations

from pathlib import Path

import errno
import os
import shutil

import pydicom
import pytest

from storage import spool as spool_module
from storage.outbox import Outbox
from storage.spool import (
    TEMP_SUFFIX,
    THIS_HOST,
    Spool,
    remove_abandoned_partial_files,
    remove_partial_files_of,
    temporary_file_writer,
    temporary_name,
    write_atomically,
    write_many_atomically,
)
from storage.direct_io import AlignedBuffers
from tests.support.page_cache import resident_bytes, skip_where_files_live_in_the_page_cache
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


def test_a_write_makes_the_missing_series_folder_again_after_retention_removed_it(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "data")
    first = spool.path_for("1.2.3", "1.2.3.4", "1.2.3.4.5")
    spool.write(first, b"first")
    shutil.rmtree(spool.root / "1.2.3")  # what a retention purge does to a finished study
    second = spool.path_for("1.2.3", "1.2.3.4", "1.2.3.4.6")
    spool.write(second, b"second")
    assert second.absolute.read_bytes() == b"second"
    assert not list(spool.root.rglob(f"*{TEMP_SUFFIX}"))


def test_an_instance_is_written_past_the_page_cache(tmp_path: Path) -> None:
    skip_where_files_live_in_the_page_cache(tmp_path)
    spool = Spool(tmp_path / "data")
    target = spool.path_for("1.2.3", "1.2.3.4", "1.2.3.4.5")
    data = os.urandom(512 * 1024 + 300)  # a 512 x 512 CT slice with its header
    spool.write(target, data)
    assert resident_bytes(target.absolute) <= 4096  # at most the partial last block (storage/direct_io.py)
    assert target.absolute.read_bytes() == data


@pytest.fixture(params=["unnamed", "named"])
def write_way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of :func:`write_atomically`: an unnamed file linked into place (O_TMPFILE), and
    the fallback of file systems without it, a temporary name renamed."""
    if request.param == "unnamed" and not spool_module._UNNAMED_FILES_LINKABLE:
        pytest.fail("this machine should make O_TMPFILE files (Linux with /proc)")
    if request.param == "named":
        monkeypatch.setattr(spool_module, "_UNNAMED_FILES_LINKABLE", False)
    return str(request.param)


def test_a_new_file_is_given_its_final_name_only_once_complete_and_no_other_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_temporary_name(name: str, pid: int | None = None, host: str = THIS_HOST) -> str:
        raise AssertionError("an unnamed file needs no temporary name")

    monkeypatch.setattr(spool_module, "temporary_name", no_temporary_name)
    assert write_atomically(tmp_path, "1.dcm", b"complete") is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.dcm"]
    assert (tmp_path / "1.dcm").read_bytes() == b"complete"


def test_a_repeated_write_replaces_the_file_and_says_it_did(tmp_path: Path, write_way: str) -> None:
    assert write_atomically(tmp_path, "1.dcm", b"first") is False
    assert write_atomically(tmp_path, "1.dcm", b"second", direct_buffers=AlignedBuffers()) is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.dcm"]
    assert (tmp_path / "1.dcm").read_bytes() == b"second"


def test_a_write_that_fails_leaves_the_previous_file_and_nothing_else(
    tmp_path: Path, write_way: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_atomically(tmp_path, "1.dcm", b"first")

    def disk_full(fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_module, "write_fully", disk_full)
    with pytest.raises(OSError) as raised:
        write_atomically(tmp_path, "1.dcm", b"second")
    assert raised.value.errno == errno.ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.dcm"]
    assert (tmp_path / "1.dcm").read_bytes() == b"first"


def test_a_file_system_without_unnamed_files_gets_a_temporary_name_renamed_into_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse_unnamed(path, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:  # type: ignore[no-untyped-def]
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")  # what NFS answers
        return real_open(path, flags, mode, dir_fd=dir_fd)

    real_open = os.open
    names: list[str] = []
    real_temporary_name = spool_module.temporary_name
    monkeypatch.setattr(spool_module.os, "open", refuse_unnamed)
    monkeypatch.setattr(spool_module, "temporary_name", lambda name: names.append(real_temporary_name(name)) or names[-1])
    assert write_atomically(tmp_path, "1.dcm", b"complete") is False
    assert len(names) == 1 and names[0].endswith(TEMP_SUFFIX)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.dcm"]
    assert (tmp_path / "1.dcm").read_bytes() == b"complete"


def test_a_system_that_refuses_to_link_unnamed_files_gets_the_file_written_under_a_temporary_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_link = os.link

    def refuse_unnamed_links(source: str, target: str, **kwargs) -> None:  # type: ignore[no-untyped-def]
        if str(source).startswith("/proc/self/fd/"):
            raise PermissionError(errno.EPERM, "Operation not permitted")  # e.g. a security module
        real_link(source, target, **kwargs)

    monkeypatch.setattr(spool_module.os, "link", refuse_unnamed_links)
    write_atomically(tmp_path, "1.dcm", b"first")
    assert write_atomically(tmp_path, "1.dcm", b"second", direct_buffers=AlignedBuffers()) is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.dcm"]
    assert (tmp_path / "1.dcm").read_bytes() == b"second"


def _partial(folder: Path, sop: str, pid: int, host: str = THIS_HOST) -> Path:
    path = folder / temporary_name(f"{sop}.dcm", pid=pid, host=host)
    path.write_bytes(b"partial")
    return path


def test_only_the_partial_files_of_the_named_process_of_this_host_are_removed(tmp_path: Path) -> None:
    folder = tmp_path / "spool" / "1.2.3" / "1.2.3.4"
    folder.mkdir(parents=True)
    dead = [_partial(folder, "1.2.3.4.5", 4242), _partial(folder, "1.2.3.4.6", 4242)]
    alive = _partial(folder, "1.2.3.4.7", 42420)
    same_pid_elsewhere = _partial(folder, "1.2.3.4.8", 4242, host="otherhost")
    assert remove_partial_files_of(tmp_path / "spool", 4242) == 2
    assert not any(path.exists() for path in dead)
    assert alive.exists() and same_pid_elsewhere.exists()


def test_abandoned_partial_files_are_those_of_gone_processes_of_this_host_or_of_unknown_writers(tmp_path: Path) -> None:
    folder = tmp_path / "1.2.3" / "1.2.3.4"
    folder.mkdir(parents=True)
    gone = _partial(folder, "1.2.3.4.5", 4242)
    live = _partial(folder, "1.2.3.4.6", 4343)
    other_host = _partial(folder, "1.2.3.4.7", 4242, host="otherhost")
    older_naming = folder / ".1.2.3.4.8.dcm.0a1b2c3d.partial"
    older_naming.write_bytes(b"partial")
    assert remove_abandoned_partial_files(tmp_path, process_alive=lambda pid: pid == 4343) == 2
    assert not gone.exists() and not older_naming.exists()
    assert live.exists() and other_host.exists()


def test_a_temporary_name_tells_its_writer() -> None:
    assert temporary_file_writer(temporary_name("1.2.3.dcm", pid=77, host="node_a")) == ("node_a", 77)
    assert temporary_file_writer(temporary_name("1.2.3.dcm")) == (THIS_HOST, os.getpid())
    assert temporary_file_writer(".1.2.3.dcm.0a1b2c3d.partial") is None


def test_a_temporary_name_is_hidden_unique_and_does_not_end_in_dcm() -> None:
    names = {temporary_name("1.2.3.dcm") for _ in range(1000)}
    assert len(names) == 1000
    assert all(name.startswith(".") and not name.endswith(".dcm") for name in names)
