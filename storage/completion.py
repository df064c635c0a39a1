"""Database side of series completion: which series are due, and completing one exactly once.

A series is due when the association that sent it was released at least ``grace_s`` ago, or when
no instance has arrived for ``quiet_s``. Completing is a single transaction that flips the state
and inserts the jobs the routes chose, guarded so that two processes never both complete it and
a series that just received another instance is left open.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import Engine, and_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from storage.models import Instance, Job, Series, Study


@dataclass(frozen=True)
class DueSeries:
    series_id: int
    series_instance_uid: str
    study_instance_uid: str
    generation: int
    last_instance_at: float
    instance_count: int
    sample_path: str  # relative path of one instance, for the header the routes look at


@dataclass(frozen=True)
class NewJob:
    pipeline: str
    route: str
    send_to: tuple[str, ...]


def find_due_series(engine: Engine, now: float, grace_s: float, quiet_s: float) -> list[DueSeries]:
    """Series in state ``receiving`` whose grace or quiet period has passed."""
    due = and_(
        Series.state == "receiving",
        or_(
            and_(Series.released_at.is_not(None), Series.released_at <= now - grace_s),
            Series.last_instance_at <= now - quiet_s,
        ),
    )
    sample = select(Instance.path).where(Instance.series_id == Series.id).limit(1).scalar_subquery()
    query = (
        select(
            Series.id,
            Series.series_instance_uid,
            Study.study_instance_uid,
            Series.generation,
            Series.last_instance_at,
            Series.instance_count,
            sample,
        )
        .join(Study, Study.id == Series.study_id)
        .where(due)
        .order_by(Series.last_instance_at)
    )
    with engine.connect() as conn:
        return [DueSeries(*row) for row in conn.execute(query) if row[6] is not None]


def complete_series(engine: Engine, series: DueSeries, jobs: list[NewJob], note: str, now: float) -> bool:
    """Mark ``series`` complete and queue ``jobs``, atomically; False if another process did it
    first or an instance arrived meanwhile (the series then stays open)."""
    insert_fn = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    with engine.begin() as conn:
        claimed = conn.execute(
            update(Series)
            .where(
                Series.id == series.series_id,
                Series.state == "receiving",
                Series.generation == series.generation,
                Series.last_instance_at == series.last_instance_at,
            )
            .values(state="complete", completed_at=now, routing_note=note)
        ).rowcount
        if claimed != 1:
            return False
        for job in jobs:
            conn.execute(
                insert_fn(Job)
                .values(
                    series_id=series.series_id,
                    generation=series.generation,
                    pipeline=job.pipeline,
                    route=job.route,
                    send_to=json.dumps(list(job.send_to)),
                    state="queued",
                    attempts=0,
                    not_before=0.0,
                    created_at=now,
                )
                .on_conflict_do_nothing(index_elements=["series_id", "pipeline", "generation"])
            )
    return True
