"""The state directory: run history and schedule state in SQLite, log paths, the daemon lock.

Layout (CONTRACT §8)::

    STATE_DIR/state.db                  runs, their steps, per-job schedule state (SQLite, WAL)
    STATE_DIR/daemon.lock               flock held by the one daemon; holds its pid
    STATE_DIR/logs/JOB/RUN_ID/STEP.log  step output (written by the engine)

Callers speak to ``Store``, a protocol of domain verbs, so that a PostgreSQL store can follow
without touching them. Its methods are synchronous; async code runs them with
``trio.to_thread.run_sync``. ``SqliteStore`` is the implementation: one connection guarded by a
lock (any worker thread may call it), WAL so other processes read while the daemon writes,
``synchronous=FULL`` so a committed batch survives a power cut, and every batch of events one
transaction, so a kill -9 leaves either all of a batch or none of it.

A run's owner is a process identity ``"PID:STARTTIME"`` (the kernel's start time of the process,
so a recycled pid never passes for the dead owner). ``recover`` marks the runs of dead owners
``interrupted``.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from pipeline.errors import RunActive, StateError
from pipeline.events import (
    Event,
    RunFinished,
    RunQueued,
    RunSkipped,
    RunStarted,
    StepFinished,
    StepRetrying,
    StepSpawned,
    StepStarted,
    WatermarkMoved,
)
from pipeline.model import (
    Definition,
    RunRecord,
    RunStatus,
    StepRecord,
    StepStatus,
    Trigger,
    Version,
    freeze,
)

DB_FILE = "state.db"
BUSY_TIMEOUT = 10.0  # seconds a writer waits for another process's transaction

INTERRUPTED_RUNNING = "the daemon stopped while it ran"
INTERRUPTED_QUEUED = "the daemon stopped before it started"


class Store(Protocol):
    """The state of every job and run, as the engine, the scheduler, the CLI and HTTP use it.

    Every method is synchronous and may block on disk; call it from a worker thread in async
    code. Every method may raise ``StateError`` when the state cannot be read or written (a full
    disk, an I/O error, a lock held too long by another process); a failed ``record`` applies
    nothing, so the same batch can be retried later.
    """

    def record(self, events: Sequence[Event]) -> frozenset[str]:
        """Apply ``events`` in order, in one transaction.

        Returns the run ids of ``RunQueued`` (and ``RunSkipped``) events refused because their
        (job, fire_time) already has a run, or their run id is taken; the rest of the batch is
        applied. Step events for an unknown run are ignored. Times must be aware (``ValueError``
        otherwise, and nothing of the batch is applied); the store gives them back in UTC.
        """
        ...

    def run(self, run_id: str) -> RunRecord | None:
        """One run with its document and its steps (in the order they were first recorded)."""
        ...

    def runs(self, *, job: str | None = None, status: RunStatus | None = None,
             trigger: Trigger | None = None, since: datetime | None = None,
             limit: int = 50, offset: int = 0) -> list[RunRecord]:
        """Runs newest first (by queued time, then id), without steps or document."""
        ...

    def count_runs(self, *, job: str | None = None, status: RunStatus | None = None,
                   trigger: Trigger | None = None, since: datetime | None = None) -> int:
        """How many runs ``runs`` would list without a limit."""
        ...

    def last_runs(self) -> dict[str, RunRecord]:
        """The newest run of every job that has one, without steps or document."""
        ...

    def active_runs(self, job: str | None = None) -> list[RunRecord]:
        """Queued and running runs, oldest first, without steps or document."""
        ...

    def last_success(self, job: str) -> datetime | None:
        """When the job's last succeeded run finished."""
        ...

    def watermark(self, job: str) -> datetime | None:
        """The instant up to which every fire of ``job`` has been dealt with."""
        ...

    def watermarks(self) -> dict[str, datetime]:
        ...

    def fires_after(self, job: str, after: datetime) -> set[datetime]:
        """Fire times after ``after`` that already have a run (of any status, skipped too)."""
        ...

    def consecutive_failures(self, job: str) -> int:
        """Failed scheduled and catch-up runs since the last success or circuit reset."""
        ...

    def circuit_opened_at(self, job: str, after: int) -> datetime | None:
        """When the circuit breaker opened, if ``after`` consecutive failures hold it open."""
        ...

    def reset_circuit(self, job: str, at: datetime) -> None:
        """Forget the failures that finished before ``at``: the circuit closes."""
        ...

    def recover(self, is_alive: Callable[[str], bool], now: datetime) -> list[RunRecord]:
        """Mark active runs whose owner is dead ``interrupted``; return them with their steps."""
        ...

    def prune(self, job: str, *, keep_runs: int | None, keep_days: float | None,
              now: datetime) -> list[RunRecord]:
        """Delete the job's finished runs beyond the limits; return them with their steps."""
        ...

    def delete_run(self, run_id: str) -> RunRecord | None:
        """Delete a finished run; None if unknown. Raises ``RunActive`` for an active one."""
        ...

    def jobs_with_runs(self) -> list[str]:
        """Names of every job that has at least one run, sorted."""
        ...

    def definitions(self) -> dict[str, Definition]:
        """The last good version of every job file the daemon has loaded, by file."""
        ...

    def remember_definitions(self, kept: Sequence[Definition],
                             forgotten: Collection[str]) -> None:
        """Store ``kept`` (replacing a file's earlier version) and drop the ``forgotten``
        files, in one transaction."""
        ...

    def close(self) -> None:
        ...


