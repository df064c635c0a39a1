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


# -- paged listings for the web API and counts for /metrics ------------------------------------

JOB_STATES = ("queued", "running", "succeeded", "failed", "refused")
DELIVERY_STATES = ("pending", "sending", "done", "dead")


@dataclass
class Page:
    """One page of a listing: ``items`` (plain dicts), the ``total`` that match, and the paging used."""

    items: list[dict[str, object]]
    total: int
    limit: int
    offset: int

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def list_studies(engine: Engine, limit: int = 50, offset: int = 0) -> Page:
    """Studies, newest first, each with series/instance counts and the states of its jobs and deliveries."""
    with Session(engine) as session:
        total = session.scalar(select(func.count()).select_from(Study)) or 0
        studies = session.execute(
            select(Study.id, Study.study_instance_uid, Study.first_received_at, Study.purged_at)
            .order_by(Study.first_received_at.desc(), Study.id.desc()).limit(limit).offset(offset)
        ).all()
        ids = [row[0] for row in studies]
        series = session.execute(
            select(Series.study_id, Series.id, Series.series_instance_uid, Series.modality, Series.state,
                   Series.instance_count, Series.last_instance_at, Series.routing_note)
            .where(Series.study_id.in_(ids)).order_by(Series.id)
        ).all()
        jobs = session.execute(
            select(Series.study_id, Job.state, func.count())
            .join(Series, Series.id == Job.series_id).where(Series.study_id.in_(ids))
            .group_by(Series.study_id, Job.state)
        ).all()
        deliveries = session.execute(
            select(Series.study_id, Delivery.state, func.count())
            .join(Job, Job.id == Delivery.job_id).join(Series, Series.id == Job.series_id)
            .where(Series.study_id.in_(ids)).group_by(Series.study_id, Delivery.state)
        ).all()
    by_study: dict[int, dict[str, object]] = {
        study_id: {"study_instance_uid": uid, "first_received_at": first, "purged_at": purged, "series": [],
                   "instance_count": 0, "jobs": {}, "deliveries": {}}
        for study_id, uid, first, purged in studies
    }
    for study_id, _id, uid, modality, state, count, last, note in series:
        entry = by_study[study_id]
        series_entry = {"series_instance_uid": uid, "modality": modality, "state": state,
                        "instance_count": count, "last_instance_at": last, "routing_note": note}
        entry["series"].append(series_entry)  # type: ignore[union-attr]
        entry["instance_count"] = int(entry["instance_count"]) + count  # type: ignore[call-overload]
    for study_id, state, count in jobs:
        by_study[study_id]["jobs"][state] = count  # type: ignore[index]
    for study_id, state, count in deliveries:
        by_study[study_id]["deliveries"][state] = count  # type: ignore[index]
    for entry in by_study.values():
        states = [s["state"] for s in entry["series"]]  # type: ignore[union-attr]
        entry["state"] = "complete" if states and all(s == "complete" for s in states) else "receiving"
    return Page([by_study[row[0]] for row in studies], int(total), limit, offset)


def list_jobs(engine: Engine, state: str | None = None, pipeline: str | None = None,
              limit: int = 50, offset: int = 0) -> Page:
    """Jobs, newest first, optionally of one state and/or pipeline, with their last error."""
    condition = []
    if state:
        condition.append(Job.state == state)
    if pipeline:
        condition.append(Job.pipeline == pipeline)
    with Session(engine) as session:
        total = session.scalar(select(func.count()).select_from(Job).where(*condition)) or 0
        rows = session.execute(
            select(Job, Series.series_instance_uid, Study.study_instance_uid)
            .join(Series, Series.id == Job.series_id).join(Study, Study.id == Series.study_id)
            .where(*condition).order_by(Job.id.desc()).limit(limit).offset(offset)
        ).all()
        items = [
            {"id": job.id, "study_instance_uid": study_uid, "series_instance_uid": series_uid,
             "pipeline": job.pipeline, "route": job.route, "generation": job.generation, "state": job.state,
             "attempts": job.attempts, "last_error": job.last_error, "created_at": job.created_at,
             "started_at": job.started_at, "finished_at": job.finished_at,
             "timings": json.loads(job.timings) if job.timings else None}
            for job, series_uid, study_uid in rows
        ]
    return Page(items, int(total), limit, offset)


def list_deliveries(engine: Engine, state: str | None = None, destination: str | None = None,
                    limit: int = 50, offset: int = 0) -> Page:
    """Deliveries, newest first, optionally of one state and/or destination, with their last error."""
    condition = []
    if state:
        condition.append(Delivery.state == state)
    if destination:
        condition.append(Delivery.destination == destination)
    with Session(engine) as session:
        total = session.scalar(select(func.count()).select_from(Delivery).where(*condition)) or 0
        rows = session.execute(
            select(Delivery, Study.study_instance_uid)
            .join(Job, Job.id == Delivery.job_id).join(Series, Series.id == Job.series_id)
            .join(Study, Study.id == Series.study_id)
            .where(*condition).order_by(Delivery.id.desc()).limit(limit).offset(offset)
        ).all()
        items = [
            {"id": d.id, "job_id": d.job_id, "study_instance_uid": study_uid, "destination": d.destination,
             "ae_title": d.ae_title, "host": d.host, "port": d.port, "state": d.state, "attempts": d.attempts,
             "last_error": d.last_error, "created_at": d.created_at, "next_attempt_at": d.next_attempt_at,
             "delivered_at": d.delivered_at}
            for d, study_uid in rows
        ]
    return Page(items, int(total), limit, offset)


@dataclass(frozen=True)
class QueueCounts:
    """Rows per state, and the age in seconds of the oldest waiting job and delivery (0: none waits)."""

    jobs: dict[str, int]
    deliveries: dict[str, int]
    oldest_queued_job_s: float
    oldest_pending_delivery_s: float


def queue_counts(engine: Engine, now: float) -> QueueCounts:
    with engine.connect() as conn:
        jobs = {state: 0 for state in JOB_STATES}
        jobs.update({state: int(n) for state, n in conn.execute(
            select(Job.state, func.count()).group_by(Job.state))})
        deliveries = {state: 0 for state in DELIVERY_STATES}
        deliveries.update({state: int(n) for state, n in conn.execute(
            select(Delivery.state, func.count()).group_by(Delivery.state))})
        oldest_job = conn.scalar(select(func.min(Job.created_at)).where(Job.state.in_(("queued", "running"))))
        oldest_delivery = conn.scalar(
            select(func.min(Delivery.created_at)).where(Delivery.state.in_(("pending", "sending"))))
    return QueueCounts(jobs, deliveries, max(0.0, now - oldest_job) if oldest_job else 0.0,
                       max(0.0, now - oldest_delivery) if oldest_delivery else 0.0)
