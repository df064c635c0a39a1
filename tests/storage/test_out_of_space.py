"""Which errors mean "the disk is full" (storage/database.py is_out_of_space)."""

from __future__ import annotations

import errno
import sqlite3

import psycopg
from sqlalchemy.exc import IntegrityError, OperationalError

from storage.database import is_out_of_space


def test_enospc_and_quota_errors_are_out_of_space() -> None:
    assert is_out_of_space(OSError(errno.ENOSPC, "No space left on device"))
    assert is_out_of_space(OSError(errno.EDQUOT, "Disk quota exceeded"))


def test_postgresql_disk_full_wrapped_by_sqlalchemy_is_out_of_space() -> None:
    wrapped = OperationalError("INSERT ...", {}, psycopg.errors.DiskFull("could not extend file"))
    assert is_out_of_space(wrapped)


def test_sqlite_full_wrapped_by_sqlalchemy_is_out_of_space() -> None:
    wrapped = OperationalError("COMMIT", {}, sqlite3.OperationalError("database or disk is full"))
    assert is_out_of_space(wrapped)


def test_other_database_and_os_errors_are_not() -> None:
    assert not is_out_of_space(OSError(errno.EACCES, "Permission denied"))
    assert not is_out_of_space(IntegrityError("INSERT ...", {}, sqlite3.IntegrityError("UNIQUE constraint failed")))
    assert not is_out_of_space(OperationalError("SELECT", {}, psycopg.errors.DeadlockDetected("deadlock")))
    assert not is_out_of_space(ValueError("no"))
