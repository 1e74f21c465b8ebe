"""The ``Store`` verbs in SQL both backends run: one implementation, two dialects.

Statements use ``:name`` parameters (SQLite's style; the PostgreSQL backend rewrites them to
psycopg's ``%(name)s``), keep times as fixed-width ISO 8601 UTC text and JSON as text, so the
same statements work on both. What differs is small and named in ``base.SqlBase``: row locks
(``FOR UPDATE``, absent on SQLite, whose writers are serialised anyway), a list parameter,
``greatest``, and how a transaction is opened (``SqliteStore``, ``PostgresStore``).

``SqlStore`` is made of one plain class per family of verbs, each in its family's module beside
the family's part of the ``Store`` protocol, and each on ``SqlBase``'s transactions (``base.py``
says why it is shaped so); a backend subclasses ``SqlStore`` alone.
"""

from __future__ import annotations

from pipeline.store.fires import SqlFires
from pipeline.store.history import SqlHistory
from pipeline.store.jobs import SqlJobs
from pipeline.store.leases import SqlLeases
from pipeline.store.logs import SqlLogs
from pipeline.store.notices import SqlNotices
from pipeline.store.pools import SqlPools
from pipeline.store.recording import SqlRecording
from pipeline.store.starts import SqlStarts


class SqlStore(SqlRecording, SqlHistory, SqlJobs, SqlFires, SqlStarts, SqlPools,
               SqlLeases, SqlLogs, SqlNotices):
    """The ``Store`` verbs; a backend supplies transactions and the dialect's few words.

    - ``SqlRecording``: the journal's events written (``record``), the circuit breaker counted;
    - ``SqlHistory``: runs read back, the decision log, retention;
    - ``SqlJobs``: jobs' settings, watermarks, breaker resets, pauses; job files;
    - ``SqlFires``: scheduled and event fires made into runs;
    - ``SqlStarts``, ``SqlPools``: runs started or claimed under their job's lock; pools;
    - ``SqlLeases``: nodes, leases, reaping the lost ones; stop requests;
    - ``SqlLogs``: shipped step logs;
    - ``SqlNotices``: notifications, their outbox and cooldowns; missed deadlines.
    """
