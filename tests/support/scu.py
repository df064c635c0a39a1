"""A pynetdicom SCU for what DCMTK cannot send: raw (possibly corrupt) bytes, or an association
that is aborted instead of released."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE, _config
from pynetdicom.association import Association

from node.pynetdicom_tuning import hand_stolen_responses_back


@contextmanager
def _streaming_files() -> Iterator[None]:
    """Send a file's dataset bytes as they are, without decoding them (pynetdicom option)."""
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


@contextmanager
def association(port: int, files: list[Path], called: str = "RADNODE", calling: str = "PYSCU") -> Iterator[Association]:
    """An association proposing the SOP classes and transfer syntaxes of ``files``."""
    ae = AE(ae_title=calling)
    seen: set[tuple[str, str]] = set()
    for path in files:
        meta = dcmread(path, stop_before_pixels=True, force=True).file_meta
        key = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
        if key not in seen:
            seen.add(key)
            ae.add_requested_context(key[0], key[1])
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        raise ConnectionError(f"association to port {port} was not established")
    hand_stolen_responses_back(assoc)  # pynetdicom's reactor race would cost a test a 30 s timeout
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def send_raw(port: int, path: Path, called: str = "RADNODE") -> int:
    """C-STORE ``path`` byte for byte (even if its dataset is corrupt); return the DIMSE status."""
    with _streaming_files(), association(port, [path], called=called) as assoc:
        response = assoc.send_c_store(path)
        if "Status" not in response:
            raise ConnectionError("no C-STORE response (association aborted?)")
        return int(response.Status)


def send_then_abort(port: int, files: list[Path], called: str = "RADNODE") -> list[int]:
    """Store ``files`` on one association, then abort it instead of releasing it."""
    ae = AE(ae_title="PYSCU")
    for path in files[:1]:
        meta = dcmread(path, stop_before_pixels=True).file_meta
        ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        raise ConnectionError("association was not established")
    statuses = [int(assoc.send_c_store(dcmread(path)).Status) for path in files]
    assoc.abort()
    return statuses
