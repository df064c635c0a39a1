"""The delivery queue: one row per (job, destination), claimed under a lease like jobs are.

Nothing is dropped: a failed send goes back to ``pending`` with a later ``next_attempt_at``; only
after the give-up age does it become ``dead``, and ``radnode retry`` brings it back.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, Engine, and_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from storage.models import Delivery, Job, Result


@dataclass(frozen=True)
class DeliveryTarget:
    """Where one job's results go: a destination resolved to its AE title and address."""

    destination: str
    ae_title: str
    host: str
    port: int


@dataclass(frozen=True)
class ClaimedDelivery:
    id: int
    job_id: int
    destination: str
    ae_title: str
    host: str
    port: int
    attempts: int
    created_at: float


@dataclass(frozen=True)
class ResultFile:
    sop_class_uid: str
    sop_instance_uid: str
    path: str
    fallback_for: str | None


def add_deliveries(conn: Connection, job_id: int, targets: list[DeliveryTarget], now: float) -> None:
    """Queue a delivery of job ``job_id`` to each target (inside the caller's transaction).

    A re-run job gets its deliveries again (pending, attempts reset) so replaced results are sent."""
    insert_fn = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    for target in targets:
        statement = insert_fn(Delivery).values(
            job_id=job_id, destination=target.destination, ae_title=target.ae_title, host=target.host,
            port=target.port, state="pending", attempts=0, next_attempt_at=now, created_at=now,
        )
        conn.execute(statement.on_conflict_do_update(
            index_elements=["job_id", "destination"],
            set_={"state": "pending", "attempts": 0, "next_attempt_at": now, "created_at": now,
                  "last_error": None, "lease_owner": None, "lease_expires_at": None},
        ))


class DeliveryQueue:
    def __init__(self, engine: Engine, give_up_after_s: float) -> None:
        self._engine = engine
        self._give_up_after_s = give_up_after_s
        self._skip_locked = engine.dialect.name == "postgresql"

    def due_destinations(self, now: float) -> list[str]:
        """Destinations that have at least one delivery ready to be sent."""
        with self._engine.connect() as conn:
            return list(conn.execute(select(Delivery.destination).where(self._runnable(now)).distinct()).scalars())

    @staticmethod
    def _runnable(now: float):  # type: ignore[no-untyped-def]
        return or_(
            and_(Delivery.state == "pending", Delivery.next_attempt_at <= now),
            and_(Delivery.state == "sending", Delivery.lease_expires_at < now),
        )

    def claim(self, destination: str, owner: str, lease_s: float, now: float) -> ClaimedDelivery | None:
        """Take the oldest runnable delivery to ``destination``."""
        query = (
            select(Delivery.id)
            .where(self._runnable(now), Delivery.destination == destination)
            .order_by(Delivery.next_attempt_at, Delivery.id)
            .limit(1)
        )
        if self._skip_locked:
            query = query.with_for_update(skip_locked=True)
        with self._engine.begin() as conn:
            delivery_id = conn.execute(query).scalar()
            if delivery_id is None:
                return None
            conn.execute(
                update(Delivery)
                .where(Delivery.id == delivery_id)
                .values(state="sending", attempts=Delivery.attempts + 1, lease_owner=owner,
                        lease_expires_at=now + lease_s)
            )
            row = conn.execute(select(Delivery).where(Delivery.id == delivery_id)).mappings().one()
            return ClaimedDelivery(
                id=row["id"], job_id=row["job_id"], destination=row["destination"], ae_title=row["ae_title"],
                host=row["host"], port=row["port"], attempts=row["attempts"], created_at=row["created_at"],
            )

    def result_files(self, job_id: int) -> list[ResultFile]:
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(Result.sop_class_uid, Result.sop_instance_uid, Result.path, Result.fallback_for)
                .where(Result.job_id == job_id)
                .order_by(Result.id)
            ).all()
        return [ResultFile(*row) for row in rows]

    def mark_done(self, delivery_id: int, owner: str, now: float) -> bool:
        with self._engine.begin() as conn:
            return conn.execute(
                update(Delivery)
                .where(Delivery.id == delivery_id, Delivery.lease_owner == owner)
                .values(state="done", delivered_at=now, lease_owner=None, lease_expires_at=None, last_error=None)
            ).rowcount == 1

    def mark_failed(self, delivery: ClaimedDelivery, owner: str, error: str, retry_delay_s: float, now: float) -> str:
        """Back to ``pending`` after ``retry_delay_s``, or ``dead`` once past the give-up age."""
        state = "dead" if now - delivery.created_at >= self._give_up_after_s else "pending"
        with self._engine.begin() as conn:
            conn.execute(
                update(Delivery)
                .where(Delivery.id == delivery.id, Delivery.lease_owner == owner)
                .values(state=state, next_attempt_at=now + retry_delay_s, last_error=error,
                        lease_owner=None, lease_expires_at=None)
            )
        return state

    def lease_owners(self, owner_prefix: str) -> set[str]:
        """Owners (``host:pid:...``) starting with ``owner_prefix`` that hold a delivery being sent."""
        with self._engine.connect() as conn:
            return set(conn.execute(
                select(Delivery.lease_owner)
                .where(Delivery.state == "sending", Delivery.lease_owner.like(f"{owner_prefix}%")).distinct()
            ).scalars())

    def release_owners(self, owners: set[str], now: float) -> int:
        """Expire the leases of deliveries held by ``owners`` (processes known to be gone) so they are
        sent again at once; the destination may get some objects twice, which a PACS stores once
        (same SOP Instance UIDs). Returns how many deliveries."""
        if not owners:
            return 0
        with self._engine.begin() as conn:
            return conn.execute(
                update(Delivery).where(Delivery.state == "sending", Delivery.lease_owner.in_(owners))
                .values(lease_expires_at=now - 1)
            ).rowcount

    def retry(self, now: float, delivery_ids: list[int] | None = None) -> int:
        """Put dead deliveries (all, or the given ones) back to pending; return how many."""
        condition = Delivery.state == "dead"
        if delivery_ids:
            condition = and_(condition, Delivery.id.in_(delivery_ids))
        with self._engine.begin() as conn:
            return conn.execute(
                update(Delivery).where(condition).values(
                    state="pending", attempts=0, next_attempt_at=now, created_at=now, last_error=None)
            ).rowcount


def retry_failed_jobs(engine: Engine, now: float, job_ids: list[int] | None = None) -> int:
    """Put failed jobs (all, or the given ones) back in the queue with fresh attempts."""
    condition = Job.state == "failed"
    if job_ids:
        condition = and_(condition, Job.id.in_(job_ids))
    with engine.begin() as conn:
        return conn.execute(
            update(Job).where(condition).values(state="queued", attempts=0, not_before=now, last_error=None,
                                                finished_at=None)
        ).rowcount
