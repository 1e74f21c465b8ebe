"""The PostgreSQL store: one database that several daemons share (cluster mode, CONTRACT §9).

The verbs and their statements are ``sql.SqlStore``'s, the same ones SQLite runs: ``:name``
parameters are rewritten once per statement to psycopg's ``%(name)s``, times and JSON stay text
(fixed-width ISO 8601 UTC, so they compare as text here too) and booleans integers, so the
schema has the same shape as SQLite's. What differs is how a transaction is had, and what
happens when the database goes away:

- **Connections** come from a ``psycopg_pool`` pool, with libpq's dead-peer settings
  (``connect_timeout``, TCP keepalives, ``tcp_user_timeout``) and per-session
  ``statement_timeout``, ``idle_in_transaction_session_timeout`` and ``lock_timeout``, all
  derived from the node lease (``Timeouts``), so that a partitioned or frozen node's
  transaction is rolled back and its row locks freed before anyone may take its runs over
  (shared/CLUSTER.md rule 11; tests/faults/CLUSTER-HARNESS.md has the measurements).
- **Each verb is one unit of work, retried where that is safe.** A unit that fails because its
  connection broke (a restart, a cut link, a killed session) or because PostgreSQL chose it as
  a deadlock or serialisation victim is run again, with backoff, for up to
  ``Timeouts.retry_for`` seconds, but only when nothing of it can have been committed: a read,
  or a write that failed before its COMMIT was sent. A write whose COMMIT was sent and not
  answered may or may not have landed: that raises ``StateError``, and the caller's retry is
  made safe by fire keys and compare-and-set, not by guessing here. A verb is at most one write
  transaction, and it comes last (``reap`` reads, then writes), so running a verb again never
  repeats a write that committed.
- **Errors** are ``StateError`` with a one-line message that names the database by its masked
  URL: the password is masked before anything parses the URL (libpq quotes a URL it cannot parse
  whole, password included) and removed from every driver message (``pgurl``). An outage is
  logged once when it starts and once when the store answers again.
- **Migrations** (``migrations.POSTGRES_MIGRATIONS``, beside SQLite's) are versioned
  (``schema_version``) and run in one transaction under ``pg_advisory_xact_lock``, so nodes
  starting at once migrate once and the others wait and find the work done; a node killed
  mid-migration leaves nothing half-applied.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Self, TypeVar

import psycopg
from loguru import logger
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from pipeline.errors import StateError
from pipeline.store import Store
from pipeline.store.migrations import POSTGRES_MIGRATIONS
from pipeline.store.pgurl import USERINFO, mask_url, password_span, passwords_in, scrub
from pipeline.store.sql import SqlStore

Connection = psycopg.Connection[TupleRow]

# "pipeline" in ASCII: the advisory lock migrations take. Advisory keys are per database.
MIGRATION_LOCK = 0x706970656C696E65
SCHEMES = ("postgresql", "postgres")

# -- migrations --------------------------------------------------------------------------------

def migrate(conn: Connection, where: str,
            migrations: Sequence[Sequence[str]] = POSTGRES_MIGRATIONS) -> int:
    """Bring the database to ``len(migrations)`` in one transaction; return the version found.

    ``conn`` must be in autocommit mode. Nodes migrating at once queue on the advisory lock;
    the first does the work and the others find it done. Raises ``StateError`` if the database
    is newer than ``migrations`` knows (``where`` names it in the message), and lets a failing
    statement's ``psycopg.Error`` through after rolling everything back.
    """
    conn.execute("BEGIN")
    try:
        # A migration may take long on a big database: the session's limits are for verbs.
        conn.execute("SET LOCAL statement_timeout = 0")
        conn.execute("SET LOCAL lock_timeout = 0")
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute("""CREATE TABLE IF NOT EXISTS schema_version (
                            version    INTEGER PRIMARY KEY,
                            applied_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())""")
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        found: int = (row[0] if row else None) or 0
        if found > len(migrations):
            raise StateError(
                f"{where} was made by a newer pipeline (state schema version {found}; this one "
                f"knows up to {len(migrations)}); upgrade pipeline to use this database")
        for version, statements in enumerate(migrations[found:], start=found + 1):
            for statement in statements:
                conn.execute(statement, prepare=False)  # no parameters: sent as written
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
        conn.execute("COMMIT")
    except BaseException:
        PostgresStore._rollback(conn)
        raise
    return found


_migrate = migrate  # PostgresStore.open's `migrate` flag hides the function's name there


# -- statements --------------------------------------------------------------------------------

# String literals and quoted names are copied (with % doubled: psycopg reads % everywhere),
# `::` casts are kept, `:name` becomes `%(name)s` and a lone `%` becomes `%%`.
_TOKENS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|::|:([A-Za-z_]\w*)|%")


def _token(match: re.Match[str]) -> str:
    text = match.group(0)
    if match.group(1) is not None:
        return f"%({match.group(1)})s"
    if text == "%":
        return "%%"
    return text.replace("%", "%%")


@functools.lru_cache(maxsize=1024)
def to_psycopg(statement: str) -> str:
    """``statement`` with SQLite's ``:name`` parameters written as psycopg's ``%(name)s``."""
    return _TOKENS.sub(_token, statement)


class _Tx:
    """A connection inside a transaction, speaking the shared statements' dialect."""

    __slots__ = ("conn", "now")

    def __init__(self, conn: Connection, now: datetime) -> None:
        self.conn = conn
        self.now = now  # clock_timestamp() when the transaction began, read with its BEGIN

    def execute(self, statement: str, params: Mapping[str, Any] | None = None,
                ) -> psycopg.Cursor[TupleRow]:
        return self.conn.execute(to_psycopg(statement), params if params is not None else {})



