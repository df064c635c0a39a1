"""Recording received instances and the series/study they belong to (the receiver's hot path).

One short transaction per instance: insert the instance (idempotent on SOP Instance UID), bump the
series counters and, when a completed series receives a new instance, reopen it (generation + 1).
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from storage.database import SQLITE_BEGIN, is_sqlite, sqlite_file
from storage.models import Instance, Series, Study

log = logging.getLogger("radnode.index")


@dataclass(frozen=True)
class ReceivedInstance:
    """What the receiver knows of one stored instance (UIDs already validated)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str
    relative_path: str
    size_bytes: int
    calling_ae_title: str
    calling_host: str
    received_at: float


@dataclass(frozen=True)
class RecordOutcome:
    series_id: int
    is_new_instance: bool
    reopened: bool


class _Prepared:
    """A Core statement compiled once for one dialect and run on a DBAPI connection in a
    transaction: per call, only the driver's execute is paid, not SQLAlchemy's statement cache
    lookup, parameter processing and result wrapping. Only for statements whose column types need
    no bind processing (Integer, Float, String here)."""

    def __init__(self, statement: Any, dialect: Any) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        self.defaults = dict(compiled.params)  # literals of the statement, e.g. state='receiving'
        self.positions = compiled.positiontup  # parameter order for positional paramstyles (SQLite)

    def execute(self, dbapi_connection: Any, params: dict[str, Any]) -> Any:
        """Run with ``params`` (by bind name) on ``dbapi_connection``; return the cursor."""
        values = {**self.defaults, **params}
        cursor = dbapi_connection.cursor()
        if self.positions is not None:
            cursor.execute(self.sql, [values[name] for name in self.positions])
        else:
            cursor.execute(self.sql, values)
        return cursor


def _one_value(cursor: Any) -> Any:
    """The single value of the single row a cursor returned; LookupError when there is none."""
    row = cursor.fetchone()
    if row is None:
        raise LookupError("expected one row, got none")
    return row[0]


