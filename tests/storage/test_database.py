"""The index, completion and job queue behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import time

import psycopg
import pytest

from sqlalchemy import Engine, func, select

from storage.completion import NewJob, complete_series, find_due_series
from storage.database import migrate
from storage.index import InstanceIndex, ReceivedInstance
from storage.jobs import JobQueue, LeaseLost
from storage.models import Instance, Job, Series


def _instance(sop: str, series: str = "1.2.3.2", study: str = "1.2.3.1", at: float = 1000.0) -> ReceivedInstance:
    return ReceivedInstance(
        study_instance_uid=study, series_instance_uid=series, sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.4", transfer_syntax_uid="1.2.840.10008.1.2.1", modality="MR",
        relative_path=f"spool/{study}/{series}/{sop}.dcm", size_bytes=10, calling_ae_title="SCU",
        calling_host="127.0.0.1", received_at=at,
    )


def _queue_one_job(engine: Engine, pipeline: str = "brain-extraction") -> None:
    InstanceIndex(engine).record(_instance("1.2.3.3"))
    due = find_due_series(engine, now=2000.0, grace_s=1, quiet_s=60)
    assert complete_series(engine, due[0], [NewJob(pipeline, "r", ("pacs",))], "queued", now=2000.0)


def test_a_first_instance_that_fails_to_insert_leaves_no_series_and_the_next_one_is_indexed(engine: Engine) -> None:
    index = InstanceIndex(engine)
    broken = dataclasses.replace(_instance("1.2.3.3"), relative_path=None)  # type: ignore[arg-type]
    with pytest.raises((sqlite3.IntegrityError, psycopg.IntegrityError)):
        index.record(broken)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Series)).scalar_one() == 0
    assert index.record(_instance("1.2.3.4")).is_new_instance
    with engine.connect() as conn:
        assert conn.execute(select(Series.instance_count)).scalar_one() == 1


def test_migrations_are_idempotent(engine: Engine) -> None:
    migrate(engine)
    migrate(engine)


def test_repeated_instance_is_indexed_once(engine: Engine) -> None:
    index = InstanceIndex(engine)

    first = index.record(_instance("1.2.3.3"))
    second = index.record(_instance("1.2.3.3"))

    assert first.is_new_instance and not second.is_new_instance
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Instance)).scalar_one() == 1


def test_an_instance_reindexed_without_its_sender_keeps_the_series_sender(engine: Engine) -> None:
    """Start-up recovery re-indexes spool files with an empty calling AE title and host."""
    from dataclasses import replace

    from storage.models import Series

    index = InstanceIndex(engine)
    index.record(_instance("1.2.3.3"))
    index.record(replace(_instance("1.2.3.4"), calling_ae_title="", calling_host=""))

    with engine.connect() as conn:
        sender = conn.execute(select(Series.calling_ae_title, Series.calling_host)).one()
    assert tuple(sender) == ("SCU", "127.0.0.1")


def test_an_instance_row_holds_what_was_received_and_the_series_counts_it(engine: Engine) -> None:
    from storage.models import Series

    index = InstanceIndex(engine)
    index.record(_instance("1.2.3.3", at=1000.0))
    outcome = index.record(_instance("1.2.3.4", at=1001.5))

    assert outcome.is_new_instance and not outcome.reopened
    with engine.connect() as conn:
        row = conn.execute(select(Instance).where(Instance.sop_instance_uid == "1.2.3.4")).one()
        series = conn.execute(select(Series.instance_count, Series.last_instance_at, Series.state,
                                     Series.generation)).one()
    assert (row.series_id, row.sop_class_uid, row.transfer_syntax_uid, row.path, row.size_bytes, row.received_at) == (
        outcome.series_id, "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.1.2.1", "spool/1.2.3.1/1.2.3.2/1.2.3.4.dcm",
        10, 1001.5)
    assert tuple(series) == (2, 1001.5, "receiving", 0)


def test_a_late_instance_reopens_a_completed_series_once(engine: Engine) -> None:
    from storage.models import Series

    index = InstanceIndex(engine)
    index.record(_instance("1.2.3.3"))
    due = find_due_series(engine, now=2000.0, grace_s=1, quiet_s=60)
    assert complete_series(engine, due[0], [], "no route matched", now=2000.0)

    late = index.record(_instance("1.2.3.4", at=2001.0))
    later = index.record(_instance("1.2.3.5", at=2002.0))

    assert late.reopened and not later.reopened
    with engine.connect() as conn:
        series = conn.execute(select(Series.state, Series.generation, Series.instance_count)).one()
    assert tuple(series) == ("receiving", 1, 3)


def test_series_is_due_after_release_grace_or_quiet_period(engine: Engine) -> None:
    index = InstanceIndex(engine)
    outcome = index.record(_instance("1.2.3.3", at=1000.0))

    assert find_due_series(engine, now=1001.0, grace_s=2, quiet_s=60) == []
    index.mark_released({outcome.series_id}, released_at=1001.0)
    assert find_due_series(engine, now=1002.0, grace_s=2, quiet_s=60) == []
    assert len(find_due_series(engine, now=1003.5, grace_s=2, quiet_s=60)) == 1
    assert len(find_due_series(engine, now=1061.0, grace_s=2, quiet_s=60)) == 1


def test_series_completes_exactly_once_even_when_two_checkers_race(engine: Engine) -> None:
    InstanceIndex(engine).record(_instance("1.2.3.3"))
    due = find_due_series(engine, now=2000.0, grace_s=1, quiet_s=60)[0]

    outcomes = [complete_series(engine, due, [NewJob("brain-extraction", "r", ())], "q", 2000.0) for _ in range(2)]

    assert outcomes == [True, False]
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Job)).scalar_one() == 1


def test_instance_arriving_during_completion_keeps_the_series_open(engine: Engine) -> None:
    index = InstanceIndex(engine)
    index.record(_instance("1.2.3.3", at=1000.0))
    due = find_due_series(engine, now=2000.0, grace_s=1, quiet_s=60)[0]
    index.record(_instance("1.2.3.4", at=1999.0))

    assert not complete_series(engine, due, [], "q", 2000.0)


def test_two_workers_never_claim_the_same_job(engine: Engine) -> None:
    for number in range(6):
        InstanceIndex(engine).record(_instance(f"1.2.4.{number}", series=f"1.2.5.{number}"))
    for due in find_due_series(engine, now=5000.0, grace_s=1, quiet_s=60):
        complete_series(engine, due, [NewJob("brain-extraction", "r", ())], "q", 5000.0)
    queue = JobQueue(engine, max_attempts=3)
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while (job := queue.claim(name, lease_s=60, now=time.time())) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 6


def test_job_of_a_dead_worker_is_taken_over_after_its_lease(engine: Engine) -> None:
    _queue_one_job(engine)
    queue = JobQueue(engine, max_attempts=3)
    held = queue.claim("dead-worker", lease_s=10, now=3000.0)
    assert held is not None

    assert queue.claim("other", lease_s=10, now=3005.0) is None
    taken = queue.claim("other", lease_s=10, now=3011.0)

    assert taken is not None and taken.id == held.id and taken.attempts == 2
    try:
        queue.renew(held.id, "dead-worker", lease_s=10, now=3012.0)
        raise AssertionError("the dead worker must have lost its lease")
    except LeaseLost:
        pass
    assert not queue.finish(held.id, "dead-worker", "succeeded", now=3013.0)
    assert queue.finish(taken.id, "other", "succeeded", now=3013.0)


def test_failed_job_is_retried_then_marked_failed(engine: Engine) -> None:
    _queue_one_job(engine)
    queue = JobQueue(engine, max_attempts=2)

    first = queue.claim("w", lease_s=10, now=3000.0)
    assert first is not None and queue.fail(first.id, "w", "boom", retry_at=3010.0, now=3001.0) == "queued"
    assert queue.claim("w", lease_s=10, now=3005.0) is None  # backoff
    second = queue.claim("w", lease_s=10, now=3010.0)
    assert second is not None and queue.fail(second.id, "w", "boom again", retry_at=3020.0, now=3011.0) == "failed"
    assert queue.claim("w", lease_s=10, now=4000.0) is None


def test_a_receivers_instance_transaction_waits_for_its_turn_on_a_sqlite_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from storage.database import create_database_engine
    from storage.index import SqliteWriteTurns

    engine = create_database_engine(f"sqlite:///{tmp_path / 'radnode.sqlite3'}")
    migrate(engine)
    index = InstanceIndex(engine)
    index.record(_instance("1.2.3.3"))  # the series is known: the next instance takes the turn
    other_process = SqliteWriteTurns(f"{tmp_path / 'radnode.sqlite3'}.writers")  # its own open file
    recorded = threading.Event()
    with other_process.taken():
        writer = threading.Thread(target=lambda: (index.record(_instance("1.2.3.4")), recorded.set()))
        writer.start()
        assert not recorded.wait(0.5), "the transaction did not wait for the turn another process held"
    writer.join(timeout=30)
    assert recorded.is_set()
    engine.dispose()


def _sqlite_engine_counting_checkouts(tmp_path) -> tuple[Engine, list[int]]:  # type: ignore[no-untyped-def]
    """A migrated engine on a SQLite file, and the list its pool's checkouts are recorded in."""
    from sqlalchemy import event

    from storage.database import create_database_engine

    engine = create_database_engine(f"sqlite:///{tmp_path / 'radnode.sqlite3'}")
    migrate(engine)
    checkouts: list[int] = []
    event.listen(engine, "checkout", lambda dbapi_connection, record, proxy: checkouts.append(id(dbapi_connection)))
    return engine, checkouts


