"""The job queue: atomic claims with a lease, so a job held by a dead worker is taken over.

Claims are atomic on both databases: on SQLite every transaction starts with ``BEGIN IMMEDIATE``
(see database.py), on PostgreSQL the candidate row is locked with ``FOR UPDATE SKIP LOCKED`` so
concurrent workers never wait on, or take, the same row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import Engine, and_, or_, select, update

from storage.models import Instance, Job, Series, Study


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    series_id: int
    series_instance_uid: str
    study_instance_uid: str
    generation: int
    pipeline: str
    route: str
    send_to: tuple[str, ...]
    attempts: int
    calling_ae_title: str
    calling_host: str


class LeaseLost(Exception):
    """The worker no longer holds the job (its lease expired and another worker took it)."""


class JobQueue:
    def __init__(self, engine: Engine, max_attempts: int) -> None:
        self._engine = engine
        self._max_attempts = max_attempts
        self._skip_locked = engine.dialect.name == "postgresql"

    def claim(self, owner: str, lease_s: float, now: float) -> ClaimedJob | None:
        """Take the oldest runnable job (queued, or running with an expired lease) for ``owner``."""
        runnable = or_(
            and_(Job.state == "queued", Job.not_before <= now),
            and_(Job.state == "running", Job.lease_expires_at < now),
        )
        query = select(Job.id, Job.state, Job.attempts).where(runnable).order_by(Job.id).limit(1)
        if self._skip_locked:
            query = query.with_for_update(skip_locked=True)
        while True:
            with self._engine.begin() as conn:
                row = conn.execute(query).first()
                if row is None:
                    return None
                job_id, state, attempts = row
                if attempts >= self._max_attempts:
                    reason = (
                        f"gave up after {attempts} attempts; the last worker stopped answering (lease expired)"
                        if state == "running"
                        else f"gave up after {attempts} attempts"
                    )
                    conn.execute(
                        update(Job)
                        .where(Job.id == job_id)
                        .values(state="failed", finished_at=now, lease_owner=None, last_error=reason)
                    )
                    continue
                conn.execute(
                    update(Job)
                    .where(Job.id == job_id)
                    .values(
                        state="running",
                        attempts=Job.attempts + 1,
                        lease_owner=owner,
                        lease_expires_at=now + lease_s,
                        started_at=now,
                    )
                )
                details = conn.execute(
                    select(
                        Job.series_id,
                        Series.series_instance_uid,
                        Study.study_instance_uid,
                        Job.generation,
                        Job.pipeline,
                        Job.route,
                        Job.send_to,
                        Job.attempts,
                        Series.calling_ae_title,
                        Series.calling_host,
                    )
                    .join(Series, Series.id == Job.series_id)
                    .join(Study, Study.id == Series.study_id)
                    .where(Job.id == job_id)
                ).one()
                return ClaimedJob(
                    id=job_id,
                    series_id=details[0],
                    series_instance_uid=details[1],
                    study_instance_uid=details[2],
                    generation=details[3],
                    pipeline=details[4],
                    route=details[5],
                    send_to=tuple(json.loads(details[6])),
                    attempts=details[7],
                    calling_ae_title=details[8],
                    calling_host=details[9],
                )

    def renew(self, job_id: int, owner: str, lease_s: float, now: float) -> None:
        """Extend the lease; raise LeaseLost if another worker has taken the job."""
        with self._engine.begin() as conn:
            renewed = conn.execute(
                update(Job)
                .where(Job.id == job_id, Job.lease_owner == owner, Job.state == "running")
                .values(lease_expires_at=now + lease_s)
            ).rowcount
        if renewed != 1:
            raise LeaseLost(f"job {job_id} is no longer held by {owner}")

    def finish(self, job_id: int, owner: str, state: str, now: float, *, error: str | None = None,
               measurements: dict[str, float] | None = None) -> bool:
        """End a job held by ``owner`` as ``succeeded`` or ``refused``; False if the lease was lost."""
        with self._engine.begin() as conn:
            return conn.execute(
                update(Job)
                .where(Job.id == job_id, Job.lease_owner == owner, Job.state == "running")
                .values(
                    state=state,
                    finished_at=now,
                    lease_owner=None,
                    lease_expires_at=None,
                    last_error=error,
                    measurements=json.dumps(measurements) if measurements is not None else None,
                )
            ).rowcount == 1

    def fail(self, job_id: int, owner: str, error: str, retry_at: float, now: float) -> str:
        """Record a failed attempt: back to ``queued`` (not before ``retry_at``) while attempts
        remain, else ``failed``. Returns the new state."""
        with self._engine.begin() as conn:
            attempts = conn.execute(select(Job.attempts).where(Job.id == job_id)).scalar_one()
            state = "failed" if attempts >= self._max_attempts else "queued"
            conn.execute(
                update(Job)
                .where(Job.id == job_id, Job.lease_owner == owner)
                .values(
                    state=state,
                    not_before=retry_at,
                    lease_owner=None,
                    lease_expires_at=None,
                    last_error=error,
                    finished_at=now if state == "failed" else None,
                )
            )
            return state

    def lease_owners(self, owner_prefix: str) -> set[str]:
        """Owners (``host:pid:...``) starting with ``owner_prefix`` that hold a running job."""
        with self._engine.connect() as conn:
            return set(conn.execute(
                select(Job.lease_owner).where(Job.state == "running", Job.lease_owner.like(f"{owner_prefix}%"))
                .distinct()
            ).scalars())

    def release_owners(self, owners: set[str], now: float) -> int:
        """Expire the leases of running jobs held by ``owners`` (processes known to be gone), so the
        next claim takes them at once instead of after ``lease_s``; return how many jobs."""
        if not owners:
            return 0
        with self._engine.begin() as conn:
            return conn.execute(
                update(Job).where(Job.state == "running", Job.lease_owner.in_(owners)).values(lease_expires_at=now - 1)
            ).rowcount

    def instance_paths(self, series_id: int) -> list[str]:
        with self._engine.connect() as conn:
            return list(conn.execute(select(Instance.path).where(Instance.series_id == series_id)).scalars())
