"""The store's tables as migrations: SQLite's and PostgreSQL's side by side, version for version.

``sqlite.migrate`` and ``postgres.migrate`` run them. One set of statements serves both
backends, so the two schemas must have one shape: a new migration is appended to both tuples at
once, and the conformance suite compares the schemas they make. Statements only: this module
imports neither driver.
"""

from __future__ import annotations

from pipeline.store.records import KEYED_TRIGGERS

_ACTIVE = "('queued', 'running')"
_KEYED = "(" + ", ".join(f"'{t}'" for t in sorted(KEYED_TRIGGERS)) + ")"


# Each migration is the statements that take the schema from version N to N+1. They run inside
# one transaction with the bump of PRAGMA user_version, so a crash mid-migration leaves the old
# version intact. Never edit a released migration; append a new one. (A migration library would
# bring SQLAlchemy or a CLI of its own for what is a 20-line loop over user_version.)
#
# Times are ISO 8601 UTC text of fixed width ("2026-01-02T03:04:05.000006+00:00"): readable
# with the sqlite3 shell, and they sort and compare as text in the same order as in time.
SQLITE_MIGRATIONS: tuple[tuple[str, ...], ...] = (
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


# The same tables, columns (in the same order), indexes and data steps as
# ``SQLITE_MIGRATIONS``, version for version, in PostgreSQL's words: bigserial for a sequence
# column, bytea for a blob, bigint where a value may pass 2^31; times and JSON are TEXT and
# booleans integers on both, so that one set of statements serves both. A new migration is
# appended to both tuples at once (the conformance suite compares the two schemas).
POSTGRES_MIGRATIONS: tuple[tuple[str, ...], ...] = (
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
        "CREATE INDEX runs_by_job ON runs (job, queued_at)",
        "CREATE INDEX runs_by_time ON runs (queued_at)",
        "CREATE UNIQUE INDEX runs_by_fire ON runs (job, fire_time) WHERE fire_time IS NOT NULL",
        "CREATE INDEX runs_by_outcome ON runs (job, status, finished_at) "
        "WHERE finished_at IS NOT NULL",
        f"CREATE INDEX runs_active ON runs (status) WHERE status IN {_ACTIVE}",
        """CREATE TABLE steps (
            seq         BIGSERIAL PRIMARY KEY,
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
        "ALTER TABLE runs ADD COLUMN fire_key TEXT",
        f"UPDATE runs SET fire_key = fire_time WHERE trigger IN {_KEYED}",
        "DROP INDEX runs_by_fire",
        "CREATE UNIQUE INDEX runs_by_fire ON runs (job, fire_key) WHERE fire_key IS NOT NULL",
        """CREATE TABLE definitions (
            file   TEXT PRIMARY KEY,
            name   TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            source BYTEA NOT NULL,
            since  TEXT NOT NULL
        )""",
    ),
    (
        "ALTER TABLE runs ADD COLUMN outputs TEXT NOT NULL DEFAULT '{}'",
        "ALTER TABLE steps ADD COLUMN item TEXT",
    ),
    (
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
        # SQLite takes the bare queued_at of any row of the group; PostgreSQL wants it named.
        f"""INSERT INTO nodes (id, name, roles, identity, started_at, heartbeat_at,
                               expires_at, state)
            SELECT 'legacy-' || owner, 'legacy', 'runner', owner, min(queued_at),
                   min(queued_at), min(queued_at), 'alive'
            FROM runs WHERE status IN {_ACTIVE} AND owner IS NOT NULL GROUP BY owner""",
        f"UPDATE runs SET node = 'legacy-' || owner WHERE status IN {_ACTIVE} "
        "AND owner IS NOT NULL",
        """CREATE TABLE decisions (
            seq        BIGSERIAL PRIMARY KEY,
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
        "ALTER TABLE runs ADD COLUMN parallel INTEGER NOT NULL DEFAULT 1",
        "ALTER TABLE runs ADD COLUMN rerun_of TEXT",
        "ALTER TABLE runs ADD COLUMN reuse TEXT",
    ),
    (
        # Byte offsets and sizes: BIGINT, as SQLite's INTEGER is 64 bits wide.
        """CREATE TABLE log_chunks (
            run_id  TEXT NOT NULL,
            step_id TEXT NOT NULL,
            start   BIGINT NOT NULL,
            data    BYTEA NOT NULL,
            PRIMARY KEY (run_id, step_id, start)
        )""",
        "ALTER TABLE steps ADD COLUMN log_size BIGINT",
    ),
    (
        """CREATE TABLE fired_keys (
            job    TEXT NOT NULL,
            key    TEXT NOT NULL,
            at     TEXT NOT NULL,
            run_id TEXT,
            PRIMARY KEY (job, key)
        )""",
        "ALTER TABLE runs ADD COLUMN event TEXT",
        "ALTER TABLE jobs ADD COLUMN event_cursor TEXT",
        """CREATE TABLE pools (
            name  TEXT PRIMARY KEY,
            slots INTEGER NOT NULL
        )""",
        """CREATE TABLE pool_slots (
            seq     BIGSERIAL PRIMARY KEY,
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

# Both tuples hold this many (tests/test_store.py checks).
SCHEMA_VERSION = len(SQLITE_MIGRATIONS)