def test_a_processs_instance_transactions_on_a_sqlite_file_share_one_held_connection(tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine, checkouts = _sqlite_engine_counting_checkouts(tmp_path)
    index = InstanceIndex(engine)
    threads = [threading.Thread(target=lambda n=n: [index.record(_instance(f"1.2.3.{n}.{k}")) for k in range(20)])
               for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    index.mark_released({1}, 2000.0)
    assert len(checkouts) == 1  # two association threads, 41 transactions, one connection
    with engine.connect() as conn:
        assert conn.execute(select(Series.instance_count)).scalar_one() == 40
    engine.dispose()


def test_a_failed_transaction_on_the_held_sqlite_connection_is_rolled_back_and_the_connection_kept(tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine, checkouts = _sqlite_engine_counting_checkouts(tmp_path)
    index = InstanceIndex(engine)
    index.record(_instance("1.2.3.3"))
    broken = dataclasses.replace(_instance("1.2.3.4"), relative_path=None)  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError):
        index.record(broken)
    assert index.record(_instance("1.2.3.5")).is_new_instance  # no transaction left open by the failure
    assert len(checkouts) == 1
    with engine.connect() as conn:
        assert sorted(conn.execute(select(Instance.sop_instance_uid)).scalars()) == ["1.2.3.3", "1.2.3.5"]
    engine.dispose()
