"""What ``radnode status`` shows: studies, series, instance counts, completion and job states."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from storage.models import Job, Series, Study


@dataclass
class JobStatus:
    id: int
    pipeline: str
    route: str
    generation: int
    state: str
    attempts: int
    last_error: str | None


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
    jobs_by_series: dict[int, list[JobStatus]] = {}
    for job in job_rows:
        jobs_by_series.setdefault(job.series_id, []).append(
            JobStatus(job.id, job.pipeline, job.route, job.generation, job.state, job.attempts, job.last_error)
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