_ACTIVE = f"('{RunStatus.QUEUED}', '{RunStatus.RUNNING}')"
# Runs that stand for a scheduled instant: one per (job, instant), whatever else runs.
KEYED_TRIGGERS = frozenset({Trigger.SCHEDULE, Trigger.CATCHUP})
_KEYED = "(" + ", ".join(f"'{t}'" for t in sorted(KEYED_TRIGGERS)) + ")"


# -- schema ------------------------------------------------------------------------------------

# Each migration is the statements that take the schema from version N to N+1. They run inside
# one transaction with the bump of PRAGMA user_version, so a crash mid-migration leaves the old
# version intact. Never edit a released migration; append a new one. (A migration library would
# bring SQLAlchemy or a CLI of its own for what is a 20-line loop over user_version.)
#
# Times are ISO 8601 UTC text of fixed width ("2026-01-02T03:04:05.000006+00:00"): readable
# with the sqlite3 shell, and they sort and compare as text in the same order as in time.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE runs (
            id            TEXT PRIMARY KEY,
            job           TEXT NOT NULL,
            status        TEXT NOT NULL,
            trigger       TEXT NOT NULL,
            fire_time     TEXT,
            queued_at     TEXT NOT NULL,
            started_at    TEXT,
            finished_at   TEXT,
            reason        TEXT,
            params        TEXT NOT NULL DEFAULT '{}',
            version       TEXT,
            document      TEXT,
            parent_run_id TEXT,
            owner         TEXT
        )""",
        # Listing newest first, for one job and for all.
        "CREATE INDEX runs_by_job ON runs (job, queued_at)",
        "CREATE INDEX runs_by_time ON runs (queued_at)",
        # One run per fire: what makes a crash between claiming a fire and moving the
        # watermark harmless.
        "CREATE UNIQUE INDEX runs_by_fire ON runs (job, fire_time) WHERE fire_time IS NOT NULL",
        # The circuit breaker and the last success, without reading a job's whole history.
        # Only finished runs: starting a run does not touch it.
        "CREATE INDEX runs_by_outcome ON runs (job, status, finished_at) "
        "WHERE finished_at IS NOT NULL",
        # Active runs are few however long the history grows.
        f"CREATE INDEX runs_active ON runs (status) WHERE status IN {_ACTIVE}",
        """CREATE TABLE steps (
            seq         INTEGER PRIMARY KEY,
            run_id      TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            step_id     TEXT NOT NULL,
            status      TEXT NOT NULL,
            attempt     INTEGER NOT NULL DEFAULT 0,
            exit_code   INTEGER,
            signal      INTEGER,
            started_at  TEXT,
            finished_at TEXT,
            outputs     TEXT NOT NULL DEFAULT '{}',
            error       TEXT,
            log         TEXT,
            pid         INTEGER,
            pgid        INTEGER,
            UNIQUE (run_id, step_id)
        )""",
        """CREATE TABLE jobs (
            name             TEXT PRIMARY KEY,
            watermark        TEXT,
            circuit_reset_at TEXT
        )""",
    ),
    (
        # A fire's identity is its own column: manual and API runs carry the instant they
        # were asked for as their fire time too, and must never take a scheduled fire's slot.
        "ALTER TABLE runs ADD COLUMN fire_key TEXT",
        f"UPDATE runs SET fire_key = fire_time WHERE trigger IN {_KEYED}",
        "DROP INDEX runs_by_fire",
        "CREATE UNIQUE INDEX runs_by_fire ON runs (job, fire_key) WHERE fire_key IS NOT NULL",
        # The last good version of every job file, and so which file holds which job name:
        # what keeps a job firing across a restart while its file is broken, and keeps a
        # newcomer from taking over a name.
        """CREATE TABLE definitions (
            file   TEXT PRIMARY KEY,
            name   TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            source BLOB NOT NULL,
            since  TEXT NOT NULL
        )""",
    ),
    (
        # The job's own `outputs:` (CONTRACT §2), set when the run finishes.
        "ALTER TABLE runs ADD COLUMN outputs TEXT NOT NULL DEFAULT '{}'",
        # A for_each instance's item, as JSON, for the heading of its log.
        "ALTER TABLE steps ADD COLUMN item TEXT",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, path: Path,
            migrations: Sequence[Sequence[str]] = MIGRATIONS) -> int:
    """Bring the database to ``len(migrations)`` in one transaction; return the version found.

    Raises ``StateError`` if the database is newer than ``migrations`` knows. ``conn`` must be in
    autocommit mode (``isolation_level=None``).
    """
    conn.execute("BEGIN IMMEDIATE")  # one process migrates; the others wait and then see it
    try:
        found: int = conn.execute("PRAGMA user_version").fetchone()[0]
        if found > len(migrations):
            raise StateError(
                f"{path} was made by a newer pipeline (state schema version {found}; this one "
                f"knows up to {len(migrations)}); upgrade pipeline to use this state directory")
        for statements in migrations[found:]:
            for statement in statements:
                conn.execute(statement)
        if found != len(migrations):
            conn.execute(f"PRAGMA user_version = {len(migrations):d}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return found


# -- conversions -------------------------------------------------------------------------------

def _iso(value: datetime) -> str:
    if value.tzinfo is not UTC:  # most times come in UTC already: skip the conversion
        if value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: the store needs aware times")
        value = value.astimezone(UTC)
    return value.isoformat(timespec="microseconds")


def _iso_or_none(value: datetime | None) -> str | None:
    return None if value is None else _iso(value)


def _time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _plain(value: object) -> object:
    """What JSON cannot take as it is: frozen mappings, and the dates YAML may put in a
    document (kept as their text)."""
    return dict(value) if isinstance(value, Mapping) else str(value)


# One encoder built once: json.dumps with any option builds a new one per call.
_json = json.JSONEncoder(separators=(",", ":"), default=_plain).encode


@functools.lru_cache(maxsize=4096)
def _version_json(version: Version | None) -> str | None:
    return None if version is None else _json(version.as_dict())


# Every run of a job version stores the same document: encode it once. Keyed by identity,
# holding the object so the id cannot be reused while cached.
_documents: dict[int, tuple[object, str]] = {}


def _document_json(document: Mapping[str, Any]) -> str:
    known = _documents.get(id(document))
    if known is None or known[0] is not document:
        if len(_documents) > 4096:
            _documents.clear()
        known = _documents[id(document)] = (document, _json(document))
    return known[1]


_RUN_COLUMNS = ("id, job, status, trigger, fire_time, queued_at, started_at, finished_at, "
                "reason, params, version, parent_run_id, owner, outputs")
_DOCUMENT = 14  # the column after _RUN_COLUMNS, where a query adds it
_STEP_COLUMNS = ("run_id, step_id, status, attempt, exit_code, signal, started_at, finished_at, "
                 "outputs, error, log, pgid, item")


# Every job with runs, in order, one index probe per job (a skip-scan of runs_by_job) instead
# of a read of the whole history as DISTINCT or GROUP BY would do.
_EACH_JOB = """
    WITH RECURSIVE each_job (name) AS (
        SELECT min(job) FROM runs
        UNION ALL
        SELECT (SELECT min(job) FROM runs WHERE job > each_job.name) FROM each_job
        WHERE each_job.name IS NOT NULL)"""


def _run_record(row: Sequence[Any], document: str | None = None,
                steps: tuple[StepRecord, ...] = ()) -> RunRecord:
    version = None if row[10] is None else Version(**json.loads(row[10]))
    return RunRecord(
        id=row[0], job=row[1], status=RunStatus(row[2]), trigger=Trigger(row[3]),
        fire_time=_time(row[4]), queued_at=_time(row[5]), started_at=_time(row[6]),
        finished_at=_time(row[7]), reason=row[8], params=freeze(json.loads(row[9])),
        version=version, parent_run_id=row[11], owner=row[12],
        document=None if document is None else freeze(json.loads(document)),
        steps=steps, outputs=MappingProxyType(json.loads(row[13])))


def _step_record(row: Sequence[Any]) -> StepRecord:
    return StepRecord(
        run_id=row[0], id=row[1], status=StepStatus(row[2]), attempt=row[3], exit_code=row[4],
        signal=row[5], started_at=_time(row[6]), finished_at=_time(row[7]),
        outputs=MappingProxyType(json.loads(row[8])), error=row[9], log=row[10],
        pgid=row[11], item=row[12])


# -- writing events ----------------------------------------------------------------------------

# ON CONFLICT DO NOTHING resolves a taken fire (or run id) inside the one statement: the
# transaction goes on and the rest of the batch commits, without a savepoint per claim.
_INSERT_QUEUED = """
    INSERT INTO runs (id, job, status, trigger, fire_time, queued_at, params, version, document,
                      parent_run_id, owner, fire_key)
    VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"""
_INSERT_SKIPPED = """
    INSERT INTO runs (id, job, status, trigger, fire_time, queued_at, started_at, finished_at,
                      reason, version, fire_key)
    VALUES (?, ?, 'skipped', ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"""
# A run that already ended (interrupted by another process's recovery, say) never goes back.
_RUN_STARTED = ("UPDATE runs SET status = 'running', started_at = ? "
                "WHERE id = ? AND status = 'queued'")
# No guard here: if a recovery took a live owner for dead, the owner's own outcome is the truth.
_RUN_FINISHED = ("UPDATE runs SET status = ?, finished_at = ?, reason = ?, outputs = ? "
                 "WHERE id = ?")
_STEP_STARTED = """
    INSERT INTO steps (run_id, step_id, status, attempt, started_at, log, item)
    SELECT ?1, ?2, 'running', ?3, ?4, ?5, ?6 WHERE EXISTS (SELECT 1 FROM runs WHERE id = ?1)
    ON CONFLICT (run_id, step_id) DO UPDATE SET
        status = 'running', attempt = excluded.attempt, started_at = excluded.started_at,
        log = coalesce(excluded.log, steps.log), item = coalesce(excluded.item, steps.item)"""
_STEP_SPAWNED = "UPDATE steps SET pid = ?, pgid = ? WHERE run_id = ? AND step_id = ?"
_STEP_RETRYING = "UPDATE steps SET attempt = ?, error = ? WHERE run_id = ? AND step_id = ?"
_STEP_FINISHED = """
    INSERT INTO steps (run_id, step_id, status, attempt, started_at, finished_at, exit_code,
                       signal, error, outputs)
    SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10 WHERE EXISTS (SELECT 1 FROM runs WHERE id = ?1)
    ON CONFLICT (run_id, step_id) DO UPDATE SET
        status = excluded.status, finished_at = excluded.finished_at,
        attempt = max(steps.attempt, excluded.attempt),
        started_at = coalesce(steps.started_at, excluded.started_at),
        exit_code = excluded.exit_code, signal = excluded.signal, error = excluded.error,
        outputs = excluded.outputs,
        log = CASE WHEN ?11 THEN NULL ELSE steps.log END"""
_WATERMARK = """
    INSERT INTO jobs (name, watermark) VALUES (?, ?)
    ON CONFLICT (name) DO UPDATE SET watermark = excluded.watermark
    WHERE jobs.watermark IS NULL OR excluded.watermark > jobs.watermark"""


def _fire_key(trigger: Trigger, fire_time: str | None) -> str | None:
    return fire_time if trigger in KEYED_TRIGGERS else None


def _run_queued(conn: sqlite3.Connection, e: RunQueued, refused: set[str]) -> None:
    fire_time = _iso_or_none(e.fire_time)
    cursor = conn.execute(_INSERT_QUEUED, (
        e.run_id, e.job, str(e.trigger), fire_time, _iso(e.queued_at),
        _json(e.params) if e.params else "{}", _version_json(e.version),
        None if e.document is None else _document_json(e.document), e.parent_run_id,
        e.owner, _fire_key(e.trigger, fire_time)))
    if cursor.rowcount == 0:
        refused.add(e.run_id)


def _run_skipped(conn: sqlite3.Connection, e: RunSkipped, refused: set[str]) -> None:
    at = _iso(e.at)
    fire_time = _iso_or_none(e.fire_time)
    cursor = conn.execute(_INSERT_SKIPPED, (
        e.run_id, e.job, str(e.trigger), fire_time, at, at, at, e.reason,
        _version_json(e.version), _fire_key(e.trigger, fire_time)))
    if cursor.rowcount == 0:
        refused.add(e.run_id)


def _run_started(conn: sqlite3.Connection, e: RunStarted, refused: set[str]) -> None:
    conn.execute(_RUN_STARTED, (_iso(e.started_at), e.run_id))


def _run_finished(conn: sqlite3.Connection, e: RunFinished, refused: set[str]) -> None:
    conn.execute(_RUN_FINISHED, (str(e.status), _iso(e.finished_at), e.reason,
                                 _json(e.outputs) if e.outputs else "{}", e.run_id))


def _step_started(conn: sqlite3.Connection, e: StepStarted, refused: set[str]) -> None:
    conn.execute(_STEP_STARTED, (e.run_id, e.step_id, e.attempt, _iso(e.started_at),
                                 e.log or None, e.item))


def _step_spawned(conn: sqlite3.Connection, e: StepSpawned, refused: set[str]) -> None:
    conn.execute(_STEP_SPAWNED, (e.pid, e.pgid, e.run_id, e.step_id))


def _step_retrying(conn: sqlite3.Connection, e: StepRetrying, refused: set[str]) -> None:
    # The event names the attempt that failed; the record shows the attempt under way (or
    # waiting for its delay), and the failure that caused it until the step finishes.
    conn.execute(_STEP_RETRYING, (e.attempt + 1, e.error, e.run_id, e.step_id))


def _step_finished(conn: sqlite3.Connection, e: StepFinished, refused: set[str]) -> None:
    conn.execute(_STEP_FINISHED, (
        e.run_id, e.step_id, str(e.status), e.attempt, _iso_or_none(e.started_at),
        _iso(e.finished_at), e.exit_code, e.signal, e.error,
        _json(e.outputs) if e.outputs else "{}", e.no_log))


def _watermark_moved(conn: sqlite3.Connection, e: WatermarkMoved, refused: set[str]) -> None:
    conn.execute(_WATERMARK, (e.job, _iso(e.until)))


_APPLY: dict[type, Callable[[sqlite3.Connection, Any, set[str]], None]] = {
    RunQueued: _run_queued, RunSkipped: _run_skipped, RunStarted: _run_started,
    RunFinished: _run_finished, StepStarted: _step_started, StepSpawned: _step_spawned,
    StepRetrying: _step_retrying, StepFinished: _step_finished,
    WatermarkMoved: _watermark_moved,
}


# -- the SQLite store --------------------------------------------------------------------------

class SqliteStore(Store):
    """``Store`` on ``STATE_DIR/state.db``. Build it with ``SqliteStore.open``."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._lock = threading.Lock()

    @classmethod
    def open(cls, state_dir: Path) -> SqliteStore:
        """Open (creating it and the directory if needed) and migrate ``state_dir/state.db``.

        Raises ``StateError`` if the directory or database cannot be used, or the database was
        made by a newer pipeline.
        """
        path = state_dir / DB_FILE
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None,
                                   check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"cannot open {path}: {exc}") from exc
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StateError(f"cannot use {path}: SQLite refused WAL mode (got {mode!r}); "
                                 "is the state directory on a network file system?")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            migrate(conn, path)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StateError(f"cannot use {path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return cls(conn, path)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _locked(self, begin: str, doing: str) -> Iterator[sqlite3.Connection]:
        """One transaction under the lock; on any error nothing of it stays."""
        with self._lock:
            conn = self._conn
            try:
                conn.execute(begin)
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                self._rollback()
                if isinstance(exc, sqlite3.Error):
                    raise StateError(f"cannot {doing} {self.path}: {exc}") from exc
                raise

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        # IMMEDIATE takes the write lock now, so a busy database waits here (up to the busy
        # timeout) instead of failing at the first write of a read-then-write.
        return self._locked("BEGIN IMMEDIATE", "write")

    def _reading(self) -> AbstractContextManager[sqlite3.Connection]:
        """A read transaction: its queries see one snapshot of the database."""
        return self._locked("BEGIN", "read")

    def _rollback(self) -> None:
        # SQLite rolls some failures back by itself (a full disk may); then there is nothing
        # left to roll back. A rollback that fails too leaves the connection to SQLite's own
        # recovery on the next statement.
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    # -- events --------------------------------------------------------------------------------

    def record(self, events: Sequence[Event]) -> frozenset[str]:
        if not events:
            return frozenset()
        refused: set[str] = set()
        with self._transaction() as conn:
            for event in events:
                _APPLY[type(event)](conn, event, refused)
        return frozenset(refused)

    # -- runs ----------------------------------------------------------------------------------

    def run(self, run_id: str) -> RunRecord | None:
        with self._reading() as conn:
            row = conn.execute(f"SELECT {_RUN_COLUMNS}, document FROM runs WHERE id = ?",
                               (run_id,)).fetchone()
            if row is None:
                return None
            steps = conn.execute(f"SELECT {_STEP_COLUMNS} FROM steps WHERE run_id = ? "
                                 "ORDER BY seq", (run_id,)).fetchall()
        return _run_record(row, row[_DOCUMENT], tuple(_step_record(s) for s in steps))

    @staticmethod
    def _filters(job: str | None, status: RunStatus | None, trigger: Trigger | None,
                 since: datetime | None) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        for clause, value in (("job = ?", job), ("status = ?", status),
                              ("trigger = ?", trigger)):
            if value is not None:
                clauses.append(clause)
                args.append(str(value))
        if since is not None:
            clauses.append("queued_at >= ?")
            args.append(_iso(since))
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), args

    def runs(self, *, job: str | None = None, status: RunStatus | None = None,
             trigger: Trigger | None = None, since: datetime | None = None,
             limit: int = 50, offset: int = 0) -> list[RunRecord]:
        where, args = self._filters(job, status, trigger, since)
        with self._reading() as conn:
            rows = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs{where} "
                "ORDER BY queued_at DESC, id DESC LIMIT ? OFFSET ?",
                (*args, limit, offset)).fetchall()
        return [_run_record(row) for row in rows]

    def count_runs(self, *, job: str | None = None, status: RunStatus | None = None,
                   trigger: Trigger | None = None, since: datetime | None = None) -> int:
        where, args = self._filters(job, status, trigger, since)
        with self._reading() as conn:
            count: int = conn.execute(f"SELECT count(*) FROM runs{where}", args).fetchone()[0]
        return count

    def last_runs(self) -> dict[str, RunRecord]:
        with self._reading() as conn:
            rows = conn.execute(
                f"{_EACH_JOB} SELECT {_RUN_COLUMNS} FROM each_job JOIN runs ON runs.id = "
                "(SELECT id FROM runs WHERE job = each_job.name "
                " ORDER BY queued_at DESC, id DESC LIMIT 1)").fetchall()
        return {row[1]: _run_record(row) for row in rows}

    def active_runs(self, job: str | None = None) -> list[RunRecord]:
        where = "" if job is None else " AND job = ?"
        with self._reading() as conn:
            rows = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE status IN {_ACTIVE}{where} "
                "ORDER BY queued_at, id", () if job is None else (job,)).fetchall()
        return [_run_record(row) for row in rows]

    def last_success(self, job: str) -> datetime | None:
        with self._reading() as conn:
            row = conn.execute("SELECT max(finished_at) FROM runs WHERE job = ? AND "
                               "status = 'succeeded' AND finished_at IS NOT NULL",
                               (job,)).fetchone()
        return _time(row[0])

    def jobs_with_runs(self) -> list[str]:
        with self._reading() as conn:
            rows = conn.execute(f"{_EACH_JOB} SELECT name FROM each_job "
                                "WHERE name IS NOT NULL").fetchall()
        return [row[0] for row in rows]

    # -- schedule state ------------------------------------------------------------------------

    def watermark(self, job: str) -> datetime | None:
        with self._reading() as conn:
            row = conn.execute("SELECT watermark FROM jobs WHERE name = ?", (job,)).fetchone()
        return None if row is None else _time(row[0])

    def watermarks(self) -> dict[str, datetime]:
        with self._reading() as conn:
            rows = conn.execute("SELECT name, watermark FROM jobs "
                                "WHERE watermark IS NOT NULL").fetchall()
        return {name: datetime.fromisoformat(text) for name, text in rows}

    def fires_after(self, job: str, after: datetime) -> set[datetime]:
        with self._reading() as conn:
            rows = conn.execute("SELECT fire_key FROM runs WHERE job = ? AND fire_key > ?",
                                (job, _iso(after))).fetchall()
        return {datetime.fromisoformat(row[0]) for row in rows}

    # -- circuit breaker -----------------------------------------------------------------------
    #
    # The breaker counts failed runs that a schedule fired (triggers schedule and catchup),
    # ordered by when they finished, since the later of: the last succeeded run of any trigger
    # (a manual run that works shows the job works again) and the last reset. Runs that were
    # skipped, cancelled or interrupted neither count nor reset: they say nothing about the job.

    _FAILURES = f"""
        SELECT count(*), max(finished_at) FROM runs
        WHERE job = ?1 AND status = '{RunStatus.FAILED}'
          AND trigger IN ('{Trigger.SCHEDULE}', '{Trigger.CATCHUP}')
          AND finished_at > coalesce((SELECT max(finished_at) FROM runs
                                      WHERE job = ?1 AND status = '{RunStatus.SUCCEEDED}'
                                        AND finished_at IS NOT NULL), '')
          AND finished_at > coalesce((SELECT circuit_reset_at FROM jobs WHERE name = ?1), '')"""

    def consecutive_failures(self, job: str) -> int:
        with self._reading() as conn:
            count: int = conn.execute(self._FAILURES, (job,)).fetchone()[0]
        return count

    def circuit_opened_at(self, job: str, after: int) -> datetime | None:
        """When the failure that opened (or, after a cooldown's trial run, re-opened) it ended.

        With ``after`` or more consecutive failures the circuit is open since the latest of
        them finished: the run that reached ``after``, or a later trial run that failed again.
        The caller adds the cooldown. None while fewer failures count.
        """
        with self._reading() as conn:
            count, latest = conn.execute(self._FAILURES, (job,)).fetchone()
        if count == 0 or count < after:
            return None
        return _time(latest)

    def reset_circuit(self, job: str, at: datetime) -> None:
        with self._transaction() as conn:
            conn.execute("INSERT INTO jobs (name, circuit_reset_at) VALUES (?1, ?2) "
                         "ON CONFLICT (name) DO UPDATE SET circuit_reset_at = ?2",
                         (job, _iso(at)))

    # -- recovery and retention ----------------------------------------------------------------

    def _with_steps(self, conn: sqlite3.Connection, rows: Sequence[Sequence[Any]],
                    ) -> list[RunRecord]:
        steps: dict[str, list[StepRecord]] = {row[0]: [] for row in rows}
        if steps:
            for step in conn.execute(
                    f"SELECT {_STEP_COLUMNS} FROM steps WHERE run_id IN "
                    "(SELECT value FROM json_each(?)) ORDER BY seq", (json.dumps(list(steps)),)):
                steps[step[0]].append(_step_record(step))
        return [_run_record(row, row[_DOCUMENT], tuple(steps[row[0]])) for row in rows]

    def _runs_by_id(self, conn: sqlite3.Connection, ids: Iterable[str]) -> list[RunRecord]:
        rows = conn.execute(
            f"SELECT {_RUN_COLUMNS}, document FROM runs WHERE id IN "
            "(SELECT value FROM json_each(?)) ORDER BY queued_at, id",
            (json.dumps(list(ids)),)).fetchall()
        return self._with_steps(conn, rows)

    def recover(self, is_alive: Callable[[str], bool], now: datetime) -> list[RunRecord]:
        """Runs queued or running whose owner is dead (or missing) become ``interrupted``.

        A queued run of a dead owner is interrupted too (reason "the daemon stopped before it
        started"): its waiting place lived in that process's memory, and its fire stays claimed
        so it is never run twice. Steps still running (or pending) become ``cancelled`` with
        the same reason as error; they keep their pgid so the caller can end leftover process
        groups. ``is_alive`` is called once per distinct owner, outside any transaction.
        """
        at = _iso(now)
        # Most calls find nothing to do (every CLI command recovers first): decide from a
        # read, and take the write lock only when there is something to write.
        with self._reading() as conn:
            active = conn.execute(f"SELECT id, owner FROM runs WHERE status IN {_ACTIVE}"
                                  ).fetchall()
        verdicts: dict[str | None, bool] = {None: False}
        for _, owner in active:
            if owner not in verdicts:
                verdicts[owner] = is_alive(owner)
        dead = json.dumps([run_id for run_id, owner in active if not verdicts[owner]])
        if dead == "[]":
            return []
        with self._transaction() as conn:
            # Another process may have recovered some of them meanwhile.
            ids = json.dumps([row[0] for row in conn.execute(
                f"SELECT id FROM runs WHERE status IN {_ACTIVE} "
                "AND id IN (SELECT value FROM json_each(?))", (dead,))])
            conn.execute(
                "UPDATE runs SET status = 'interrupted', finished_at = ?, reason = CASE status "
                f"WHEN 'queued' THEN '{INTERRUPTED_QUEUED}' ELSE '{INTERRUPTED_RUNNING}' END "
                "WHERE id IN (SELECT value FROM json_each(?))", (at, ids))
            conn.execute(
                "UPDATE steps SET status = 'cancelled', finished_at = ?, "
                f"error = '{INTERRUPTED_RUNNING}' WHERE status IN ('running', 'pending') "
                "AND run_id IN (SELECT value FROM json_each(?))", (at, ids))
            return self._runs_by_id(conn, json.loads(ids))

    def prune(self, job: str, *, keep_runs: int | None, keep_days: float | None,
              now: datetime) -> list[RunRecord]:
        """Delete finished runs of ``job`` beyond the newest ``keep_runs`` or older than
        ``keep_days`` (by when they finished); return them, with steps, for their logs.

        Active runs are never deleted and do not count against ``keep_runs``. Neither is a run
        whose fire lies after the job's watermark (or any fired run while the job has none):
        its row is what stops that fire from running twice after a crash.
        """
        if keep_runs is None and keep_days is None:
            return []
        finished = f"""job = ?1 AND status NOT IN {_ACTIVE} AND (fire_key IS NULL
            OR fire_key <= (SELECT watermark FROM jobs WHERE name = ?1))"""
        with self._transaction() as conn:
            doomed: set[str] = set()
            if keep_runs is not None:
                doomed.update(row[0] for row in conn.execute(
                    f"SELECT id FROM runs WHERE {finished} "
                    "ORDER BY queued_at DESC, id DESC LIMIT -1 OFFSET ?2",
                    (job, max(keep_runs, 0))))
            if keep_days is not None:
                cutoff = _iso(now - timedelta(days=keep_days))
                doomed.update(row[0] for row in conn.execute(
                    f"SELECT id FROM runs WHERE {finished} "
                    "AND coalesce(finished_at, queued_at) < ?2", (job, cutoff)))
            if not doomed:
                return []
            gone = self._runs_by_id(conn, doomed)
            conn.execute("DELETE FROM runs WHERE id IN (SELECT value FROM json_each(?))",
                         (json.dumps(sorted(doomed)),))
        return gone

    def definitions(self) -> dict[str, Definition]:
        with self._reading() as conn:
            rows = conn.execute("SELECT file, name, sha256, source, since FROM definitions")
            return {file: Definition(file, name, sha256, bytes(source),
                                     datetime.fromisoformat(since))
                    for file, name, sha256, source, since in rows}

    def remember_definitions(self, kept: Sequence[Definition],
                             forgotten: Collection[str]) -> None:
        with self._transaction() as conn:
            conn.executemany("DELETE FROM definitions WHERE file = ?", [(f,) for f in forgotten])
            conn.executemany(
                "INSERT INTO definitions (file, name, sha256, source, since) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (file) DO UPDATE SET name = excluded.name, "
                "sha256 = excluded.sha256, source = excluded.source, since = excluded.since",
                [(d.file, d.name, d.sha256, d.source, _iso(d.since)) for d in kept])

    def delete_run(self, run_id: str) -> RunRecord | None:
        """Delete a finished run and its steps; return it (for its logs), None if unknown.

        Raises ``RunActive`` (a ``StateError``) if the run is queued or running.
        """
        with self._transaction() as conn:
            found = self._runs_by_id(conn, [run_id])
            if not found:
                return None
            if not found[0].status.finished:
                raise RunActive(run_id)
            conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))
        return found[0]
