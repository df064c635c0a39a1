"""Database schema (SQLAlchemy 2). Timestamps are POSIX seconds (UTC) as floats.

The database holds no pixel data; it indexes what is in the spool and tracks the work on it.
Patient-identifying attributes are not stored here: status and logs show UIDs and counts.
"""

from __future__ import annotations

from sqlalchemy import Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

UID_LENGTH = 64  # PS3.5 9.1: a UID is at most 64 characters


class Base(DeclarativeBase):
    pass


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    first_received_at: Mapped[float] = mapped_column(Float)
    # when retention last deleted the study's spool and outbox files (storage/retention.py); rows stay
    purged_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Series(Base):
    """A series as received. ``state`` is ``receiving`` or ``complete``; a late instance after
    completion reopens it and bumps ``generation``."""

    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    state: Mapped[str] = mapped_column(String(16), default="receiving")
    generation: Mapped[int] = mapped_column(Integer, default=0)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[float] = mapped_column(Float)
    last_instance_at: Mapped[float] = mapped_column(Float)
    released_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    completed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    calling_ae_title: Mapped[str] = mapped_column(String(16), default="")
    calling_host: Mapped[str] = mapped_column(String(255), default="")
    routing_note: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (Index("ix_series_state_last", "state", "last_instance_at"),)


class Instance(Base):
    """One stored SOP instance; ``path`` is relative to data_dir."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    path: Mapped[str] = mapped_column(String(512))
    size_bytes: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[float] = mapped_column(Float)


class Job(Base):
    """One run of a pipeline on one generation of a series.

    ``state``: queued -> running -> succeeded | failed | refused. A running job whose lease has
    expired is claimable again (its worker is presumed dead)."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    pipeline: Mapped[str] = mapped_column(String(128))
    route: Mapped[str] = mapped_column(String(128))
    send_to: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of destination names / "sender"
    state: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    not_before: Mapped[float] = mapped_column(Float, default=0.0)
    lease_owner: Mapped[str | None] = mapped_column(String(255), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    measurements: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON
    timings: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON: seconds per stage
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (
        UniqueConstraint("series_id", "pipeline", "generation", name="uq_jobs_series_pipeline_generation"),
        Index("ix_jobs_state", "state", "not_before"),
    )


class Result(Base):
    """A result object written by a job into the outbox (``path`` relative to data_dir).

    Result UIDs are stable per (source series, pipeline, model version), so a re-run replaces
    the row (and the file) instead of adding one."""

    __tablename__ = "results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    series_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    sop_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    modality: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(String(512))
    size_bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    # set on an alternative object (e.g. a BINARY SEG) sent only when a destination refuses the
    # SOP class of the object it stands in for (e.g. a LABELMAP SEG)
    fallback_for: Mapped[str | None] = mapped_column(String(UID_LENGTH), nullable=True)


class Delivery(Base):
    """Sending all result objects of one job to one destination, over one association.

    ``state``: pending -> sending -> done, or dead after the give-up age (``radnode retry`` puts a
    dead one back to pending). A ``sending`` row whose lease expired is picked up again."""

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    destination: Mapped[str] = mapped_column(String(128))  # a [[destinations]] name, or "sender"
    ae_title: Mapped[str] = mapped_column(String(16))
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float, default=0.0)
    lease_owner: Mapped[str | None] = mapped_column(String(255), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    delivered_at: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (
        UniqueConstraint("job_id", "destination", name="uq_deliveries_job_destination"),
        Index("ix_deliveries_state", "state", "next_attempt_at"),
    )
