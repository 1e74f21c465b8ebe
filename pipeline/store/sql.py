"""The ``Store`` verbs in SQL both backends run: one implementation, two dialects.

Statements use ``:name`` parameters (SQLite's style; the PostgreSQL backend rewrites them to
psycopg's ``%(name)s``), keep times as fixed-width ISO 8601 UTC text and JSON as text, so the
same statements work on both. What differs is small and named in ``base.SqlBase``: row locks
(``FOR UPDATE``, absent on SQLite, whose writers are serialised anyway), a list parameter,
``greatest``, and how a transaction is opened (``SqliteStore``, ``PostgresStore``).

``SqlStore`` is made of one plain class per family of verbs, each in its own module and each
on ``SqlBase``'s transactions (``base.py`` says why it is shaped so); a backend subclasses
``SqlStore`` alone.
"""

from __future__ import annotations

from pipeline.store.fires import FireVerbs
from pipeline.store.history import HistoryVerbs
from pipeline.store.jobs import JobVerbs
from pipeline.store.leases import LeaseVerbs
from pipeline.store.logs import LogVerbs
from pipeline.store.notices import NoticeVerbs
from pipeline.store.pools import PoolVerbs
from pipeline.store.recording import RecordVerbs
from pipeline.store.starts import StartVerbs


class SqlStore(RecordVerbs, HistoryVerbs, JobVerbs, FireVerbs, StartVerbs, PoolVerbs,
               LeaseVerbs, LogVerbs, NoticeVerbs):
    """The ``Store`` verbs; a backend supplies transactions and the dialect's few words.

    - ``RecordVerbs``: the journal's events written (``record``), the circuit breaker counted;
    - ``HistoryVerbs``: runs read back, the decision log, retention;
    - ``JobVerbs``: jobs' settings, watermarks, breaker resets, pauses; job files;
    - ``FireVerbs``: scheduled and event fires made into runs;
    - ``StartVerbs``, ``PoolVerbs``: runs started or claimed under their job's lock; pools;
    - ``LeaseVerbs``: nodes, leases, reaping the lost ones; stop requests;
    - ``LogVerbs``: shipped step logs;
    - ``NoticeVerbs``: notifications, their outbox and cooldowns; missed deadlines.
    """
