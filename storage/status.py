"""What ``radnode status`` shows: studies, series, instance counts, completion and job states."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import json

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from storage.models import Delivery, Job, Result, Series, Study


@dataclass
class DeliveryStatus:
    id: int
    destination: str
    state: str
    attempts: int
    last_error: str | None
    delivered_at: float | None


@dataclass
class JobStatus:
    id: int
    pipeline: str
    route: str
    generation: int
    state: str
    attempts: int
    last_error: str | None
    measurements: dict[str, float] | None = None
    timings: dict[str, float] | None = None
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    results: int = 0
    deliveries: list[DeliveryStatus] = field(default_factory=list)


@dataclass
class SeriesStatus:
    series_instance_uid: str
    modality: str
    state: str
    generation: int
    instance_count: int
    last_instance_at: float
    completed_at: float | None
    routing_note: str | None
    jobs: list[JobStatus] = field(default_factory=list)


@dataclass
class StudyStatus:
    study_instance_uid: str
    first_received_at: float
    series: list[SeriesStatus] = field(default_factory=list)

    @property
    def state(self) -> str:
        return "complete" if all(s.state == "complete" for s in self.series) else "receiving"

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "state": self.state, "instance_count": sum(s.instance_count for s in self.series)}


def collect_status(engine: Engine, limit: int = 200) -> list[StudyStatus]:
    """The newest ``limit`` studies with their series and jobs."""
    with Session(engine) as session:
        studies = session.execute(
            select(Study.id, Study.study_instance_uid, Study.first_received_at)
            .order_by(Study.first_received_at.desc())
            .limit(limit)
        ).all()
        ids = [row[0] for row in studies]
        series_rows = session.scalars(select(Series).where(Series.study_id.in_(ids)).order_by(Series.id)).all()
        series_ids = [s.id for s in series_rows]
        job_rows = session.scalars(select(Job).where(Job.series_id.in_(series_ids)).order_by(Job.id)).all()
        job_ids = [j.id for j in job_rows]
        delivery_rows = session.scalars(
            select(Delivery).where(Delivery.job_id.in_(job_ids)).order_by(Delivery.id)).all()
        result_counts = dict(session.execute(
            select(Result.job_id, func.count()).where(Result.job_id.in_(job_ids), Result.fallback_for.is_(None))
            .group_by(Result.job_id)).all())
    deliveries_by_job: dict[int, list[DeliveryStatus]] = {}
    for d in delivery_rows:
        deliveries_by_job.setdefault(d.job_id, []).append(
            DeliveryStatus(d.id, d.destination, d.state, d.attempts, d.last_error, d.delivered_at))
    jobs_by_series: dict[int, list[JobStatus]] = {}
    for job in job_rows:
        jobs_by_series.setdefault(job.series_id, []).append(
            JobStatus(job.id, job.pipeline, job.route, job.generation, job.state, job.attempts, job.last_error,
                      json.loads(job.measurements) if job.measurements else None,
                      json.loads(job.timings) if job.timings else None,
                      job.created_at, job.started_at, job.finished_at,
                      int(result_counts.get(job.id, 0)), deliveries_by_job.get(job.id, []))
        )
    series_by_study: dict[int, list[SeriesStatus]] = {}
    for s in series_rows:
        series_by_study.setdefault(s.study_id, []).append(
            SeriesStatus(
                s.series_instance_uid,
                s.modality,
                s.state,
                s.generation,
                s.instance_count,
                s.last_instance_at,
                s.completed_at,
                s.routing_note,
                jobs_by_series.get(s.id, []),
            )
        )
    return [StudyStatus(uid, first, series_by_study.get(study_id, [])) for study_id, uid, first in studies]
