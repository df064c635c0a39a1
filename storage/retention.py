"""Retention: deleting the spool and outbox files of studies that need them no more.

A study is *finished* when every one of its series is complete (routing has run), none of its
jobs is queued, running or failed (failed jobs can still be retried by an admin, so their images
stay), and every delivery of its jobs is done. Only finished studies are ever touched: nothing
that is still being received, unprocessed or undelivered.

Finished studies are purged oldest first (by their *last activity*: last instance, completion,
job end or delivery, whichever is latest) when that activity is older than the age limit, or --
whatever their age -- while disk use of ``data_dir`` is above the watermark. Only files the
database lists are deleted (instances received before the purge started and the jobs' results),
so an instance that arrives during a purge is never lost. Database rows stay for status and audit;
``studies.purged_at`` records the purge. A study that receives more data after its purge becomes a
candidate again once that data is finished too. A series re-run after its study was purged no
longer finds its older images (the job then fails with the missing file named).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, exists, func, or_, select, update

from storage.models import Delivery, Instance, Job, Result, Series, Study


@dataclass(frozen=True)
class FinishedStudy:
    study_id: int
    study_instance_uid: str
    last_activity: float


@dataclass(frozen=True)
class PurgedStudy:
    """What one purge removed: files and bytes, and why (``age`` or ``disk``)."""

    study_instance_uid: str
    files: int
    bytes: int
    last_activity: float
    reason: str


def finished_studies(engine: Engine) -> list[FinishedStudy]:
    """Studies whose data is fully processed and delivered and not purged since, oldest activity first."""
    unfinished_series = exists().where(Series.study_id == Study.id, Series.state != "complete")
    unfinished_job = exists().where(
        Job.series_id == Series.id, Series.study_id == Study.id, Job.state.in_(("queued", "running", "failed"))
    )
    undelivered = exists().where(
        Delivery.job_id == Job.id, Job.series_id == Series.id, Series.study_id == Study.id,
        Delivery.state != "done",
    )
    series_activity = (
        select(func.max(func.coalesce(Series.completed_at, Series.last_instance_at)))
        .where(Series.study_id == Study.id).scalar_subquery()
    )
    last_instance = select(func.max(Series.last_instance_at)).where(Series.study_id == Study.id).scalar_subquery()
    job_activity = (
        select(func.max(Job.finished_at)).join(Series, Series.id == Job.series_id)
        .where(Series.study_id == Study.id).scalar_subquery()
    )
    delivery_activity = (
        select(func.max(Delivery.delivered_at)).join(Job, Job.id == Delivery.job_id)
        .join(Series, Series.id == Job.series_id).where(Series.study_id == Study.id).scalar_subquery()
    )
    has_series = exists().where(Series.study_id == Study.id)
    query = select(Study.id, Study.study_instance_uid, Study.purged_at, last_instance, series_activity,
                   job_activity, delivery_activity).where(
        has_series, ~unfinished_series, ~unfinished_job, ~undelivered,
        or_(Study.purged_at.is_(None), Study.purged_at < last_instance),
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    studies = [
        FinishedStudy(study_id, uid, max(value for value in activity if value is not None))
        for study_id, uid, _purged, *activity in rows
    ]
    return sorted(studies, key=lambda s: (s.last_activity, s.study_id))


def disk_used_percent(data_dir: Path) -> float:
    usage = shutil.disk_usage(data_dir)
    return 100.0 * (usage.total - usage.free) / usage.total


def _delete(data_dir: Path, relative_paths: list[str]) -> tuple[int, int]:
    files = size = 0
    folders: set[Path] = set()
    for relative in relative_paths:
        path = data_dir / relative
        try:
            length = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
        files += 1
        size += length
        folders.add(path.parent)
        folders.add(path.parent.parent)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):  # series, then study folders
        if folder.resolve().is_relative_to(data_dir.resolve()) and folder.resolve() != data_dir.resolve():
            try:
                folder.rmdir()  # only when empty: a file that arrived meanwhile keeps its folder
            except OSError:
                pass
    return files, size


def purge_study(engine: Engine, data_dir: Path, study: FinishedStudy, now: float, reason: str) -> PurgedStudy:
    """Delete the study's instance files received up to ``now`` and its result files; mark it purged."""
    with engine.connect() as conn:
        instances = conn.execute(
            select(Instance.path).join(Series, Series.id == Instance.series_id)
            .where(Series.study_id == study.study_id, Instance.received_at <= now)
        ).scalars().all()
        results = conn.execute(
            select(Result.path).join(Job, Job.id == Result.job_id).join(Series, Series.id == Job.series_id)
            .where(Series.study_id == study.study_id)
        ).scalars().all()
    files, size = _delete(data_dir, [*instances, *results])
    with engine.begin() as conn:
        conn.execute(update(Study).where(Study.id == study.study_id).values(purged_at=now))
    return PurgedStudy(study.study_instance_uid, files, size, study.last_activity, reason)


def select_for_purge(studies: list[FinishedStudy], now: float, older_than_s: float | None) -> list[FinishedStudy]:
    """The finished studies old enough to go by age (``older_than_s`` None: none by age)."""
    if older_than_s is None:
        return []
    return [s for s in studies if s.last_activity <= now - older_than_s]


def purge(engine: Engine, data_dir: Path, now: float, *, older_than_s: float | None,
          watermark_percent: float | None = None, dry_run: bool = False) -> list[PurgedStudy]:
    """Purge finished studies older than ``older_than_s`` seconds, then more (oldest first) while
    disk use is above ``watermark_percent``; with ``dry_run`` only report what would go."""
    studies = finished_studies(engine)
    by_age = {s.study_id for s in select_for_purge(studies, now, older_than_s)}
    purged: list[PurgedStudy] = []
    for study in studies:
        if study.study_id in by_age:
            reason = "age"
        elif watermark_percent is not None and not dry_run and disk_used_percent(data_dir) > watermark_percent:
            reason = "disk"
        else:
            continue
        if dry_run:
            purged.append(PurgedStudy(study.study_instance_uid, 0, 0, study.last_activity, reason))
        else:
            purged.append(purge_study(engine, data_dir, study, now, reason))
    return purged