class SqliteWriteTurns:
    """Receivers' instance transactions on one SQLite file take turns here before BEGIN IMMEDIATE:
    a thread lock within the process, then ``flock`` on ``path`` across processes.

    SQLite's own wait for its write lock (the busy timeout) sleeps 1, 2, 5, 10 ... ms between
    tries, so a transaction that finds the lock taken waits at least 1 ms for a holder that
    needs about 0.1 ms. With four associations on two receivers, py-spy showed the receiving
    threads 10-13% of their time in BEGIN IMMEDIATE. A waiter here is woken as soon as the
    holder is done (harness, 4 storescu, 12 runs each: median 0.59 s without, 0.55 s with).
    Other writers (completion, workers) keep SQLite's own wait; a process that dies holding the
    flock releases it with its file descriptors."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._lock = threading.Lock()
        weakref.finalize(self, os.close, self._fd)

    @contextmanager
    def taken(self) -> Iterator[None]:
        """Hold the turn for one transaction."""
        with self._lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)


def _open_write_turns(database: str) -> SqliteWriteTurns | None:
    """The turns of the SQLite file ``database``; None (SQLite's own wait) when the lock file
    cannot be made, e.g. on a full disk, which must not keep a receiver from starting."""
    try:
        return SqliteWriteTurns(f"{database}.writers")
    except OSError as exc:
        log.warning("cannot open %s.writers (%s): receivers wait for SQLite's write lock by its own retries",
                    database, exc.strerror)
        return None


class InstanceIndex:
    """Writes instance rows; keeps a per-process cache of series ids to skip lookups.

    The statements of the per-instance path are Core statements built once with bound
    parameters and compiled once (:class:`_Prepared`). Through ``Connection.execute`` the three
    statements of an instance cost about as much CPU as everything else the receiver does for it,
    and with four associations the receivers are CPU-bound. Instances are recorded on a DBAPI
    connection taken from the engine's pool (pre-ping and reset on return as for any checkout) in
    a transaction begun and ended here (:meth:`_dbapi_transaction`), without SQLAlchemy's
    Connection, begin event and statement execution around it. The same goes for a series' first
    instance in this process (study and series rows made or looked up) and for an association's
    release: through ``Connection.execute`` those cost 2-3 ms of CPU each, paid per series and per
    association, which is most of the work for a one-image study (radiographs).
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._begin_sql = SQLITE_BEGIN if is_sqlite(engine) else None  # psycopg begins by itself
        database_file = sqlite_file(engine.url)
        self._turns = _open_write_turns(database_file) if database_file is not None else None
        self._held: Any = None  # the SQLite connection of _held_transaction, between transactions
        self._series_ids: dict[str, int] = {}
        dialect = engine.dialect.name
        self._insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        self._insert_instance = _Prepared(
            self._insert(Instance)
            .values(
                series_id=bindparam("series_id"),
                sop_instance_uid=bindparam("sop_instance_uid"),
                sop_class_uid=bindparam("sop_class_uid"),
                transfer_syntax_uid=bindparam("transfer_syntax_uid"),
                path=bindparam("path"),
                size_bytes=bindparam("size_bytes"),
                received_at=bindparam("received_at"),
            )
            .on_conflict_do_nothing(index_elements=["sop_instance_uid"])
            .returning(Instance.id),  # a row back = inserted (rowcount is not portable with RETURNING)
            engine.dialect,
        )
        self._update_duplicate = _Prepared(
            update(Instance)
            .where(Instance.sop_instance_uid == bindparam("uid"))
            .values(size_bytes=bindparam("size"), received_at=bindparam("at")),
            engine.dialect,
        )
        bumped_values = dict(
            instance_count=Series.instance_count + 1,
            last_instance_at=bindparam("at"),
            released_at=None,
            state="receiving",
            # start-up recovery re-indexes files without knowing their sender: keep the known one
            calling_ae_title=func.coalesce(func.nullif(bindparam("ae"), ""), Series.calling_ae_title),
            calling_host=func.coalesce(func.nullif(bindparam("host"), ""), Series.calling_host),
        )
        # the usual case in one statement: no row changed means the series had completed
        self._bump_open_series = _Prepared(
            update(Series).where(Series.id == bindparam("sid"), Series.state != "complete").values(**bumped_values),
            engine.dialect,
        )
        self._insert_study = _Prepared(
            self._insert(Study)
            .values(study_instance_uid=bindparam("study_uid"), first_received_at=bindparam("at"))
            .on_conflict_do_nothing(index_elements=["study_instance_uid"]),
            engine.dialect,
        )
        self._select_study = _Prepared(
            select(Study.id).where(Study.study_instance_uid == bindparam("study_uid")), engine.dialect
        )
        self._insert_series = _Prepared(
            self._insert(Series)
            .values(
                study_id=bindparam("study_id"),
                series_instance_uid=bindparam("series_uid"),
                modality=bindparam("modality"),
                state="receiving",
                generation=0,
                instance_count=0,
                first_received_at=bindparam("at"),
                last_instance_at=bindparam("at"),
                calling_ae_title=bindparam("ae"),
                calling_host=bindparam("host"),
            )
            .on_conflict_do_nothing(index_elements=["series_instance_uid"]),
            engine.dialect,
        )
        self._select_series = _Prepared(
            select(Series.id).where(Series.series_instance_uid == bindparam("series_uid")), engine.dialect
        )
        self._mark_released = _Prepared(
            update(Series).where(Series.id == bindparam("sid"), Series.state == "receiving")
            .values(released_at=bindparam("at")),
            engine.dialect,
        )
        self._reopen_series = _Prepared(
            update(Series).where(Series.id == bindparam("sid"))
            .values(**bumped_values, generation=Series.generation + 1),
            engine.dialect,
        )

    def record(self, item: ReceivedInstance) -> RecordOutcome:
        """Index one instance whose file is already durable in the spool."""
        series_id = self._series_ids.get(item.series_instance_uid)
        with self._dbapi_transaction() as dbapi_connection:
            if series_id is not None:
                return self._record_instance(dbapi_connection, series_id, item)
            series_id = self._ensure_series(dbapi_connection, item)  # first instance of the series here
            outcome = self._record_instance(dbapi_connection, series_id, item)
        self._series_ids[item.series_instance_uid] = series_id  # only once its rows are committed
        return outcome

    @contextmanager
    def _dbapi_transaction(self) -> Iterator[Any]:
        """A DBAPI connection in a transaction (BEGIN IMMEDIATE on SQLite, as every transaction
        of the engine; psycopg begins on the first statement), committed when the block ends,
        rolled back when it raises. On SQLite with turns (:class:`SqliteWriteTurns`), the turn is
        taken first and the process's held connection is used (:meth:`_held_transaction`);
        otherwise a pooled one, back to the pool either way."""
        if self._turns is None:
            with self._pooled_transaction() as dbapi_connection:
                yield dbapi_connection
            return
        with self._turns.taken(), self._held_transaction() as dbapi_connection:
            yield dbapi_connection

    @contextmanager
    def _held_transaction(self) -> Iterator[Any]:
        """The transaction of :meth:`_dbapi_transaction` on the one SQLite connection that this
        process's instance transactions share, one at a time (only under the turn's thread lock).

        Held, the connection skips the pool's checkout and checkin (its queue, locks and reset
        on return): an instance's transaction took 52 instead of 65 us of CPU (1000 records in a
        row, one thread). A connection whose rollback fails is invalidated, and the next
        transaction checks out a new one."""
        pooled = self._held if self._held is not None else self._engine.raw_connection()
        self._held = None  # held again only once this transaction has ended
        try:
            with self._transaction_on(pooled) as dbapi_connection:
                yield dbapi_connection
        finally:
            if pooled.is_valid:
                self._held = pooled

    @contextmanager
    def _pooled_transaction(self) -> Iterator[Any]:
        """The transaction of :meth:`_dbapi_transaction` on a connection checked out for it."""
        pooled = self._engine.raw_connection()
        try:
            with self._transaction_on(pooled) as dbapi_connection:
                yield dbapi_connection
        finally:
            pooled.close()

    @contextmanager
    def _transaction_on(self, pooled: Any) -> Iterator[Any]:
        """A transaction on the DBAPI connection of ``pooled`` (begun explicitly on SQLite),
        committed when the block ends, rolled back when it or the commit raises; ``pooled`` is
        invalidated when the rollback fails too, so that it is neither held nor pooled again."""
        dbapi_connection = pooled.dbapi_connection
        try:
            if self._begin_sql is not None:
                dbapi_connection.execute(self._begin_sql)
            yield dbapi_connection
            dbapi_connection.commit()
        except BaseException:
            try:
                dbapi_connection.rollback()
            except Exception:  # a broken connection
                pooled.invalidate()
                raise
            raise

    def _record_instance(self, dbapi_connection: Any, series_id: int, item: ReceivedInstance) -> RecordOutcome:
        inserted_row = self._insert_instance.execute(
            dbapi_connection,
            {
                "series_id": series_id,
                "sop_instance_uid": item.sop_instance_uid,
                "sop_class_uid": item.sop_class_uid,
                "transfer_syntax_uid": item.transfer_syntax_uid,
                "path": item.relative_path,
                "size_bytes": item.size_bytes,
                "received_at": item.received_at,
            },
        ).fetchone()
        if inserted_row is None:
            self._update_duplicate.execute(
                dbapi_connection, {"uid": item.sop_instance_uid, "size": item.size_bytes, "at": item.received_at}
            )
            return RecordOutcome(series_id=series_id, is_new_instance=False, reopened=False)
        bump = {"sid": series_id, "at": item.received_at, "ae": item.calling_ae_title, "host": item.calling_host}
        reopened = self._bump_open_series.execute(dbapi_connection, bump).rowcount == 0
        if reopened:  # the series had completed: this late instance reopens it (generation + 1)
            self._reopen_series.execute(dbapi_connection, bump)
        return RecordOutcome(series_id=series_id, is_new_instance=True, reopened=reopened)

    def _ensure_series(self, dbapi_connection: Any, item: ReceivedInstance) -> int:
        """The id of the instance's series, made (with its study) when this is its first instance
        anywhere; in the caller's transaction."""
        self._insert_study.execute(dbapi_connection, {"study_uid": item.study_instance_uid, "at": item.received_at})
        study_id = _one_value(self._select_study.execute(dbapi_connection, {"study_uid": item.study_instance_uid}))
        self._insert_series.execute(dbapi_connection, {
            "study_id": study_id, "series_uid": item.series_instance_uid, "modality": item.modality[:16],
            "at": item.received_at, "ae": item.calling_ae_title, "host": item.calling_host,
        })
        return _one_value(self._select_series.execute(dbapi_connection, {"series_uid": item.series_instance_uid}))

    def mark_released(self, series_ids: set[int], released_at: float) -> None:
        """Note that the association that sent these series was released (starts the grace period)."""
        if not series_ids:
            return
        with self._dbapi_transaction() as dbapi_connection:
            for series_id in sorted(series_ids):
                self._mark_released.execute(dbapi_connection, {"sid": series_id, "at": released_at})

    def known_instance_paths(self) -> set[str]:
        """Relative paths of every indexed instance (used by the start-up reconciliation)."""
        with self._engine.connect() as conn:
            return set(conn.execute(select(Instance.path)).scalars())

    def count_instances(self) -> int:
        with self._engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(Instance)).scalar_one())
