"""A throwaway PostgreSQL server for the tests (pytest-postgresql), started from the installed
Debian binaries; as root, through tests/support/pg_ctl_as_postgres.sh."""

from __future__ import annotations

import shutil
from pathlib import Path

from pytest_postgresql import factories

PG_CTL = str(Path(__file__).with_name("pg_ctl_as_postgres.sh"))

if not list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")) or shutil.which("runuser") is None:
    raise RuntimeError("PostgreSQL server binaries are missing: run scripts/bootstrap.sh (installs Debian postgresql)")

postgresql_server = factories.postgresql_proc(executable=PG_CTL, port=None)
postgresql_database = factories.postgresql("postgresql_server")


def sqlalchemy_url(connection) -> str:  # type: ignore[no-untyped-def]
    """The SQLAlchemy URL of a psycopg connection made by pytest-postgresql."""
    info = connection.info
    return f"postgresql://{info.user}@{info.host}:{info.port}/{info.dbname}"
