"""Engine creation and schema migration for SQLite (embedded default) and PostgreSQL.

SQLite runs in WAL mode so readers never block the receiver, with ``synchronous=NORMAL`` (a
process crash loses nothing committed; the spool files themselves are fsynced before they are
acknowledged) and every transaction opened with ``BEGIN IMMEDIATE`` so that two writers never
deadlock on a lock upgrade (this is also how job claims are made atomic on SQLite).
"""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


SQLITE_FULL = 13  # "database or disk is full" (sqlite.org/rescode.html)
POSTGRESQL_DISK_FULL = "53100"  # SQLSTATE disk_full (PostgreSQL Appendix A)
_OUT_OF_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def is_out_of_space(exc: BaseException) -> bool:
    """True when ``exc`` (or what it wraps: SQLAlchemy's ``orig``, ``__cause__``) says the disk or
    quota is full: ENOSPC/EDQUOT, SQLite's SQLITE_FULL, PostgreSQL's SQLSTATE 53100."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _OUT_OF_SPACE_ERRNOS:
            return True
        if isinstance(current, sqlite3.Error) and (
            getattr(current, "sqlite_errorcode", None) == SQLITE_FULL or "database or disk is full" in str(current)
        ):
            return True
        if getattr(current, "sqlstate", None) == POSTGRESQL_DISK_FULL:  # psycopg.errors.DiskFull
            return True
        pending += [getattr(current, "orig", None), current.__cause__, current.__context__]
    return False


SQLITE_BEGIN = "BEGIN IMMEDIATE"  # how every SQLite transaction begins (see the module docstring)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def sqlite_file(url: URL) -> str | None:
    """The database file of a SQLite URL; None for another database or an in-memory one."""
    if not url.drivername.startswith("sqlite") or not url.database or url.database == ":memory:":
        return None
    return url.database


def create_database_engine(url: str) -> Engine:
    """Create an engine for ``url``; for SQLite, make the parent folder and set the pragmas."""
    parsed = make_url(url)
    if parsed.drivername.startswith("sqlite"):
        database_file = sqlite_file(parsed)
        if database_file is not None:
            Path(database_file).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            dbapi_connection.isolation_level = None  # let SQLAlchemy's begin event issue BEGIN
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin_immediate(connection) -> None:  # type: ignore[no-untyped-def]
            connection.exec_driver_sql(SQLITE_BEGIN)

        return engine
    if parsed.drivername in ("postgresql", "postgres"):
        url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (idempotent)."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
