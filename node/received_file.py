"""A received C-STORE dataset assembled in a page-aligned buffer behind its file header (PS3.10
7.1), so that the handler checks it and the spool writes it with ``O_DIRECT`` without a copy.

Why
  pynetdicom assembles a dataset's fragments (PS3.8 E.2) in a ``BytesIO`` that grows by
  reallocation. The handler then joined preamble, File Meta and dataset into a new ``bytes``
  (node/file_meta.py), and the spool copied the whole blocks of that into an aligned scratch
  buffer for ``O_DIRECT`` (storage/direct_io.py): three passes over every image after the
  kernel's own copy out of the socket, on memory that the other associations keep pushing out
  of the CPU caches. ``perf record -a`` during a four-association ingest of 512 KB images: 6.9%
  of all CPU samples, about 15% of the receivers', in ``memmove``.

How
  :class:`ReceivedFileBuffer` stands in for that ``BytesIO`` as the message's ``data_set`` (it has
  the ``write``, ``getbuffer`` and ``getvalue`` that pynetdicom and the handler use). Its first
  write, which comes after the whole command set (PS3.7 6.3.1: a message's command fragments
  precede its dataset fragments), takes a page-aligned buffer from a :class:`FileBufferPool` and
  puts the file header there, made from the command set's SOP Class and Instance UIDs and the
  presentation context's transfer syntax; each fragment then lands behind it, either received
  from the socket straight into the buffer (:meth:`ReceivedFileBuffer.receive`, the DUL's
  direct P-DATA path) or copied once (``write``). The
  handler asks for :meth:`ReceivedFileBuffer.file_view` with the header it would write itself: the
  same header gives the whole file as one view of the buffer, aligned for ``O_DIRECT``; any other
  (or none) gives None, and the handler joins header and dataset as before. Once the handler is
  done the buffer goes back to the pool, so its pages stay mapped and warm for the next image.
"""

from __future__ import annotations

import mmap
import threading
from collections.abc import Callable

from storage.direct_io import BLOCK

INITIAL_BYTES = 1 << 20  # a pooled buffer's size: a 512 x 512 x 16-bit CT slice fits; larger ones grow
KEEP_BUFFERS = 16  # at most this many idle buffers are kept (one per association that was receiving)


def _rounded_to_block(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


class FileBufferPool:
    """Page-aligned anonymous mappings of :data:`INITIAL_BYTES`, reused across images (one receiver
    process, any thread)."""

    def __init__(self, initial_bytes: int = INITIAL_BYTES, keep: int = KEEP_BUFFERS) -> None:
        self._initial_bytes = _rounded_to_block(initial_bytes)
        self._keep = keep
        self._idle: list[mmap.mmap] = []
        self._lock = threading.Lock()

    @property
    def idle(self) -> int:
        """How many buffers wait to be reused."""
        return len(self._idle)

    def take(self) -> mmap.mmap:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        # private: a shared anonymous mapping is a shmem file of fixed size, so growing it with
        # mremap (mmap.resize) would give pages that raise SIGBUS; mappings start page aligned
        return mmap.mmap(-1, self._initial_bytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)

    def give_back(self, buffer: mmap.mmap) -> None:
        """Keep ``buffer`` for reuse, back at its initial size; it is closed instead when the pool is
        full or when a view of it is still alive (mmap refuses to resize then), so that no view
        can ever see the next image's bytes."""
        try:
            buffer.resize(self._initial_bytes)
        except BufferError:
            return  # a view still exists: the mapping goes when the last view does
        with self._lock:
            if len(self._idle) < self._keep:
                self._idle.append(buffer)
                return
        buffer.close()


def _asked_already() -> None:
    return None


class ReceivedFileBuffer:
    """One DIMSE message's dataset, assembled behind its file header (see the module docstring).

    ``file_header`` is asked once, at the first write; it returns the header bytes, or None when
    it cannot tell them (the dataset then starts at the buffer's beginning)."""

    def __init__(self, pool: FileBufferPool, file_header: Callable[[], bytes | None]) -> None:
        self._pool = pool
        self._file_header = file_header
        self._buffer: mmap.mmap | None = None
        self._header_length = 0
        self._end = 0
        self._released = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append a dataset fragment; return its length in bytes."""
        with memoryview(data) as view, view.cast("B") as fragment:
            buffer, end = self._room_for(len(fragment))
            buffer[self._end:end] = fragment
            self._end = end
            return len(fragment)

    def receive(self, recv_into: Callable[[memoryview], int], length: int) -> int:
        """Append a dataset fragment of ``length`` bytes read by ``recv_into`` (a socket's) straight
        into the buffer, without an intermediate copy; return how many bytes arrived (fewer only
        when ``recv_into`` returned 0: the peer closed the connection)."""
        buffer, end = self._room_for(length)
        start = self._end
        with memoryview(buffer) as whole:
            while self._end < end:
                with whole[self._end:end] as rest:
                    received = recv_into(rest)
                if received == 0:
                    break
                self._end += received
        return self._end - start

    def _room_for(self, length: int) -> tuple[mmap.mmap, int]:
        """The buffer (taken at the first fragment, grown with mremap when needed: no copy) with
        room for ``length`` more bytes, and where they end."""
        buffer = self._buffer if self._buffer is not None else self._start()
        end = self._end + length
        if end > len(buffer):
            buffer.resize(_rounded_to_block(max(end, 2 * len(buffer))))
        return buffer, end

    def _start(self) -> mmap.mmap:
        if self._released:
            raise ValueError("the received dataset was released")
        header = self._file_header() or b""
        self._file_header = _asked_already  # drop the callable (it may refer back to the message)
        buffer = self._pool.take()
        if len(header) > len(buffer):
            buffer.resize(_rounded_to_block(len(header)))
        buffer[:len(header)] = header
        self._buffer, self._header_length, self._end = buffer, len(header), len(header)
        return buffer

    def getbuffer(self) -> memoryview:
        """A view of the dataset as received (without the file header)."""
        if self._buffer is None:
            if self._released:
                raise ValueError("the received dataset was released")
            return memoryview(b"")
        with memoryview(self._buffer) as whole:
            return whole[self._header_length:self._end]

    def getvalue(self) -> bytes:
        """A copy of the dataset as received."""
        with self.getbuffer() as dataset:
            return bytes(dataset)

    def file_view(self, header: bytes) -> memoryview | None:
        """The whole file (``header`` then the dataset) as one view of the buffer, when the header
        put there at the first write is ``header``; None otherwise. Release the view (``with``)
        before :meth:`release`."""
        buffer = self._buffer
        if buffer is None or self._header_length != len(header) or buffer[:len(header)] != header:
            return None
        with memoryview(buffer) as whole:
            return whole[:self._end]

    def release(self) -> None:
        """Hand the buffer back to the pool; the dataset cannot be read any more."""
        buffer, self._buffer, self._released = self._buffer, None, True
        if buffer is not None:
            self._pool.give_back(buffer)
