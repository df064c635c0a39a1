"""Start-up recovery: drop partial spool writes, index complete files the database misses, and
free the jobs and deliveries that processes of this host held when they died.

After a power cut the SQLite WAL (synchronous=NORMAL) may lack the last commits while the
fsynced spool files are there; indexing them again keeps every acknowledged instance.

Jobs and deliveries are held under leases by owners named ``<host>:<pid>:<part>``. A process
killed with ``kill -9`` cannot give its leases back, and waiting for them to expire (``lease_s``,
10 and 5 minutes by default) would hold results back that long after every crash. A process of
this host that no longer exists holds nothing, so its leases are expired at once.
"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

from node.dicom_header import UnreadableDataset, read_identity
from node.processes import process_exists
from storage.deliveries import DeliveryQueue
from storage.index import InstanceIndex
from storage.jobs import JobQueue
from storage.spool import Spool, remove_abandoned_partial_files
from storage.uids import InvalidUID

log = logging.getLogger("radnode.recovery")


def recover_spool(spool: Spool, index: InstanceIndex) -> tuple[int, int]:
    """Return (partial files removed, instances re-indexed). Partial files of live processes (a
    receiver of another node sharing ``data_dir``) are left to their writers."""
    removed = remove_abandoned_partial_files(spool.root, process_exists)
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


def remove_abandoned_outbox_files(data_dir: Path) -> int:
    """Delete the outbox's temporary files whose worker of this host is gone (killed while it
    wrote a job's results; the job runs again and writes them anew). Return how many."""
    removed = remove_abandoned_partial_files(data_dir / "outbox", process_exists)
    if removed:
        log.warning("outbox recovery: %d partial files removed", removed)
    return removed


def dead_owners(owners: set[str], host: str) -> set[str]:
    """The owners among ``owners`` that name a process of ``host`` which no longer exists."""
    dead = set()
    for owner in owners:
        pid = owner[len(host) + 1:].split(":", 1)[0]
        if owner.startswith(f"{host}:") and pid.isdigit() and not process_exists(int(pid)):
            dead.add(owner)
    return dead


def release_leases_of_dead_processes(jobs: JobQueue, deliveries: DeliveryQueue,
                                     host: str | None = None) -> tuple[int, int]:
    """Make jobs and deliveries held by gone processes of this host claimable now; return
    (jobs released, deliveries released). Owners on other hosts keep their leases."""
    host = host or socket.gethostname()
    now = time.time()
    released_jobs = jobs.release_owners(dead_owners(jobs.lease_owners(f"{host}:"), host), now)
    released_deliveries = deliveries.release_owners(dead_owners(deliveries.lease_owners(f"{host}:"), host), now)
    if released_jobs or released_deliveries:
        log.warning("%d jobs and %d deliveries were held by processes that are gone; they are taken up again now",
                    released_jobs, released_deliveries)
    return released_jobs, released_deliveries