# -- timeouts ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Timeouts:
    """How long the store waits for PostgreSQL, in seconds. ``for_lease`` derives them from the
    node lease so that a cut-off node's session is gone before its lease may expire elsewhere
    (lease × 2/3, when it fences itself)."""

    connect: float  # libpq connect_timeout (libpq treats less than 2 as 2)
    dead_peer: float  # tcp_user_timeout: sent data unacknowledged this long ends the connection
    keepalive_idle: float  # silence before the first TCP keepalive probe, while waiting to read
    keepalive_interval: float
    keepalive_count: int
    statement: float  # statement_timeout
    idle_in_transaction: float  # idle_in_transaction_session_timeout
    lock: float  # lock_timeout: never queue behind a frozen holder for long
    # How long a verb retries (and waits for a pooled connection) before StateError. With
    # a dead peer found within `dead_peer`, a verb blocks for about lease / 2 at most, less
    # than the lease × 2/3 after which a node fences itself.
    retry_for: float

    @classmethod
    def for_lease(cls, lease: float) -> Timeouts:
        third = max(1.0, lease / 3)
        return cls(connect=min(10.0, max(2.0, lease / 6)), dead_peer=third,
                   keepalive_idle=max(1.0, lease / 6), keepalive_interval=max(1.0, lease / 15),
                   keepalive_count=3, statement=third, idle_in_transaction=third, lock=third,
                   retry_for=min(10.0, max(0.5, lease / 6)))


DEFAULT_TIMEOUTS = Timeouts.for_lease(30.0)  # nodes.DEFAULT_LEASE

# The pool logs every failed connection attempt at WARNING through the standard library; the
# store says it once per outage instead (and stderr is the daemon's, not the pool's).
_pool_logger = logging.getLogger("psycopg.pool")
_pool_logger.addHandler(logging.NullHandler())
_pool_logger.propagate = False

# SQLSTATEs after which the whole transaction was rolled back and may simply run again.
_RETRYABLE = frozenset({"40001", "40P01", "55P03"})  # serialisation, deadlock, lock timeout
# The pool pings a connection before handing it out only when it has been idle this long
# (a firewall or the server may have dropped it meanwhile). A recently used one is checked by
# its unit's own BEGIN, which is retried at once on another connection if it fails: a ping
# per checkout costs a round trip per verb, and after a failed ping the pool sleeps about a
# second before trying the next connection (psycopg_pool's backoff).
CHECK_IDLE = 60.0


