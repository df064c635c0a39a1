"""Jobs and deliveries held by a process that died are taken up again at once, not after their lease;
leases of living processes, and of other hosts, are left alone."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from node.processes import process_exists
from node.recovery import release_leases_of_dead_processes
from storage.completion import NewJob, complete_series, find_due_series
from storage.database import create_database_engine, migrate
from storage.deliveries import DeliveryQueue, DeliveryTarget
from storage.index import InstanceIndex, ReceivedInstance
from storage.jobs import JobQueue
from storage.results import record_results

HOST = socket.gethostname()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_database_engine(f"sqlite:///{tmp_path / 'radnode.sqlite3'}")
    migrate(engine)
    yield engine
    engine.dispose()


def _queue_jobs(engine: Engine, count: int) -> None:
    """``count`` complete one-instance series, each with one queued job."""
    index = InstanceIndex(engine)
    for n in range(1, count + 1):
        study, series, sop = f"1.2.9.{n}", f"1.2.9.{n}.1", f"1.2.9.{n}.1.1"
        index.record(ReceivedInstance(study, series, sop, "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.1.2.1", "MR",
                                      f"spool/{study}/{series}/{sop}.dcm", 10, "SCU", "127.0.0.1", 1000.0))
    for due in find_due_series(engine, now=2000.0, grace_s=1, quiet_s=60):
        assert complete_series(engine, due, [NewJob("p", "r", ("pacs",))], "queued", now=2000.0)


def _exited_pid() -> int:
    """The pid of a process of this host that has exited and been reaped."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_work_of_a_dead_process_is_released_and_living_or_remote_holders_keep_theirs(engine: Engine) -> None:
    _queue_jobs(engine, 4)
    jobs, deliveries = JobQueue(engine, max_attempts=3), DeliveryQueue(engine, give_up_after_s=3600)
    now = time.time()
    dead_pid = _exited_pid()
    finished = jobs.claim(f"{HOST}:{os.getpid()}:0", lease_s=600, now=now)
    assert finished is not None
    record_results(engine, finished.id, f"{HOST}:{os.getpid()}:0", [], {},
                   [DeliveryTarget("pacs", "PACS", "127.0.0.1", 104)], now)
    held_by_dead = jobs.claim(f"{HOST}:{dead_pid}:0", lease_s=600, now=now)
    held_by_living = jobs.claim(f"{HOST}:{os.getpid()}:1", lease_s=600, now=now)
    held_elsewhere = jobs.claim(f"elsewhere-{HOST}:{dead_pid}:0", lease_s=600, now=now)
    sending = deliveries.claim("pacs", f"{HOST}:{dead_pid}:delivery", lease_s=600, now=now)
    assert held_by_dead and held_by_living and held_elsewhere and sending

    assert release_leases_of_dead_processes(jobs, deliveries, HOST) == (1, 1)

    taken = jobs.claim("restarted", lease_s=600, now=time.time())
    assert taken is not None and taken.id == held_by_dead.id and taken.attempts == 2
    assert jobs.claim("restarted", lease_s=600, now=time.time()) is None
    again = deliveries.claim("pacs", "restarted", lease_s=600, now=time.time())
    assert again is not None and again.id == sending.id and again.attempts == 2


def test_a_zombie_counts_as_exited() -> None:
    child = subprocess.Popen(["true"])
    try:
        stat = Path(f"/proc/{child.pid}/stat")
        deadline = time.monotonic() + 10
        while stat.exists() and " Z " not in stat.read_text() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not process_exists(child.pid)
        assert process_exists(os.getpid())
    finally:
        child.wait()
