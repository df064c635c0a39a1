"""Every storage test runs on SQLite (embedded default) and on a real PostgreSQL server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from storage.database import create_database_engine, migrate
from tests.support.postgres import postgresql_database, postgresql_server, sqlalchemy_url  # noqa: F401


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'radnode.sqlite3'}"
    else:
        url = sqlalchemy_url(request.getfixturevalue("postgresql_database"))
    engine = create_database_engine(url)
    migrate(engine)
    yield engine
    engine.dispose()
