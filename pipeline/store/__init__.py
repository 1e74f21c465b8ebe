"""The state of jobs, runs and nodes: one protocol, one module per backend.

``Store`` is what the scheduler, the runner, the CLI and the HTTP app speak to: domain verbs,
synchronous (async code calls them through ``trio.to_thread``), each one transaction. Two
backends implement it and pass one conformance suite (``tests/test_store.py``):

- ``sqlite.SqliteStore``: ``STATE_DIR/state.db``, the default, one daemon per state directory;
- ``postgres.PostgresStore``: a database several daemons share (cluster mode, CONTRACT §9).

``Store`` is made of one protocol per family of verbs, each in its family's module beside the
SQL that implements it: ``recording`` (``RecordVerbs``: the journal's events), ``history``
(runs read back, decisions, retention), ``jobs`` (settings, watermarks, pauses, job files),
``fires`` (fires made into runs), ``starts`` and ``pools`` (runs started under their job's
lock; pool slots), ``leases`` (nodes, reaping, stop requests), ``logs`` (shipped step logs),
``notices`` (notifications, outboxes, cooldowns, deadlines).

The rest of the package, by concept: ``records`` (what the verbs take and give back), ``rows``
(those values as the tables hold them), ``migrations`` (both backends' tables, version for
version), ``base`` and ``sql`` (``SqlStore``: the families' SQL, which both backends run, on
``base``'s transactions), ``sqlite``, ``postgres`` (and ``pgurl``: a PostgreSQL URL's
password, masked).

What both must hold (docs/architecture.md has the whole picture):

- **A fire runs at most once.** A scheduled fire is keyed ``(job, fire_key)`` by a unique index;
  ``claim_fires`` reads the job's watermark under the job's lock, so every fire at or before it
  has already been dealt with by whoever moved it, and moves it in the same transaction.
- **A run is held by one node.** ``runs.node`` names it; every write of a held run is a
  compare-and-set on the node (and, for its end, the attempt), so a node that lost a run has its
  writes refused.
- **Policies are decided under lock.** ``start_runs`` and ``claim_runs`` lock the job's row,
  count its active and waiting runs on every node and ask ``policy.decide``.
- **Time is the store's.** ``now()`` is the database's clock (SQLite: this machine's).

Every method may raise ``StateError`` when the state cannot be read or written (a full disk, a
database that is down); a failed write applies nothing and may be retried.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Protocol

from pipeline.store.fires import FireVerbs
from pipeline.store.history import HistoryVerbs
from pipeline.store.jobs import JobVerbs
from pipeline.store.leases import LeaseVerbs
from pipeline.store.logs import LogVerbs
from pipeline.store.notices import NoticeVerbs
from pipeline.store.pools import PoolVerbs
from pipeline.store.recording import RecordVerbs
from pipeline.store.starts import StartVerbs

__all__ = ["Store", "open_store"]


class Store(RecordVerbs, HistoryVerbs, JobVerbs, FireVerbs, StartVerbs, PoolVerbs, LeaseVerbs,
            LogVerbs, NoticeVerbs, Protocol):
    """The state of every job, run and node. See the module's docstring for the guarantees;
    each family of verbs is a protocol of its own, beside its SQL (the module says where)."""

    shared: bool  # other daemons may use it too: a node must fence itself when cut off

    def now(self) -> datetime:
        """The store's clock (aware, UTC)."""
        ...

    def schema_version(self) -> int:
        """The version of the store's tables (after the migrations ``open`` ran)."""
        ...

    def close(self) -> None:
        ...


def open_store(state_dir: Path, url: str | None = None, *,
               lease: float | None = None) -> Store:
    """The store at ``url`` (``postgresql://...``), or SQLite in ``state_dir``.

    ``lease``: the node lease of a daemon in a shared store; its connection and session
    timeouts are derived from it (``postgres.Timeouts.for_lease``), 30 s when not given.
    """
    if url:
        from pipeline.store.postgres import DEFAULT_TIMEOUTS, PostgresStore, Timeouts

        return PostgresStore.open(url, timeouts=DEFAULT_TIMEOUTS if lease is None
                                  else Timeouts.for_lease(lease))
    from pipeline.store.sqlite import SqliteStore

    return SqliteStore.open(state_dir)
