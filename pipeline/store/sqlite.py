"""The SQLite store: ``STATE_DIR/state.db``, the default backend (one daemon per state directory).

One connection guarded by a lock (any worker thread may call it), WAL so other processes read
while the daemon writes, ``synchronous=FULL`` so a committed batch survives a power cut, and
every verb one transaction, so a kill -9 leaves either all of it or none. Writers are serialised
by SQLite itself (``BEGIN IMMEDIATE``), which is what row locks do in PostgreSQL: the statements
are those of ``sql.SqlStore``, shared with ``postgres``.

A start's decision is committed with ``synchronous=NORMAL``: it is atomic and survives a kill of
the process (WAL pages are in the kernel's cache), and after a power cut its run is recovered
either way; the claims that make a fire's identity wait for the disk.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path

from pipeline.errors import StateError
from pipeline.store import KEYED_TRIGGERS
from pipeline.store.sql import SqlStore, Tx

DB_FILE = "state.db"
BUSY_TIMEOUT = 10.0  # seconds a writer waits for another process's transaction

_ACTIVE = "('queued', 'running')"
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
    (
        # Nodes and leases (docs/architecture.md): who holds a run, for how long, and whether
        # it was started again after its node was lost.
        "ALTER TABLE runs ADD COLUMN node TEXT",
        "ALTER TABLE runs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE runs ADD COLUMN ready_at TEXT",
        "ALTER TABLE runs ADD COLUMN waiting INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE runs ADD COLUMN backlog INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE runs ADD COLUMN stop_reason TEXT",
        "ALTER TABLE runs ADD COLUMN stop_status TEXT",
        "ALTER TABLE runs ADD COLUMN runs_on TEXT",
        f"UPDATE runs SET ready_at = queued_at, attempt = 1 WHERE status NOT IN {_ACTIVE}",
        f"UPDATE runs SET ready_at = queued_at WHERE status IN {_ACTIVE}",
        # A job's active runs, counted under its lock at every start; runs nobody holds.
        f"CREATE INDEX runs_active_by_job ON runs (job, status) WHERE status IN {_ACTIVE}",
        f"CREATE INDEX runs_by_node ON runs (node) WHERE status IN {_ACTIVE}",
        "CREATE INDEX runs_unclaimed ON runs (ready_at) "
        "WHERE status = 'queued' AND node IS NULL",
        "ALTER TABLE jobs ADD COLUMN settings TEXT",
        "ALTER TABLE jobs ADD COLUMN failures INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN circuit_opened_at TEXT",
        "ALTER TABLE jobs ADD COLUMN paused_at TEXT",
        "ALTER TABLE jobs ADD COLUMN paused_by TEXT",
        "ALTER TABLE jobs ADD COLUMN paused_reason TEXT",
        # The circuit breaker's count moves to the job's row: carry today's over.
        """UPDATE jobs SET failures = (
            SELECT count(*) FROM runs
            WHERE runs.job = jobs.name AND status = 'failed'
              AND trigger IN ('schedule', 'catchup')
              AND finished_at > coalesce((SELECT max(finished_at) FROM runs AS ok
                                          WHERE ok.job = jobs.name AND ok.status = 'succeeded'
                                            AND ok.finished_at IS NOT NULL), '')
              AND finished_at > coalesce(jobs.circuit_reset_at, ''))""",
        """UPDATE jobs SET circuit_opened_at = (
            SELECT max(finished_at) FROM runs WHERE runs.job = jobs.name
              AND status = 'failed' AND trigger IN ('schedule', 'catchup'))
           WHERE failures > 0""",
        """CREATE TABLE nodes (
            id           TEXT PRIMARY KEY,
            name         TEXT NOT NULL,
            roles        TEXT NOT NULL,
            labels       TEXT NOT NULL DEFAULT '{}',
            version      TEXT,
            identity     TEXT,
            listen       TEXT,
            digest       TEXT,
            max_runs     INTEGER,
            started_at   TEXT NOT NULL,
            heartbeat_at TEXT NOT NULL,
            expires_at   TEXT NOT NULL,
            state        TEXT NOT NULL
        )""",
        "CREATE INDEX nodes_alive ON nodes (expires_at) WHERE state = 'alive'",
        # Runs an older pipeline left active are held by a node standing for their owner
        # process, whose lease has already run out: the next reap takes them back.
        f"""INSERT INTO nodes (id, name, roles, identity, started_at, heartbeat_at,
                               expires_at, state)
            SELECT DISTINCT 'legacy-' || owner, 'legacy', 'runner', owner, queued_at,
                   queued_at, queued_at, 'alive'
            FROM runs WHERE status IN {_ACTIVE} AND owner IS NOT NULL GROUP BY owner""",
        f"UPDATE runs SET node = 'legacy-' || owner WHERE status IN {_ACTIVE} "
        "AND owner IS NOT NULL",
        """CREATE TABLE decisions (
            seq        INTEGER PRIMARY KEY,
            job        TEXT NOT NULL,
            outcome    TEXT NOT NULL,
            decided_at TEXT NOT NULL,
            fire_time  TEXT,
            node       TEXT,
            reason     TEXT,
            detail     TEXT,
            run_id     TEXT
        )""",
        "CREATE INDEX decisions_by_job ON decisions (job, fire_time)",
        "CREATE INDEX decisions_by_time ON decisions (job, decided_at)",
    ),
    (
        # Backfills and reruns: how many of a backlog may run at once, and what a rerun takes
        # over from the run it runs again.
        "ALTER TABLE runs ADD COLUMN parallel INTEGER NOT NULL DEFAULT 1",
        "ALTER TABLE runs ADD COLUMN rerun_of TEXT",
        "ALTER TABLE runs ADD COLUMN reuse TEXT",
    ),
    (
        # Step logs shipped to a shared store in chunks, so any node shows any run's log; a
        # step's shipped log is complete once its size is known.
        """CREATE TABLE log_chunks (
            run_id  TEXT NOT NULL,
            step_id TEXT NOT NULL,
            start   INTEGER NOT NULL,
            data    BLOB NOT NULL,
            PRIMARY KEY (run_id, step_id, start)
        )""",
        "ALTER TABLE steps ADD COLUMN log_size INTEGER",
    ),
    (
        # Event fires (file arrival, job after job, @reboot): each identity once, kept apart
        # from the runs so that retention of runs never brings a fire back.
        """CREATE TABLE fired_keys (
            job    TEXT NOT NULL,
            key    TEXT NOT NULL,
            at     TEXT NOT NULL,
            run_id TEXT,
            PRIMARY KEY (job, key)
        )""",
        "ALTER TABLE runs ADD COLUMN event TEXT",
        "ALTER TABLE jobs ADD COLUMN event_cursor TEXT",
        # Pools (settings `pools:`; `*` is the cap on all active runs): who holds or waits for
        # slots. A holding of a run that is no longer active counts for nothing, so a crash
        # never keeps a slot.
        """CREATE TABLE pools (
            name  TEXT PRIMARY KEY,
            slots INTEGER NOT NULL
        )""",
        """CREATE TABLE pool_slots (
            seq     INTEGER PRIMARY KEY,
            pool    TEXT NOT NULL,
            run_id  TEXT NOT NULL,
            step_id TEXT NOT NULL DEFAULT '',
            slots   INTEGER NOT NULL,
            granted INTEGER NOT NULL DEFAULT 0,
            since   TEXT NOT NULL
        )""",
        "CREATE UNIQUE INDEX pool_slots_by_holder ON pool_slots (run_id, step_id, pool)",
        "CREATE INDEX pool_slots_by_pool ON pool_slots (pool, seq)",
    ),
    (
        # Notifications: each outcome with its run; what is still to be delivered, per node
        # name (a restarted node sends what it had not); and deadlines missed, once per fire.
        "ALTER TABLE runs ADD COLUMN notifications TEXT",
        "ALTER TABLE runs ADD COLUMN late INTEGER NOT NULL DEFAULT 0",
        """CREATE TABLE outbox (
            node    TEXT PRIMARY KEY,
            pending TEXT NOT NULL
        )""",
        """CREATE TABLE deadlines (
            job       TEXT NOT NULL,
            fire_time TEXT NOT NULL,
            missed_at TEXT NOT NULL,
            run_id    TEXT,
            PRIMARY KEY (job, fire_time)
        )""",
    ),
    (
        # When a step began to wait for its pool's slots: the run page draws the wait.
        "ALTER TABLE steps ADD COLUMN waited_from TEXT",
    ),
    (
        # The last notice each job's target was sent, per event kind, so that a target's
        # ``cooldown`` holds across restarts and across a cluster's nodes.
        """CREATE TABLE notices_sent (
            job      TEXT NOT NULL,
            target   TEXT NOT NULL,
            kind     TEXT NOT NULL,
            at       TEXT NOT NULL,
            delivery TEXT NOT NULL,
            PRIMARY KEY (job, target, kind)
        )""",
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


class SqliteStore(SqlStore):
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
    def _locked(self, begin: str, doing: str, durable: bool = True) -> Iterator[Tx]:
        """One transaction under the lock; on any error nothing of it stays."""
        with self._lock:
            conn = self._conn
            try:
                if not durable:
                    conn.execute("PRAGMA synchronous = NORMAL")
                try:
                    conn.execute(begin)
                    yield conn
                    conn.execute("COMMIT")
                finally:
                    if not durable:
                        conn.execute("PRAGMA synchronous = FULL")
            except BaseException as exc:
                self._rollback()
                if isinstance(exc, sqlite3.Error):
                    raise StateError(f"cannot {doing} {self.path}: {exc}") from exc
                raise

    def _write(self, *, durable: bool = True) -> AbstractContextManager[Tx]:
        # IMMEDIATE takes the write lock now, so a busy database waits here (up to the busy
        # timeout) instead of failing at the first write of a read-then-write.
        return self._locked("BEGIN IMMEDIATE", "write", durable)

    def _read(self) -> AbstractContextManager[Tx]:
        """A read transaction: its queries see one snapshot of the database."""
        return self._locked("BEGIN", "read")

    def _transaction(self) -> AbstractContextManager[Tx]:
        """For tests that write rows by hand."""
        return self._write()

    def _rollback(self) -> None:
        # SQLite rolls some failures back by itself (a full disk may); then there is nothing
        # left to roll back. A rollback that fails too leaves the connection to SQLite's own
        # recovery on the next statement.
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def _store_now(self, tx: Tx) -> datetime:
        return datetime.now(UTC)

    def schema_version(self) -> int:
        with self._read() as tx:
            version: int = tx.execute("PRAGMA user_version").fetchone()[0]
        return version
