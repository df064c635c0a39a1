"""storage/results.py: a job's results, their deliveries and the job's end are recorded at once;
a re-run replaces its rows; a job whose lease was lost records nothing."""

from __future__ import annotations

import time

from sqlalchemy import Engine, event, func, select

from storage.completion import NewJob, complete_series, find_due_series
from storage.deliveries import DeliveryTarget
from storage.index import InstanceIndex, ReceivedInstance
from storage.jobs import ClaimedJob, JobQueue
from storage.models import Delivery, Job, Result
from storage.results import StoredResult, record_results

OWNER = "host:1:0"
PACS = DeliveryTarget("pacs", "PACS", "127.0.0.1", 104)


def _claimed_job(engine: Engine) -> ClaimedJob:
    InstanceIndex(engine).record(ReceivedInstance(
        "1.2.9", "1.2.9.1", "1.2.9.1.1", "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.1.2.1", "MR",
        "spool/1.2.9/1.2.9.1/1.2.9.1.1.dcm", 10, "SCU", "127.0.0.1", 1000.0))
    for due in find_due_series(engine, now=2000.0, grace_s=1, quiet_s=60):
        assert complete_series(engine, due, [NewJob("p", "r", ("pacs",))], "queued", now=2000.0)
    job = JobQueue(engine, max_attempts=3).claim(OWNER, lease_s=600, now=time.time())
    assert job is not None
    return job


def _results(count: int, path_prefix: str = "outbox") -> list[StoredResult]:
    # in an order that is not the UIDs' sorting order, so the ids must follow the list
    return [StoredResult("1.2.9", "1.2.9.2", f"1.2.9.2.{n}", "1.2.840.10008.5.1.4.1.1.7", "SC",
                         f"{path_prefix}/1.2.9/1.2.9.2/{n}.dcm", 1000 + n)
            for n in reversed(range(1, count + 1))]


def test_every_result_is_recorded_with_its_id_in_the_order_given(engine: Engine) -> None:
    job = _claimed_job(engine)
    results = _results(612)  # more than one id lookup's worth

    ids = record_results(engine, job.id, OWNER, results, {"volume_ml": 1.0}, [PACS], time.time())

    assert ids is not None and len(set(ids)) == len(results)
    with engine.connect() as conn:
        stored = dict(conn.execute(select(Result.id, Result.sop_instance_uid)).all())
        assert [stored[row_id] for row_id in ids] == [item.sop_instance_uid for item in results]
        assert conn.execute(select(Job.state).where(Job.id == job.id)).scalar_one() == "succeeded"
        assert conn.execute(select(func.count()).select_from(Delivery)).scalar_one() == 1


def test_recording_results_takes_a_few_statements_whatever_their_number(engine: Engine) -> None:
    """The transaction holds SQLite's write lock, which receivers wait for: it must not grow with
    the number of result objects (two statements each took 300 ms for a 158-object job)."""
    job = _claimed_job(engine)
    statements: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        record_results(engine, job.id, OWNER, _results(612), {}, [PACS], time.time())
    finally:
        event.remove(engine, "before_cursor_execute", count)

    assert len(statements) <= 8, statements


def test_a_rerun_replaces_the_rows_of_the_same_result_uids(engine: Engine) -> None:
    job = _claimed_job(engine)
    first = record_results(engine, job.id, OWNER, _results(3), {}, [PACS], time.time())
    with engine.begin() as conn:  # the job runs again (e.g. a late instance reopened the series)
        conn.execute(Job.__table__.update().where(Job.id == job.id)
                     .values(state="running", lease_owner=OWNER, lease_expires_at=time.time() + 600))

    again = record_results(engine, job.id, OWNER, _results(3, path_prefix="outbox-rerun"), {}, [PACS], time.time())

    assert again == first
    with engine.connect() as conn:
        paths = conn.execute(select(Result.path)).scalars().all()
    assert len(paths) == 3 and all(path.startswith("outbox-rerun/") for path in paths)


def test_a_job_whose_lease_was_lost_records_nothing(engine: Engine) -> None:
    job = _claimed_job(engine)

    assert record_results(engine, job.id, "another-host:2:0", _results(2), {}, [PACS], time.time()) is None

    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Result)).scalar_one() == 0
        assert conn.execute(select(Job.state).where(Job.id == job.id)).scalar_one() == "running"


def test_a_job_without_results_still_ends_and_queues_its_deliveries(engine: Engine) -> None:
    job = _claimed_job(engine)

    assert record_results(engine, job.id, OWNER, [], {}, [PACS], time.time()) == []

    with engine.connect() as conn:
        assert conn.execute(select(Job.state).where(Job.id == job.id)).scalar_one() == "succeeded"
        assert conn.execute(select(func.count()).select_from(Delivery)).scalar_one() == 1