class _Retry(StateError):
    """A unit of work failed before anything of it could have been committed. ``lost``: its
    connection is gone (an outage, or the end of one); otherwise PostgreSQL rolled it back
    (a deadlock victim, a serialisation failure, a lock wait that timed out)."""

    def __init__(self, message: str, *, lost: bool = True) -> None:
        super().__init__(message)
        self.lost = lost


R = TypeVar("R")


class PostgresStore(SqlStore):
    """``Store`` on a PostgreSQL database. Build it with ``PostgresStore.open``."""

    shared = True
    for_update = " FOR UPDATE"
    skip_locked = " FOR UPDATE SKIP LOCKED"
    in_ids = "= ANY(:ids)"
    greatest = "greatest"
    by_name = 'name COLLATE "C"'  # code point order, as Python sorts, whatever the database's

    def __init__(self, conninfo: str, *, where: str, passwords: Sequence[str] = (),
                 timeouts: Timeouts = DEFAULT_TIMEOUTS, max_size: int = 10) -> None:
        """A store on ``conninfo`` (libpq's ``key=value`` form, settings included), its pool
        not yet open: use ``open``."""
        self.where = where  # the masked URL, for messages
        self._passwords = tuple(passwords)
        self.timeouts = timeouts
        self._conninfo = conninfo
        self._last_used: weakref.WeakKeyDictionary[Connection, float] = (
            weakref.WeakKeyDictionary())
        self._outage_lock = threading.Lock()
        self._outage: tuple[float, str] | None = None  # since (monotonic), why
        self._refused: str | None = None  # why the pool's last attempt to connect failed
        self._pool: ConnectionPool[Connection] = ConnectionPool(
            conninfo, connection_class=_recording(self), kwargs={"autocommit": True},
            min_size=1, max_size=max_size, open=False, name="pipeline-store",
            timeout=timeouts.retry_for, check=self._check, configure=self._made,
            # Give up a background reconnection soon: the next request starts a fresh one at
            # once, where the pool's own backoff (1, 2, 4, ... seconds, for up to 5 minutes)
            # would leave a long outage's end unnoticed for as long as it lasted.
            reconnect_timeout=timeouts.retry_for)

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def open(cls, url: str, *, timeouts: Timeouts = DEFAULT_TIMEOUTS, max_size: int = 10,
             migrate: bool = True) -> PostgresStore:
        """Connect to the database at ``url`` (``postgresql://...``), migrate it (unless
        ``migrate`` is false) and return the store.

        Raises ``StateError`` (its message never holds the password) if the URL is not a
        PostgreSQL URL, the database cannot be reached or was made by a newer pipeline.
        """
        where = mask_url(url)
        passwords = passwords_in(url)
        scheme = url.partition("://")[0].lower() if "://" in url else ""
        if scheme not in SCHEMES:
            raise StateError(f"not a PostgreSQL URL: {where} (want postgresql://...)")
        span = password_span(url)
        if span is not None and not USERINFO.fullmatch(url[span[0]:span[1]]):
            # libpq would cut such a password at its `/` or `@` and quote the pieces as a
            # host name in its error: refuse it before it gets that far.
            raise StateError(f"invalid PostgreSQL URL: {where} (characters such as / @ # ? "
                             "in the password must be percent-encoded)")
        try:
            given = conninfo_to_dict(url)
        except psycopg.Error:
            # libpq's message quotes the URL whole, password and all: say it ourselves.
            raise StateError(f"invalid PostgreSQL URL: {where}") from None
        settings: dict[str, Any] = {
            "connect_timeout": max(2, round(timeouts.connect)),
            "keepalives": 1,
            "keepalives_idle": max(1, round(timeouts.keepalive_idle)),
            "keepalives_interval": max(1, round(timeouts.keepalive_interval)),
            "keepalives_count": timeouts.keepalive_count,
            "tcp_user_timeout": max(1, round(timeouts.dead_peer * 1000)),
            "application_name": "pipeline",
        }
        options = (f"-c statement_timeout={round(timeouts.statement * 1000)} "
                   "-c idle_in_transaction_session_timeout="
                   f"{round(timeouts.idle_in_transaction * 1000)} "
                   f"-c lock_timeout={round(timeouts.lock * 1000)} -c TimeZone=UTC")
        if given.get("options"):  # the URL's own options come last: they win
            options = f"{options} {given['options']}"
        conninfo = make_conninfo(**{**settings, **given, "options": options})
        # The first connection migrates, outside the pool: its failure says why (the pool
        # would only time out), and the pool starts on a database that is ready.
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                if migrate:
                    _migrate(conn, where)
        except psycopg.Error as exc:
            raise StateError(f"cannot use {where}: {scrub(exc, passwords)}") from None
        store = cls(conninfo, where=where, passwords=passwords, timeouts=timeouts,
                    max_size=max_size)
        store._pool.open(wait=False)
        return store

    def migrate(self) -> int:
        """Bring the database to this pipeline's schema; return the version it had."""
        try:
            with self._pool.connection(timeout=self.timeouts.retry_for) as conn:
                return _migrate(conn, self.where)
        except PoolClosed:
            raise StateError(f"the store {self.where} is closed") from None
        except psycopg.Error as exc:
            raise StateError(f"cannot migrate {self.where}: {self._scrub(exc)}") from None

    def schema_version(self) -> int:
        with self._read() as tx:
            row = tx.execute("SELECT max(version) FROM schema_version").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def close(self) -> None:
        self._pool.close()

    # -- transactions --------------------------------------------------------------------------

    def _made(self, conn: Connection) -> None:
        self._last_used[conn] = time.monotonic()  # new: as good as just used

    def _check(self, conn: Connection) -> None:
        if time.monotonic() - self._last_used.get(conn, 0.0) > CHECK_IDLE:
            ConnectionPool.check_connection(conn)

    def _write(self, *, durable: bool = True) -> AbstractContextManager[_Tx]:
        # Always durable, whatever the caller may skip with SQLite: there a crash that loses
        # a start is the daemon's own, and every run it held is recovered. PostgreSQL crashes
        # (or fails over) on its own, while the nodes run on: a start it forgot would be made
        # again elsewhere, beside the attempt still running, and a renewal it forgot would
        # have the node's lease run out before the node fences itself.
        return self._unit("BEGIN; SELECT clock_timestamp()", writes=True)

    def _read(self) -> AbstractContextManager[_Tx]:
        # One snapshot for the whole read, as SQLite gives; read-only ones never conflict.
        return self._unit("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; "
                          "SELECT clock_timestamp()", writes=False)

    def _store_now(self, tx: _Tx) -> datetime:
        now: datetime = tx.now
        return now

    def _pipelined(self, tx: _Tx) -> AbstractContextManager[object]:
        # libpq's pipeline mode; an error in it is raised by the next read or at the block's
        # end, and rolls the whole unit back as any other would.
        return tx.conn.pipeline()

    def _ids(self, ids: Collection[str]) -> Any:
        return list(ids)

    @contextmanager
    def _unit(self, begin: str, *, writes: bool) -> Iterator[_Tx]:
        """One transaction on a pooled connection. Raises ``_Retry`` when it failed and
        nothing of it can have been committed, ``StateError`` otherwise."""
        try:
            conn = self._pool.getconn(timeout=self.timeouts.retry_for)
        except PoolClosed:
            raise StateError(f"the store {self.where} is closed") from None
        except PoolTimeout:
            why, lost = self._why_no_connection()
            raise _Retry(why, lost=lost) from None
        committing = False
        try:
            cursor = conn.execute(begin, prepare=False)
            while cursor.nextset():  # to the clock, the last statement's result
                pass
            row = cursor.fetchone()
            assert row is not None
            yield _Tx(conn, row[0].astimezone(UTC))
            if conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
                # A failed statement whose error went unseen: COMMIT would answer ROLLBACK
                # without a word (CLUSTER-HARNESS.md), and the caller would think it landed.
                raise StateError(f"a statement failed in {self.where}: nothing was written")
            committing = True
            conn.execute("COMMIT")
        except psycopg.Error as exc:
            self._rollback(conn)
            message = self._scrub(exc)
            if committing and writes and (conn.broken or conn.closed):
                raise StateError(f"lost {self.where} while committing (the write may or may "
                                 f"not have landed): {message}") from None
            if conn.broken or conn.closed:
                raise _Retry(f"{self.where}: {message}") from None
            if exc.sqlstate in _RETRYABLE:
                raise _Retry(f"{self.where}: {message}", lost=False) from None
            raise StateError(f"cannot {'write' if writes else 'read'} {self.where}: "
                             f"{message}") from None
        except BaseException:
            self._rollback(conn)
            raise
        finally:
            if not conn.closed:
                self._last_used[conn] = time.monotonic()
            self._pool.putconn(conn)

    @staticmethod
    def _rollback(conn: Connection) -> None:
        if conn.closed or conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            return
        try:
            conn.execute("ROLLBACK")
        except psycopg.Error:
            pass  # a broken connection: the pool discards it, the server rolls back

    def _scrub(self, exc: BaseException) -> str:
        return scrub(exc, self._passwords)

    def _why_no_connection(self) -> tuple[str, bool]:
        """Why the pool had no connection to give (it only times out), and whether the
        database is out of reach rather than every connection busy."""
        stats = self._pool.get_stats()
        if stats.get("pool_size", 0) >= self._pool.max_size and self._refused is None:
            return (f"{self.where}: no free connection within {self.timeouts.retry_for:g}s "
                    f"(all {self._pool.max_size} in use)"), False
        return f"{self.where}: {self._refused or 'no connection could be made'}", True

    # -- outages -------------------------------------------------------------------------------

    def _retrying(self, verb: Callable[[], R]) -> R:
        """Run ``verb`` (one unit of work), and again, with backoff, while it fails with
        ``_Retry`` within ``timeouts.retry_for`` of the first try."""
        deadline = time.monotonic() + self.timeouts.retry_for
        delay = 0.0  # at once: a broken connection is often one of several the pool holds
        while True:
            try:
                result = verb()
            except _Retry as exc:
                if exc.lost:
                    self._unreachable(str(exc))
                if time.monotonic() + delay >= deadline:
                    raise StateError(f"cannot reach {exc}" if exc.lost else str(exc)) from None
                time.sleep(delay)
                delay = min(max(delay * 2, 0.05), 1.0)
                continue
            if self._outage is not None:
                self._reachable()
            return result

    def _unreachable(self, why: str) -> None:
        with self._outage_lock:
            if self._outage is not None:
                return
            self._outage = (time.monotonic(), why)
        logger.warning("store unreachable: {}; retrying", why)

    def _reachable(self) -> None:
        with self._outage_lock:
            if self._outage is None:
                return
            since, _ = self._outage
            self._outage = None
        logger.warning("store {} answers again after {:.1f}s", self.where,
                       time.monotonic() - since)


def _recording(store: PostgresStore) -> type[Connection]:
    """The pool's connection class: it keeps why the last attempt to connect failed, which
    the pool itself only logs."""

    class Recording(psycopg.Connection[TupleRow]):
        @classmethod
        def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
            try:
                conn = super().connect(conninfo, **kwargs)
            except psycopg.Error as exc:
                store._refused = store._scrub(exc)
                raise
            store._refused = None
            return conn

    return Recording


def _retried(verb: Callable[..., R]) -> Callable[..., R]:
    @functools.wraps(verb)
    def retried(self: PostgresStore, *args: Any, **kwargs: Any) -> R:
        return self._retrying(functools.partial(verb, self, *args, **kwargs))

    return retried


# Every verb of the protocol is one unit of work that may run again (see the module docstring):
# ``dir``, not ``vars``, for ``Store`` is made of one protocol per family of verbs.
VERBS = tuple(name for name in dir(Store)
              if not name.startswith("_") and callable(getattr(Store, name)) and name != "close")
for _name in VERBS:
    setattr(PostgresStore, _name, _retried(getattr(PostgresStore, _name)))
