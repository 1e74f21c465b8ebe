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
from pipeline.store.base import Tx
from pipeline.store.migrations import SQLITE_MIGRATIONS
from pipeline.store.sql import SqlStore

DB_FILE = "state.db"
BUSY_TIMEOUT = 10.0  # seconds a writer waits for another process's transaction


def migrate(conn: sqlite3.Connection, path: Path,
            migrations: Sequence[Sequence[str]] = SQLITE_MIGRATIONS) -> int:
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
