"""Reading a running node's SQLite index from a test (SELECTs only; WAL lets them run beside the node)."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def query(data_dir: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows of one SELECT on ``data_dir/radnode.sqlite3``."""
    with closing(sqlite3.connect(data_dir / "radnode.sqlite3", timeout=30)) as db:
        return db.execute(sql, params).fetchall()


@dataclass(frozen=True)
class Activity:
    """What the node is doing, as its database says: series still arriving, jobs held by a worker
    and deliveries being sent (both under a lease that has not expired), and what is not finished."""

    receiving_series: int
    queued_jobs: int
    running_jobs: int
    unfinished_jobs: int
    pending_deliveries: int
    sending_deliveries: int
    unfinished_deliveries: int

    @property
    def quiet(self) -> bool:
        return not (self.receiving_series or self.unfinished_jobs or self.unfinished_deliveries)


def activity(data_dir: Path) -> Activity:
    now = time.time()

    def count(sql: str) -> int:
        return int(query(data_dir, sql, now)[0][0] if "?" in sql else query(data_dir, sql)[0][0])

    return Activity(
        receiving_series=count("select count(*) from series where state = 'receiving'"),
        queued_jobs=count("select count(*) from jobs where state = 'queued'"),
        running_jobs=count("select count(*) from jobs where state = 'running' and lease_expires_at > ?"),
        unfinished_jobs=count("select count(*) from jobs where state in ('queued', 'running')"),
        pending_deliveries=count("select count(*) from deliveries where state = 'pending'"),
        sending_deliveries=count("select count(*) from deliveries where state = 'sending' and lease_expires_at > ?"),
        unfinished_deliveries=count("select count(*) from deliveries where state in ('pending', 'sending')"),
    )
