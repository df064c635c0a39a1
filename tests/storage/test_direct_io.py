"""Writes past the page cache (storage/direct_io.py): same bytes, less cache, safe fallbacks."""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from storage import direct_io
from storage.direct_io import BLOCK, CHUNK_BYTES, AlignedBuffers, is_block_aligned, write_all_direct
from tests.support.page_cache import resident_bytes, skip_where_files_live_in_the_page_cache


def _payload(size: int) -> bytes:
    return (bytes(range(251)) * (size // 251 + 1))[:size]  # a period that no block size divides


@contextmanager
def _open_new(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        yield fd
    finally:
        os.close(fd)


@pytest.mark.parametrize("size", [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, CHUNK_BYTES - 1, CHUNK_BYTES, CHUNK_BYTES + 1,
                                  3 * CHUNK_BYTES + 5])
def test_the_file_holds_exactly_the_bytes_given_whatever_their_alignment(tmp_path: Path, size: int) -> None:
    data = _payload(size)
    with _open_new(tmp_path / "f") as fd:
        write_all_direct(fd, data, AlignedBuffers())
        os.fsync(fd)
    assert (tmp_path / "f").read_bytes() == data


def test_the_whole_blocks_do_not_stay_in_the_page_cache_where_a_buffered_write_leaves_them(tmp_path: Path) -> None:
    skip_where_files_live_in_the_page_cache(tmp_path)
    data = _payload(2 * CHUNK_BYTES + 100)
    with _open_new(tmp_path / "buffered") as fd:
        os.write(fd, data)
        os.fsync(fd)
    with _open_new(tmp_path / "direct") as fd:
        write_all_direct(fd, data, AlignedBuffers())
        os.fsync(fd)

    assert resident_bytes(tmp_path / "buffered") >= len(data) - BLOCK  # the control: fincore sees cached pages
    assert resident_bytes(tmp_path / "direct") <= BLOCK  # at most the partial last block


def test_the_descriptor_is_left_without_o_direct_for_whoever_writes_next(tmp_path: Path) -> None:
    with _open_new(tmp_path / "f") as fd:
        write_all_direct(fd, _payload(3 * BLOCK), AlignedBuffers())
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT == 0
        os.write(fd, b"tail")  # an unaligned write, which O_DIRECT would refuse
    assert (tmp_path / "f").read_bytes() == _payload(3 * BLOCK) + b"tail"


def test_a_file_system_that_refuses_o_direct_gets_every_byte_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fcntl = fcntl.fcntl

    def refusing_o_direct(fd: int, command: int, arg: int = 0) -> int:
        if command == fcntl.F_SETFL and arg & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_fcntl(fd, command, arg)

    monkeypatch.setattr(direct_io.fcntl, "fcntl", refusing_o_direct)
    data = _payload(CHUNK_BYTES + 7)
    with _open_new(tmp_path / "f") as fd:
        write_all_direct(fd, data, AlignedBuffers())
    assert (tmp_path / "f").read_bytes() == data


def _patch_direct_writes(monkeypatch: pytest.MonkeyPatch, direct_write) -> None:  # type: ignore[no-untyped-def]
    """Route write(2) calls made while O_DIRECT is set through ``direct_write(fd, data)``."""
    real_write = os.write

    def write(fd: int, data) -> int:  # type: ignore[no-untyped-def]
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            return direct_write(fd, data)
        return real_write(fd, data)

    monkeypatch.setattr(direct_io.os, "write", write)


def test_a_direct_write_refused_with_einval_is_finished_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(fd: int, data) -> int:  # type: ignore[no-untyped-def]
        raise OSError(errno.EINVAL, "Invalid argument")

    _patch_direct_writes(monkeypatch, refuse)
    data = _payload(2 * CHUNK_BYTES + 3)
    with _open_new(tmp_path / "f") as fd:
        write_all_direct(fd, data, AlignedBuffers())
    assert (tmp_path / "f").read_bytes() == data


def test_the_rest_of_a_short_direct_write_is_finished_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write
    _patch_direct_writes(monkeypatch, lambda fd, data: real_write(fd, data[:BLOCK]))  # the disk took one block
    data = _payload(CHUNK_BYTES + 9)
    with _open_new(tmp_path / "f") as fd:
        write_all_direct(fd, data, AlignedBuffers())
    assert (tmp_path / "f").read_bytes() == data


def test_other_write_errors_are_raised_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(fd: int, data) -> int:  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, "No space left on device")

    _patch_direct_writes(monkeypatch, disk_full)
    with _open_new(tmp_path / "f") as fd, pytest.raises(OSError) as raised:
        write_all_direct(fd, _payload(CHUNK_BYTES), AlignedBuffers())
    assert raised.value.errno == errno.ENOSPC


def test_a_buffer_is_reused_once_returned_and_concurrent_writers_get_their_own() -> None:
    buffers = AlignedBuffers()
    with buffers.borrowed() as first:
        pass
    with buffers.borrowed() as again:
        assert again is first
    inside = threading.Event()
    release = threading.Event()
    seen: list[object] = []

    def hold() -> None:
        with buffers.borrowed() as held:
            seen.append(held)
            inside.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(10)
    with buffers.borrowed() as other:
        assert other is not seen[0]
    release.set()
    holder.join(10)


class _NoScratch(AlignedBuffers):
    """Buffers that fail the test if a scratch copy is asked for."""

    @contextmanager
    def borrowed(self) -> Iterator[mmap.mmap]:
        raise AssertionError("data in page-aligned memory needs no scratch copy")
        yield  # pragma: no cover


@pytest.mark.parametrize("size", [BLOCK, BLOCK + 1, 3 * CHUNK_BYTES + 5])
def test_data_already_in_page_aligned_memory_is_written_from_there_without_a_scratch_copy(
        tmp_path: Path, size: int) -> None:
    data = _payload(size)
    source = mmap.mmap(-1, size)
    source[:] = data
    with _open_new(tmp_path / "f") as fd, memoryview(source) as view:
        write_all_direct(fd, view, _NoScratch())
        os.fsync(fd)
    assert (tmp_path / "f").read_bytes() == data


def test_only_writable_memory_that_starts_on_a_block_boundary_counts_as_aligned() -> None:
    page = mmap.mmap(-1, 2 * BLOCK)
    with memoryview(page) as whole:
        assert is_block_aligned(whole)
        assert is_block_aligned(whole[BLOCK:])
        assert not is_block_aligned(whole[1:])
        assert not is_block_aligned(whole[:0])
    assert not is_block_aligned(memoryview(bytes(2 * BLOCK)))  # read-only bytes never are


def test_the_partial_last_block_is_written_and_handed_to_writeback_before_the_whole_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, int]] = []
    real_pwrite, real_advise = os.pwrite, os.posix_fadvise

    def pwrite(fd: int, data, offset: int) -> int:  # type: ignore[no-untyped-def]
        calls.append(("pwrite", offset))
        return real_pwrite(fd, data, offset)

    def advise(fd: int, offset: int, length: int, advice: int) -> None:
        calls.append(("writeback" if advice == os.POSIX_FADV_DONTNEED else "other advice", offset))
        real_advise(fd, offset, length, advice)

    monkeypatch.setattr(direct_io.os, "pwrite", pwrite)
    monkeypatch.setattr(direct_io.os, "posix_fadvise", advise)
    _patch_direct_writes(monkeypatch, lambda fd, data: calls.append(("direct", len(data))) or os.pwrite(fd, data, 0))
    data = _payload(3 * BLOCK + 100)
    with _open_new(tmp_path / "f") as fd:
        write_all_direct(fd, data, AlignedBuffers())
        os.fsync(fd)

    assert calls[:3] == [("pwrite", 3 * BLOCK), ("writeback", 3 * BLOCK), ("direct", 3 * BLOCK)]
    assert (tmp_path / "f").read_bytes() == data
