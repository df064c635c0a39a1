"""Writing a file's bytes with ``O_DIRECT`` (past the page cache) where the file system allows it.

Why
  A received instance is written once, fsynced at once, and read again only when its series is
  processed. A buffered ``write(2)`` copies it into page-cache pages that ``fsync(2)`` then writes
  out: two passes over the data. On this project's VMs (Firecracker, virtio-balloon) the copy into
  page-cache pages not used lately costs about 1 ms per 512 KB (``perf``: 23% of all CPU samples of
  a four-association ingest in ``copy_folio_from_iter_atomic``), ten times the copy into pages just
  freed; most likely the host backing the guest's free memory again on first touch.
  ``bench/spool_write.py`` there (300 files of 513 KB per round, each written as the spool writes
  an instance: temporary name, write, fsync, rename, fsync of the folder), medians of three
  rounds: 1.46 ms of wall time and 1.04 ms of CPU per file through the page cache, 0.72 ms and
  0.35 ms with ``O_DIRECT``. ``bench/ingest.py``, 300 x 512 KB: radnode's receivers went from
  2.8 to 1.5 ms of CPU per image on one association.

  The price: a series' files are not in the page cache when its job reads them, so that read
  comes from the disk.

How
  ``O_DIRECT`` needs the buffer's address, the file offset and the length aligned to the device's
  logical block size (:data:`BLOCK`, 4096 bytes, a multiple of every common one). The whole blocks
  of the data are written straight from it when it lies in page-aligned memory already (a
  received instance, node/received_file.py); otherwise they are copied, :data:`CHUNK_BYTES` at a
  time, into a page-aligned scratch buffer borrowed from :class:`AlignedBuffers` and written from
  there. The last partial block cannot go direct: it is written first, through the page cache,
  and its writeback started at once (``posix_fadvise(POSIX_FADV_DONTNEED)``), so that it reaches
  the disk while the whole blocks are written instead of making the caller's fsync write it and
  wait once more (one wait for the disk fewer per file). Durability is unchanged: the caller
  still fsyncs the file (its size, its blocks' allocation and the device's write cache) before
  giving it its name.

  A file system that refuses ``O_DIRECT`` (``fcntl`` fails with EINVAL), or refuses a direct
  write (EINVAL), gets the rest through the page cache, as does the rest of a short direct write
  (a nearly full disk), so that ENOSPC is reported as a buffered write reports it.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

BLOCK = 4096  # bytes: alignment of address, offset and length for O_DIRECT (Linux open(2), NOTES)
CHUNK_BYTES = 1 << 20  # bytes copied and written per direct write(2); a 512 KB CT slice takes one
_O_DIRECT: int = getattr(os, "O_DIRECT", 0)  # Linux; 0 where the platform has no such flag


class AlignedBuffers:
    """Page-aligned scratch buffers of :data:`CHUNK_BYTES`, reused by the threads that write, so
    their pages stay mapped: as many exist as writes ever ran at once."""

    def __init__(self) -> None:
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()

    @contextmanager
    def borrowed(self) -> Iterator[mmap.mmap]:
        with self._lock:
            buffer = self._free.pop() if self._free else None
        if buffer is None:
            buffer = mmap.mmap(-1, CHUNK_BYTES)  # anonymous mappings start page aligned
        try:
            yield buffer
        finally:
            with self._lock:
                self._free.append(buffer)


def write_all_direct(fd: int, data: bytes | memoryview, buffers: AlignedBuffers) -> None:
    """Write all of ``data`` to ``fd`` (a regular file opened for writing at offset 0): the last
    partial block first, buffered, with its writeback started; then the whole blocks with
    ``O_DIRECT`` when the file system accepts it and buffered otherwise; ``fd`` is left without
    ``O_DIRECT``. The caller fsyncs."""
    view = memoryview(data).cast("B")
    whole_blocks = len(view) - len(view) % BLOCK
    if not whole_blocks:
        write_fully(fd, view)
        return
    if whole_blocks < len(view):
        pwrite_fully(fd, view[whole_blocks:], whole_blocks)
        _start_writeback(fd, whole_blocks)
    offset = _write_whole_blocks_direct(fd, view, whole_blocks, buffers)
    write_fully(fd, view[offset:whole_blocks])


def write_fully(fd: int, data: bytes | memoryview) -> None:
    """``write(2)`` until all of ``data`` is written (a write may take only part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def pwrite_fully(fd: int, data: bytes | memoryview, offset: int) -> None:
    """``pwrite(2)`` all of ``data`` at byte ``offset``; the file offset of ``fd`` stays."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _start_writeback(fd: int, offset: int) -> None:
    """Start writing the dirty pages of ``fd`` from ``offset`` on to the disk, without waiting
    (Linux: ``POSIX_FADV_DONTNEED`` starts the writeback of dirty pages; pages under writeback
    stay cached). Only a hint: where the platform has no ``posix_fadvise`` nothing happens, and
    the fsync writes them."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is not None:
        advise(fd, offset, 0, os.POSIX_FADV_DONTNEED)


def is_block_aligned(view: memoryview) -> bool:
    """True when ``view`` starts at a :data:`BLOCK`-aligned address, so that O_DIRECT can write
    straight from it (a page-aligned buffer such as node/received_file.py assembles). Read-only
    memory (a ``bytes`` object) never is: ``bytes`` data never starts on a page boundary."""
    if view.readonly or not view.c_contiguous or not len(view):
        return False
    return ctypes.addressof(ctypes.c_char.from_buffer(view)) % BLOCK == 0


def _write_whole_blocks_direct(fd: int, view: memoryview, whole_blocks: int, buffers: AlignedBuffers) -> int:
    """Write ``view[:whole_blocks]`` with O_DIRECT as far as the file system lets; return how many
    bytes were written (the file offset), with O_DIRECT switched off again. An aligned ``view``
    is written as it is; any other is copied into a scratch buffer, a chunk at a time."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    if not _O_DIRECT or not _set_flags(fd, flags | _O_DIRECT):
        return 0
    try:
        if is_block_aligned(view):
            return _write_direct(fd, view, whole_blocks, None)
        with buffers.borrowed() as buffer, memoryview(buffer) as scratch:
            return _write_direct(fd, view, whole_blocks, scratch)
    finally:
        _set_flags(fd, flags)


def _write_direct(fd: int, view: memoryview, whole_blocks: int, scratch: memoryview | None) -> int:
    """The writes of :func:`_write_whole_blocks_direct` (``fd`` has O_DIRECT): from ``view`` itself
    when ``scratch`` is None, else through ``scratch`` :data:`CHUNK_BYTES` at a time."""
    offset = 0
    while offset < whole_blocks:
        if scratch is None:
            length = whole_blocks - offset
            chunk = view[offset:whole_blocks]
        else:
            length = min(CHUNK_BYTES, whole_blocks - offset)
            scratch[:length] = view[offset:offset + length]
            chunk = scratch[:length]
        try:
            written = os.write(fd, chunk)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            break  # accepted at fcntl but not for writing (some FUSE and network file systems)
        finally:
            chunk.release()
        offset += written
        if written < length:
            break  # a short direct write (a nearly full disk): the rest goes buffered
    return offset


def _set_flags(fd: int, flags: int) -> bool:
    """``fcntl(F_SETFL)``; False when the file system refuses the flags (EINVAL)."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return False
    return True
