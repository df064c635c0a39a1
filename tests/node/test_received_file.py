"""node/received_file.py: a dataset assembled behind its file header in a reused, page-aligned
buffer, handed out as one view only when the header is the one the handler expects."""

from __future__ import annotations

import pytest

from node.received_file import FileBufferPool, ReceivedFileBuffer
from storage.direct_io import BLOCK, is_block_aligned

HEADER = b"\x00" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00" + bytes(4)


def _fragments(total: int, size: int) -> list[bytes]:
    data = (bytes(range(251)) * (total // 251 + 1))[:total]
    return [data[start:start + size] for start in range(0, total, size)]


def test_fragments_land_behind_the_header_and_the_file_is_one_aligned_view() -> None:
    assembly = ReceivedFileBuffer(FileBufferPool(), lambda: HEADER)
    fragments = _fragments(300_000, 131_060)
    for fragment in fragments:
        assert assembly.write(memoryview(fragment)) == len(fragment)

    whole = assembly.file_view(HEADER)
    assert whole is not None and is_block_aligned(whole)
    assert bytes(whole) == HEADER + b"".join(fragments)
    assert assembly.getvalue() == b"".join(fragments)
    with assembly.getbuffer() as dataset:
        assert bytes(dataset) == b"".join(fragments)


@pytest.mark.parametrize("expected", [HEADER[:-1] + b"\x01", HEADER + b"\x00\x00"])
def test_a_different_header_gives_no_view_so_the_handler_writes_its_own(expected: bytes) -> None:
    assembly = ReceivedFileBuffer(FileBufferPool(), lambda: HEADER)
    assembly.write(b"dataset")
    assert assembly.file_view(expected) is None
    assert assembly.getvalue() == b"dataset"  # the dataset itself is intact for the join


def test_without_a_header_the_dataset_starts_at_the_beginning_and_no_view_is_given() -> None:
    assembly = ReceivedFileBuffer(FileBufferPool(), lambda: None)
    assembly.write(b"dataset")
    assert assembly.getvalue() == b"dataset"
    assert assembly.file_view(HEADER) is None


def test_the_header_is_asked_for_once_at_the_first_write() -> None:
    asked: list[int] = []

    def header() -> bytes:
        asked.append(1)
        return HEADER

    assembly = ReceivedFileBuffer(FileBufferPool(), header)
    assert assembly.getvalue() == b"" and not asked  # nothing written yet: nothing asked
    assembly.write(b"a")
    assembly.write(b"b")
    assert len(asked) == 1


def test_a_dataset_larger_than_the_pooled_size_grows_its_buffer_and_stays_intact() -> None:
    pool = FileBufferPool(initial_bytes=2 * BLOCK)
    assembly = ReceivedFileBuffer(pool, lambda: HEADER)
    fragments = _fragments(10 * BLOCK + 3, 3000)
    for fragment in fragments:
        assembly.write(fragment)
    whole = assembly.file_view(HEADER)
    assert whole is not None and bytes(whole) == HEADER + b"".join(fragments)
    whole.release()
    assembly.release()
    assert pool.idle == 1
    reused = pool.take()
    assert len(reused) == 2 * BLOCK  # back at the pool's size


def test_a_released_buffer_is_reused_for_the_next_dataset() -> None:
    pool = FileBufferPool()
    first = ReceivedFileBuffer(pool, lambda: HEADER)
    first.write(b"first")
    first.release()
    second = ReceivedFileBuffer(pool, lambda: HEADER)
    second.write(b"second")
    assert pool.idle == 0  # the one buffer is in use again
    assert second.getvalue() == b"second"


def test_a_buffer_still_viewed_when_released_is_not_reused() -> None:
    pool = FileBufferPool()
    assembly = ReceivedFileBuffer(pool, lambda: HEADER)
    assembly.write(b"kept")
    view = assembly.file_view(HEADER)
    assembly.release()
    assert pool.idle == 0  # reusing it would change what the view shows
    assert view is not None and bytes(view[-4:]) == b"kept"


def test_a_released_dataset_cannot_be_read_or_written() -> None:
    assembly = ReceivedFileBuffer(FileBufferPool(), lambda: HEADER)
    assembly.write(b"x")
    assembly.release()
    with pytest.raises(ValueError, match="released"):
        assembly.getvalue()
    with pytest.raises(ValueError, match="released"):
        assembly.write(b"y")


def test_the_pool_keeps_no_more_idle_buffers_than_its_limit() -> None:
    pool = FileBufferPool(keep=2)
    assemblies = [ReceivedFileBuffer(pool, lambda: HEADER) for _ in range(4)]
    for assembly in assemblies:
        assembly.write(b"x")
    for assembly in assemblies:
        assembly.release()
    assert pool.idle == 2


def test_a_fragment_is_received_from_a_socket_straight_behind_the_header_growing_the_buffer() -> None:
    import socket
    import threading

    near, far = socket.socketpair()
    fragment = _fragments(5 * BLOCK, 5 * BLOCK)[0]
    sender = threading.Thread(target=far.sendall, args=(fragment,))
    sender.start()
    assembly = ReceivedFileBuffer(FileBufferPool(initial_bytes=BLOCK), lambda: HEADER)
    assert assembly.receive(near.recv_into, len(fragment)) == len(fragment)
    sender.join()
    whole = assembly.file_view(HEADER)
    assert whole is not None and bytes(whole) == HEADER + fragment
    near.close(), far.close()


def test_receiving_stops_short_when_the_peer_closes() -> None:
    import socket

    near, far = socket.socketpair()
    far.sendall(b"only this")
    far.close()
    assembly = ReceivedFileBuffer(FileBufferPool(), lambda: None)
    assert assembly.receive(near.recv_into, 100) == len(b"only this")
    assert assembly.getvalue() == b"only this"
    near.close()
