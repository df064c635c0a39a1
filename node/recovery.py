"""Start-up recovery of the spool: drop partial writes, index complete files the database misses.

After a power cut the SQLite WAL (synchronous=NORMAL) may lack the last commits while the
fsynced spool files are there; indexing them again keeps every acknowledged instance.
"""

from __future__ import annotations

import logging

from node.dicom_header import UnreadableDataset, read_identity
from storage.index import InstanceIndex
from storage.spool import Spool
from storage.uids import InvalidUID

log = logging.getLogger("radnode.recovery")


def recover_spool(spool: Spool, index: InstanceIndex) -> tuple[int, int]:
    """Return (partial files removed, instances re-indexed)."""
    removed = spool.remove_partial_files()
    known = index.known_instance_paths()
    reindexed = 0
    for path in sorted(spool.root.glob("*/*/*.dcm")):
        relative = path.relative_to(spool.data_dir).as_posix()
        if relative in known:
            continue
        data = path.read_bytes()
        try:
            identity = read_identity(data)
        except (UnreadableDataset, InvalidUID) as exc:
            log.error("spool file %s is unreadable (%s); left in place for inspection", relative, exc)
            continue
        index.record(identity.received(relative, len(data), "", "", path.stat().st_mtime))
        reindexed += 1
    if removed or reindexed:
        log.warning("spool recovery: %d partial files removed, %d instances re-indexed", removed, reindexed)
    return removed, reindexed
