"""Recording a job's result objects and ending the job, in one transaction."""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import Engine, select, update
from sqlalchemy.dialects import postgresql, sqlite

from storage.deliveries import DeliveryTarget, add_deliveries
from storage.models import Job, Result


@dataclass(frozen=True)
class StoredResult:
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str
    path: str
    size_bytes: int
    fallback_for: str | None = None


def record_results(engine: Engine, job_id: int, owner: str, results: list[StoredResult],
                   measurements: dict[str, float], deliveries: list[DeliveryTarget], now: float,
                   timings: dict[str, float] | None = None) -> list[int] | None:
    """Upsert the result rows, queue their deliveries and mark the job succeeded, atomically;
    None (and nothing written) if ``owner`` no longer holds the job. Returns the result row ids."""
    insert_fn = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    with engine.begin() as conn:
        held = conn.execute(
            update(Job)
            .where(Job.id == job_id, Job.lease_owner == owner, Job.state == "running")
            .values(state="succeeded", finished_at=now, lease_owner=None, lease_expires_at=None,
                    last_error=None, measurements=json.dumps(measurements), timings=json.dumps(timings or {}))
        ).rowcount
        if held != 1:
            return None
        ids: list[int] = []
        for item in results:
            values = dict(
                job_id=job_id,
                study_instance_uid=item.study_instance_uid,
                series_instance_uid=item.series_instance_uid,
                sop_instance_uid=item.sop_instance_uid,
                sop_class_uid=item.sop_class_uid,
                modality=item.modality,
                path=item.path,
                size_bytes=item.size_bytes,
                created_at=now,
                fallback_for=item.fallback_for,
            )
            statement = insert_fn(Result).values(**values)
            conn.execute(
                statement.on_conflict_do_update(
                    index_elements=["sop_instance_uid"],
                    set_={k: statement.excluded[k]
                          for k in ("job_id", "path", "size_bytes", "created_at", "fallback_for")},
                )
            )
            ids.append(conn.execute(select(Result.id).where(Result.sop_instance_uid == item.sop_instance_uid)).scalar_one())
        add_deliveries(conn, job_id, deliveries, now)
        return ids
