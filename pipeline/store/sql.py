"""The ``Store`` verbs in SQL both backends run: one implementation, two dialects.

Statements use ``:name`` parameters (SQLite's style; the PostgreSQL backend rewrites them to
psycopg's ``%(name)s``), keep times as fixed-width ISO 8601 UTC text and JSON as text, so the
same statements work on both. What differs is small and named here: row locks (``FOR UPDATE``,
absent on SQLite, whose writers are serialised anyway), a list parameter, ``greatest``, and how a
transaction is opened (``SqliteStore``, ``PostgresStore``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

from pipeline import policy
from pipeline.errors import RunActive
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
    StepWaiting,
    WatermarkMoved,
)
from pipeline.model import (
    CircuitBreaker,
    Concurrency,
    Definition,
    Policy,
    RunRecord,
    RunStatus,
    StepRecord,
    Trigger,
)
from pipeline.statedir import new_run_id
from pipeline.store import (
    DOCUMENT,
    INTERRUPTED_RUNNING,
    NODE_LOST,
    RUN_COLUMNS,
    STEP_COLUMNS,
    Claimed,
    Claims,
    EventFire,
    FireClaim,
    JobSettings,
    JobState,
    NodeInfo,
    NodeState,
    Outcome,
    PoolState,
    Started,
    StopRequest,
    StoredDecision,
    document_json,
    fire_key,
    from_json,
    iso,
    iso_or_none,
    outcome_of,
    run_record,
    step_record,
    time_of,
    to_json,
    version_json,
)

ACTIVE = "('queued', 'running')"
# runs.waiting: 0 not waiting; 1 in its job's queue (queue, replace, a backlog); 2 for slots of
# a pool (its policy said start)
WAITING_POOL = 2
# Nodes that left or were lost stay listed this long (for `pipeline nodes` and the page).
NODES_KEPT = timedelta(days=1)


# A connection inside a transaction. Both drivers offer execute(sql, params) -> cursor with
# fetchone, fetchall, rowcount and iteration; their parameter types differ, hence Any.
Tx = Any


# -- writing events ----------------------------------------------------------------------------

# ON CONFLICT DO NOTHING resolves a taken fire (or run id) inside the one statement: the
# transaction goes on and the rest of the batch commits, without a savepoint per claim.
_INSERT_QUEUED = """
    INSERT INTO runs (id, job, status, trigger, fire_time, fire_key, queued_at, ready_at, params,
                      version, document, parent_run_id, node, runs_on, backlog, parallel,
                      rerun_of, reuse)
    VALUES (:id, :job, 'queued', :trigger, :fire_time, :fire_key, :queued_at, :queued_at,
            :params, :version, :document, :parent, :node, :runs_on, :backlog, :parallel,
            :rerun_of, :reuse)
    ON CONFLICT DO NOTHING"""
_INSERT_SKIPPED = """
    INSERT INTO runs (id, job, status, trigger, fire_time, fire_key, queued_at, started_at,
                      finished_at, reason, version)
    VALUES (:id, :job, 'skipped', :trigger, :fire_time, :fire_key, :at, :at, :at, :reason,
            :version)
    ON CONFLICT DO NOTHING"""
# A write of a run's state applies only while the writing node holds the run (when the
# writer names itself): a node that lost its run has its writes dropped.
_HELD = "(CAST(:node AS TEXT) IS NULL OR node = :node)"
_RUN_STARTED = f"""
    UPDATE runs SET status = 'running', started_at = :at
    WHERE id = :id AND status = 'queued' AND {_HELD}"""
_RUN_FINISHED = f"""
    UPDATE runs SET status = :status, finished_at = :at, reason = :reason, outputs = :outputs,
                    waiting = 0
    WHERE id = :id AND status IN {ACTIVE} AND {_HELD}
      AND (CAST(:attempt AS INTEGER) IS NULL OR attempt = :attempt)
    RETURNING job, trigger"""
_RUN_HELD = f"EXISTS (SELECT 1 FROM runs WHERE id = :run AND {_HELD})"
# The error a pending step had ("waiting for pool db") is over once it starts.
_STEP_STARTED = f"""
    INSERT INTO steps (run_id, step_id, status, attempt, started_at, log, item)
    SELECT :run, :step, 'running', :attempt, :at, :log, :item WHERE {_RUN_HELD}
    ON CONFLICT (run_id, step_id) DO UPDATE SET
        status = 'running', attempt = excluded.attempt, started_at = excluded.started_at,
        finished_at = NULL, error = NULL, log = coalesce(excluded.log, steps.log),
        item = coalesce(excluded.item, steps.item)"""
_STEP_SPAWNED = f"""
    UPDATE steps SET pid = :pid, pgid = :pgid WHERE run_id = :run AND step_id = :step
      AND {_RUN_HELD}"""
_STEP_RETRYING = f"""
    UPDATE steps SET attempt = :attempt, error = :error WHERE run_id = :run AND step_id = :step
      AND {_RUN_HELD}"""
_WATERMARK = """
    INSERT INTO jobs (name, watermark) VALUES (:job, :until)
    ON CONFLICT (name) DO UPDATE SET watermark = excluded.watermark
    WHERE jobs.watermark IS NULL OR excluded.watermark > jobs.watermark"""


class SqlStore:
    """The ``Store`` verbs; a backend supplies transactions and the dialect's few words."""

    shared = False
    # `FOR UPDATE` where rows are locked (PostgreSQL); SQLite serialises writers instead.
    for_update = ""
    skip_locked = ""

    # -- what a backend supplies ----------------------------------------------------------------

    def _write(self, *, durable: bool = True) -> AbstractContextManager[Tx]:
        """A write transaction; ``durable=False`` may skip waiting for the disk (a start's
        decision: after a crash its run is recovered either way)."""
        raise NotImplementedError

    def _read(self) -> AbstractContextManager[Tx]:
        raise NotImplementedError

    def _store_now(self, tx: Tx) -> datetime:
        """The store's clock, inside ``tx``."""
        return datetime.now(UTC)

    def _ids(self, ids: Collection[str]) -> Any:
        """A list of ids as the parameter of ``IN (SELECT value FROM json_each(:ids))``."""
        return json.dumps(list(ids))

    in_ids = "IN (SELECT value FROM json_each(:ids))"
    greatest = "max"

    def now(self) -> datetime:
        with self._read() as tx:
            return self._store_now(tx)

    # -- events ---------------------------------------------------------------------------------

    def record(self, events: Sequence[Event], *, node: str | None = None) -> frozenset[str]:
        if not events:
            return frozenset()
        refused: set[str] = set()
        with self._write() as tx:
            for event in events:
                self._apply(tx, event, refused, node)
        return frozenset(refused)

    def _apply(self, tx: Tx, e: Event, refused: set[str], node: str | None) -> None:
        if isinstance(e, StepFinished):
            self._step_finished(tx, e, node)
        elif isinstance(e, StepStarted):
            tx.execute(_STEP_STARTED, {"run": e.run_id, "step": e.step_id, "attempt": e.attempt,
                                       "at": iso(e.started_at), "log": e.log or None,
                                       "item": e.item, "node": node})
        elif isinstance(e, RunQueued):
            fire_time = iso_or_none(e.fire_time)
            keyed = fire_key(e.trigger, fire_time) if e.keyed is None else (
                fire_time if e.keyed else None)
            cursor = tx.execute(_INSERT_QUEUED, {
                "id": e.run_id, "job": e.job, "trigger": str(e.trigger),
                "fire_time": fire_time, "fire_key": keyed,
                "queued_at": iso(e.queued_at), "params": to_json(e.params) if e.params else "{}",
                "version": version_json(e.version),
                "document": None if e.document is None else document_json(e.document),
                "parent": e.parent_run_id, "node": e.node,
                "runs_on": to_json(e.runs_on) if e.runs_on else None,
                "backlog": int(e.backlog), "parallel": e.parallel, "rerun_of": e.rerun_of,
                "reuse": to_json(e.reuse) if e.reuse else None})
            if cursor.rowcount == 0:
                refused.add(e.run_id)
        elif isinstance(e, RunStarted):
            tx.execute(_RUN_STARTED, {"at": iso(e.started_at), "id": e.run_id, "node": node})
        elif isinstance(e, RunFinished):
            self._run_finished(tx, e, node)
        elif isinstance(e, StepSpawned):
            tx.execute(_STEP_SPAWNED, {"pid": e.pid, "pgid": e.pgid, "run": e.run_id,
                                       "step": e.step_id, "node": node})
        elif isinstance(e, StepRetrying):
            # The event names the attempt that failed; the record shows the attempt under
            # way (or waiting for its delay), and the failure that caused it until it ends.
            tx.execute(_STEP_RETRYING, {"attempt": e.attempt + 1, "error": e.error,
                                        "run": e.run_id, "step": e.step_id, "node": node})
        elif isinstance(e, RunSkipped):
            at, fire_time = iso(e.at), iso_or_none(e.fire_time)
            cursor = tx.execute(_INSERT_SKIPPED, {
                "id": e.run_id, "job": e.job, "trigger": str(e.trigger), "fire_time": fire_time,
                "fire_key": fire_key(e.trigger, fire_time), "at": at, "reason": e.reason,
                "version": version_json(e.version)})
            if cursor.rowcount == 0:
                refused.add(e.run_id)
        elif isinstance(e, WatermarkMoved):
            tx.execute(_WATERMARK, {"job": e.job, "until": iso(e.until)})
        elif isinstance(e, StepWaiting):
            tx.execute(f"""
                INSERT INTO steps (run_id, step_id, status, attempt, error, waited_from)
                SELECT :run, :step, 'pending', 0, :reason, :at WHERE {_RUN_HELD}
                ON CONFLICT (run_id, step_id) DO UPDATE SET status = 'pending',
                    error = excluded.error, waited_from = excluded.waited_from""",
                {"run": e.run_id, "step": e.step_id, "reason": e.reason, "at": iso(e.at),
                 "node": node})

    def _step_finished(self, tx: Tx, e: StepFinished, node: str | None) -> None:
        tx.execute(f"""
            INSERT INTO steps (run_id, step_id, status, attempt, started_at, finished_at,
                               exit_code, signal, error, outputs)
            SELECT :run, :step, :status, :attempt, :started, :at, :code, :signal, :error,
                   :outputs WHERE {_RUN_HELD}
            ON CONFLICT (run_id, step_id) DO UPDATE SET
                status = excluded.status, finished_at = excluded.finished_at,
                attempt = {self.greatest}(steps.attempt, excluded.attempt),
                started_at = coalesce(steps.started_at, excluded.started_at),
                exit_code = excluded.exit_code, signal = excluded.signal,
                error = excluded.error, outputs = excluded.outputs,
                log = CASE WHEN :no_log = 1 THEN NULL ELSE steps.log END""", {
            "run": e.run_id, "step": e.step_id, "status": str(e.status), "attempt": e.attempt,
            "started": iso_or_none(e.started_at), "at": iso(e.finished_at),
            "code": e.exit_code, "signal": e.signal, "error": e.error,
            "outputs": to_json(e.outputs) if e.outputs else "{}", "no_log": int(e.no_log),
            "node": node})

    def _run_finished(self, tx: Tx, e: RunFinished, node: str | None) -> None:
        row = tx.execute(_RUN_FINISHED, {
            "status": str(e.status), "at": iso(e.finished_at), "reason": e.reason,
            "outputs": to_json(e.outputs) if e.outputs else "{}", "id": e.run_id,
            "node": node, "attempt": e.attempt}).fetchone()
        if row is not None:
            # Slots the run held count for nothing now (only active runs' do); the rows go
            # with retention, off the firing path.
            self._count(tx, row[0], Trigger(row[1]), e.status, e.finished_at)

    def _count(self, tx: Tx, job: str, trigger: Trigger, status: RunStatus,
               at: datetime) -> None:
        """The circuit breaker's count, kept on the job's row: failed automatic runs in a
        row. Any success closes it; a manual run's failure does not count; runs that were
        skipped, cancelled or interrupted say nothing about the job."""
        if status is RunStatus.SUCCEEDED:
            tx.execute("UPDATE jobs SET failures = 0, circuit_opened_at = NULL "
                       "WHERE name = :job AND failures > 0", {"job": job})
            return
        if status is not RunStatus.FAILED or trigger not in policy.AUTOMATIC:
            return
        # Read and written under the row's lock: two nodes ending failed runs of one job at
        # once must count both.
        row = self._lock_job(tx, job, "failures, circuit_opened_at, settings")
        failures, opened = row[0] + 1, time_of(row[1])
        breaker = _settings(job, row[2]).breaker
        if breaker is None:
            # No breaker known (yet): keep the latest failure, from which a breaker learned
            # later counts its cooldown (below its threshold the time is never looked at).
            opened = at
        elif (failures >= breaker.after
                and not policy.circuit_open(breaker, failures - 1, opened, at)):
            opened = at  # opened now, or open again after a failed trial run
        tx.execute("UPDATE jobs SET failures = :failures, circuit_opened_at = :opened "
                   "WHERE name = :job",
                   {"failures": failures, "opened": iso_or_none(opened), "job": job})

    # -- reading runs ---------------------------------------------------------------------------

    def run(self, run_id: str) -> RunRecord | None:
        with self._read() as tx:
            found = self._runs_by_id(tx, [run_id])
        return found[0] if found else None

    @staticmethod
    def _filters(job: str | None, status: RunStatus | None, trigger: Trigger | None,
                 since: datetime | None, until: datetime | None,
                 ) -> tuple[str, dict[str, Any]]:
        clauses, params = [], {}
        for column, value in (("job", job), ("status", status), ("trigger", trigger)):
            if value is not None:
                clauses.append(f"{column} = :{column}")
                params[column] = str(value)
        if since is not None:
            clauses.append("queued_at >= :since")
            params["since"] = iso(since)
        if until is not None:
            clauses.append("queued_at <= :until")
            params["until"] = iso(until)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def runs(self, *, job: str | None = None, status: RunStatus | None = None,
             trigger: Trigger | None = None, since: datetime | None = None,
             until: datetime | None = None, limit: int = 50, offset: int = 0,
             ) -> list[RunRecord]:
        where, params = self._filters(job, status, trigger, since, until)
        with self._read() as tx:
            rows = tx.execute(f"SELECT {RUN_COLUMNS} FROM runs{where} "
                              "ORDER BY queued_at DESC, id DESC LIMIT :limit OFFSET :offset",
                              {**params, "limit": limit, "offset": offset}).fetchall()
        return [run_record(row) for row in rows]

    def count_runs(self, *, job: str | None = None, status: RunStatus | None = None,
                   trigger: Trigger | None = None, since: datetime | None = None,
                   until: datetime | None = None) -> int:
        where, params = self._filters(job, status, trigger, since, until)
        with self._read() as tx:
            count: int = tx.execute(f"SELECT count(*) FROM runs{where}", params).fetchone()[0]
        return count

    # Every job with runs, in order, one index probe per job (a skip-scan of runs_by_job)
    # instead of a read of the whole history as DISTINCT or GROUP BY would do.
    _EACH_JOB = """
        WITH RECURSIVE each_job (name) AS (
            SELECT min(job) FROM runs
            UNION ALL
            SELECT (SELECT min(job) FROM runs WHERE job > each_job.name) FROM each_job
            WHERE each_job.name IS NOT NULL)"""

    def last_runs(self) -> dict[str, RunRecord]:
        with self._read() as tx:
            rows = tx.execute(f"""{self._EACH_JOB}
                SELECT {RUN_COLUMNS} FROM each_job JOIN runs ON runs.id = (
                    SELECT id FROM runs AS latest WHERE latest.job = each_job.name
                    ORDER BY queued_at DESC, id DESC LIMIT 1)""").fetchall()
        return {row[1]: run_record(row) for row in rows}

    def active_runs(self, job: str | None = None) -> list[RunRecord]:
        where = " AND job = :job" if job is not None else ""
        with self._read() as tx:
            rows = tx.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE status IN {ACTIVE}{where}"
                              " ORDER BY queued_at, id", {"job": job}).fetchall()
        return [run_record(row) for row in rows]

    def last_success(self, job: str) -> datetime | None:
        with self._read() as tx:
            row = tx.execute("SELECT max(finished_at) FROM runs WHERE job = :job "
                             "AND status = 'succeeded' AND finished_at IS NOT NULL",
                             {"job": job}).fetchone()
        return time_of(row[0])

    def jobs_with_runs(self) -> list[str]:
        with self._read() as tx:
            rows = tx.execute(f"{self._EACH_JOB} SELECT name FROM each_job "
                              "WHERE name IS NOT NULL").fetchall()
        return [row[0] for row in rows]

    def _runs_by_id(self, tx: Tx, ids: Collection[str]) -> list[RunRecord]:
        if not ids:
            return []
        rows = tx.execute(f"SELECT {RUN_COLUMNS}, document FROM runs WHERE id {self.in_ids} "
                          "ORDER BY queued_at, id", {"ids": self._ids(ids)}).fetchall()
        steps: dict[str, list[StepRecord]] = {row[0]: [] for row in rows}
        if steps:
            for step in tx.execute(f"SELECT {STEP_COLUMNS} FROM steps WHERE run_id "
                                   f"{self.in_ids} ORDER BY seq", {"ids": self._ids(steps)}):
                steps[step[0]].append(step_record(step))
        return [run_record(row, row[DOCUMENT], tuple(steps[row[0]])) for row in rows]

    # -- jobs -----------------------------------------------------------------------------------

    def publish_jobs(self, jobs: Sequence[JobSettings]) -> None:
        if not jobs:
            return
        with self._write() as tx:
            for job in jobs:
                tx.execute("INSERT INTO jobs (name, settings) VALUES (:job, :settings) "
                           "ON CONFLICT (name) DO UPDATE SET settings = excluded.settings",
                           {"job": job.name, "settings": _settings_json(job)})
                if job.breaker is not None:
                    # Failures counted before the breaker was known (an older state, a new
                    # breaker) open it as of the latest of them.
                    tx.execute(
                        "UPDATE jobs SET circuit_opened_at = (SELECT max(finished_at) FROM runs "
                        "WHERE job = :job AND status = 'failed' AND trigger IN "
                        "('schedule', 'catchup')) WHERE name = :job AND failures >= :after "
                        "AND circuit_opened_at IS NULL",
                        {"job": job.name, "after": job.breaker.after})

    def job_states(self) -> dict[str, JobState]:
        with self._read() as tx:
            rows = tx.execute("SELECT name, watermark, failures, circuit_opened_at, paused_at, "
                              "paused_by, paused_reason FROM jobs").fetchall()
        return {row[0]: JobState(row[0], time_of(row[1]), row[2] or 0, time_of(row[3]),
                                 time_of(row[4]), row[5], row[6]) for row in rows}

    def watermark(self, job: str) -> datetime | None:
        with self._read() as tx:
            row = tx.execute("SELECT watermark FROM jobs WHERE name = :job",
                             {"job": job}).fetchone()
        return None if row is None else time_of(row[0])

    def move_watermark(self, job: str, until: datetime) -> None:
        with self._write() as tx:
            tx.execute(_WATERMARK, {"job": job, "until": iso(until)})

    def fired(self, job: str, *, since: datetime, until: datetime) -> dict[datetime, RunRecord]:
        with self._read() as tx:
            rows = tx.execute(f"SELECT {RUN_COLUMNS}, fire_key FROM runs WHERE job = :job "
                              "AND fire_key >= :since AND fire_key <= :until",
                              {"job": job, "since": iso(since), "until": iso(until)}).fetchall()
        return {time_of(row[DOCUMENT]): run_record(row)  # type: ignore[misc]
                for row in rows}

    def fires_after(self, job: str, after: datetime) -> set[datetime]:
        with self._read() as tx:
            rows = tx.execute("SELECT fire_key FROM runs WHERE job = :job AND fire_key > :after",
                              {"job": job, "after": iso(after)}).fetchall()
        return {datetime.fromisoformat(row[0]) for row in rows}

    def reset_circuit(self, job: str, at: datetime) -> None:
        with self._write() as tx:
            tx.execute("INSERT INTO jobs (name, circuit_reset_at) VALUES (:job, :at) "
                       "ON CONFLICT (name) DO UPDATE SET circuit_reset_at = :at, failures = 0, "
                       "circuit_opened_at = NULL", {"job": job, "at": iso(at)})

    def pause(self, jobs: Collection[str], *, by: str, reason: str | None,
              at: datetime) -> None:
        with self._write() as tx:
            for job in jobs:
                tx.execute("INSERT INTO jobs (name, paused_at, paused_by, paused_reason) "
                           "VALUES (:job, :at, :by, :reason) ON CONFLICT (name) DO UPDATE SET "
                           "paused_at = :at, paused_by = :by, paused_reason = :reason",
                           {"job": job, "at": iso(at), "by": by, "reason": reason})

    def resume(self, jobs: Collection[str]) -> None:
        with self._write() as tx:
            for job in jobs:
                tx.execute("UPDATE jobs SET paused_at = NULL, paused_by = NULL, "
                           "paused_reason = NULL WHERE name = :job", {"job": job})

    # -- making runs of fires -------------------------------------------------------------------

    def claim_fires(self, claims: Sequence[FireClaim], *, node: str | None,
                    now: datetime) -> Claims:
        made: list[Claimed] = []
        watermarks: dict[str, datetime] = {}
        decided: list[StoredDecision] = []
        with self._write() as tx:
            store_now = self._store_now(tx)
            if self.shared:
                now = store_now  # due-ness is judged by the database's clock (CLUSTER rule 4)
            for claim in sorted(claims, key=lambda c: c.job):  # one lock order: no deadlock
                runs, watermarks[claim.job] = self._claim(tx, claim, node, now, decided)
                made.extend(runs)
        return Claims(made, watermarks, decided)

    def _lock_job(self, tx: Tx, job: str, columns: str) -> Sequence[Any]:
        """``columns`` of the job's row, locked until the transaction ends. A job without a
        row (one no scheduler has published yet) gets one first: a missing row locks
        nothing, and every decision about a job must be taken under its lock (rule 6)."""
        query = f"SELECT {columns} FROM jobs WHERE name = :job{self.for_update}"
        row: Sequence[Any] | None = tx.execute(query, {"job": job}).fetchone()
        if row is None:
            tx.execute("INSERT INTO jobs (name) VALUES (:job) ON CONFLICT (name) DO NOTHING",
                       {"job": job})
            row = tx.execute(query, {"job": job}).fetchone()
        assert row is not None
        return row

    def _claim(self, tx: Tx, claim: FireClaim, node: str | None, now: datetime,
               decisions: list[StoredDecision]) -> tuple[list[Claimed], datetime]:
        row = self._lock_job(tx, claim.job, "watermark, paused_at, paused_by, settings")
        stored = time_of(row[0])
        until = claim.until
        if self.shared:  # a node whose clock runs ahead claims nothing before it is due
            until = min(until, now + LEAD_ALLOWED)
        fires = [(f, j) for f, j in claim.fires
                 if (stored is None or f > stored) and f <= until]
        if stored is not None and until <= stored:
            return [], stored
        jitter = dict(fires)
        holder = node if claim.hold else None
        plan = policy.catch_up([f for f, _ in fires], now=now, started=claim.started,
                               catchup=claim.catchup, misfire_grace=claim.misfire_grace)
        made: list[Claimed] = []
        decided: list[StoredDecision] = []
        paused = row[1] is not None
        enabled = _settings(claim.job, row[3]).enabled
        runs = [(m.fire, Trigger.CATCHUP) for m in plan.missed if m.caught_up]
        runs += [(f, Trigger.SCHEDULE) for f in plan.on_time]
        runs.sort()
        for m in plan.missed:
            if not m.caught_up:
                decided.append(StoredDecision(claim.job, Outcome.NOT_MADE, now, m.fire, node,
                                              str(m.reason), m.detail))
        for fire, reason, rule in claim.removed:
            if (stored is None or fire > stored) and fire <= until:
                decided.append(StoredDecision(claim.job, Outcome.NOT_MADE, now, fire, node,
                                              reason, rule))
        for fire, trigger in runs:
            if not enabled:
                decided.append(StoredDecision(claim.job, Outcome.NOT_MADE, now, fire, node,
                                              str(policy.Reason.DISABLED), "the job is disabled"))
                continue
            if paused:
                decided.append(StoredDecision(
                    claim.job, Outcome.NOT_MADE, now, fire, node, str(policy.Reason.PAUSED),
                    f"the job is paused (by {row[2]})" if row[2] else "the job is paused"))
                continue
            run_id = new_run_id(now)
            ready = fire + timedelta(seconds=jitter.get(fire, 0.0)) \
                if trigger is Trigger.SCHEDULE else now
            fire_text = iso(fire)
            cursor = tx.execute("""
                INSERT INTO runs (id, job, status, trigger, fire_time, fire_key, queued_at,
                                  ready_at, params, version, document, node, runs_on, backlog)
                VALUES (:id, :job, 'queued', :trigger, :fire, :fire, :now, :ready, '{}',
                        :version, :document, :node, :runs_on, :backlog)
                ON CONFLICT DO NOTHING""", {
                "id": run_id, "job": claim.job, "trigger": str(trigger), "fire": fire_text,
                "now": iso(now), "ready": iso(ready), "version": version_json(claim.version),
                "document": None if claim.document is None else document_json(claim.document),
                "node": holder, "runs_on": to_json(claim.runs_on) if claim.runs_on else None,
                "backlog": int(plan.backlog)})
            if cursor.rowcount:
                made.append(Claimed(run_id, claim.job, fire, trigger, ready, holder is not None,
                                    plan.backlog))
        self._decide_log(tx, decided)
        decisions.extend(decided)
        tx.execute(_WATERMARK, {"job": claim.job, "until": iso(until)})
        return made, until

    # -- event fires ----------------------------------------------------------------------------

    def claim_events(self, fires: Sequence[EventFire], *, node: str | None,
                     now: datetime) -> Claims:
        made: list[Claimed] = []
        decided: list[StoredDecision] = []
        with self._write() as tx:
            if self.shared:
                now = self._store_now(tx)
            at = iso(now)
            for fire in sorted(fires, key=lambda f: (f.job, f.key)):
                row = tx.execute(f"SELECT paused_at, paused_by, settings FROM jobs "
                                 f"WHERE name = :job{self.for_update}", {"job": fire.job}
                                 ).fetchone()
                cursor = tx.execute(
                    "INSERT INTO fired_keys (job, key, at) VALUES (:job, :key, :at) "
                    "ON CONFLICT DO NOTHING", {"job": fire.job, "key": fire.key, "at": at})
                if not cursor.rowcount or fire.record_only:
                    continue
                if row is not None and not _settings(fire.job, row[2]).enabled:
                    decided.append(StoredDecision(fire.job, Outcome.NOT_MADE, now, None, node,
                                                  str(policy.Reason.DISABLED),
                                                  f"the job is disabled ({fire.key})"))
                    continue
                if row is not None and row[0] is not None:
                    decided.append(StoredDecision(
                        fire.job, Outcome.NOT_MADE, now, None, node, str(policy.Reason.PAUSED),
                        f"the job is paused (by {row[1]}): {fire.key}"))
                    continue
                run_id = new_run_id(now)
                holder = node if fire.hold else None
                tx.execute("""
                    INSERT INTO runs (id, job, status, trigger, fire_time, queued_at, ready_at,
                                      params, version, document, node, runs_on, event)
                    VALUES (:id, :job, 'queued', :trigger, :at, :at, :at, '{}', :version,
                            :document, :node, :runs_on, :event)""", {
                    "id": run_id, "job": fire.job, "trigger": str(fire.trigger), "at": at,
                    "version": version_json(fire.version),
                    "document": None if fire.document is None else document_json(fire.document),
                    "node": holder, "runs_on": to_json(fire.runs_on) if fire.runs_on else None,
                    "event": None if fire.event is None else to_json(fire.event)})
                tx.execute("UPDATE fired_keys SET run_id = :run WHERE job = :job AND key = :key",
                           {"run": run_id, "job": fire.job, "key": fire.key})
                made.append(Claimed(run_id, fire.job, now, fire.trigger, now,
                                    holder is not None, False))
            self._decide_log(tx, decided)
        return Claims(made, {}, decided)

    def known_keys(self, job: str, keys: Collection[str]) -> set[str]:
        if not keys:
            return set()
        with self._read() as tx:
            return {row[0] for row in tx.execute(
                f"SELECT key FROM fired_keys WHERE job = :job AND key {self.in_ids}",
                {"job": job, "ids": self._ids(keys)})}

    def ended_runs(self, jobs: Collection[str], *, since: datetime,
                   limit: int = 1000) -> list[RunRecord]:
        if not jobs:
            return []
        with self._read() as tx:
            rows = tx.execute(
                f"SELECT {RUN_COLUMNS} FROM runs WHERE job {self.in_ids} "
                f"AND finished_at > :since AND status NOT IN {ACTIVE} "
                "ORDER BY finished_at, id LIMIT :limit",
                {"ids": self._ids(jobs), "since": iso(since), "limit": limit}).fetchall()
        return [run_record(row) for row in rows]

    def event_cursors(self) -> dict[str, datetime]:
        with self._read() as tx:
            return {row[0]: time_of(row[1])  # type: ignore[misc]
                    for row in tx.execute("SELECT name, event_cursor FROM jobs "
                                          "WHERE event_cursor IS NOT NULL")}

    def move_event_cursor(self, job: str, at: datetime) -> None:
        with self._write(durable=False) as tx:
            tx.execute("INSERT INTO jobs (name, event_cursor) VALUES (:job, :at) "
                       "ON CONFLICT (name) DO UPDATE SET event_cursor = excluded.event_cursor "
                       "WHERE jobs.event_cursor IS NULL OR excluded.event_cursor > "
                       "jobs.event_cursor", {"job": job, "at": iso(at)})

    # -- pools ----------------------------------------------------------------------------------

    def publish_pools(self, pools: Mapping[str, int]) -> None:
        with self._write() as tx:
            tx.execute("DELETE FROM pools WHERE 1 = 1")
            for name, slots in sorted(pools.items()):
                tx.execute("INSERT INTO pools (name, slots) VALUES (:name, :slots)",
                           {"name": name, "slots": slots})

    def acquire(self, pool: str, slots: int, *, run_id: str, step_id: str = "",
                now: datetime) -> bool:
        with self._write(durable=False) as tx:
            return self._acquire(tx, [(pool, slots)], run_id, step_id, now)

    def _acquire(self, tx: Tx, wanted: Sequence[tuple[str, int]], run_id: str, step_id: str,
                 now: datetime) -> bool:
        """Under the pools' row locks: all of ``wanted`` or nothing, each first come, first
        served among the active runs' holdings; a refused holder keeps its place."""
        places: list[int] = []
        ready = True
        for pool, slots in sorted(wanted):
            size = tx.execute(f"SELECT slots FROM pools WHERE name = :pool{self.for_update}",
                              {"pool": pool}).fetchone()
            if size is None:
                continue  # no such pool (any more): nothing to wait for
            tx.execute("INSERT INTO pool_slots (pool, run_id, step_id, slots, since) "
                       "VALUES (:pool, :run, :step, :slots, :at) ON CONFLICT DO NOTHING",
                       {"pool": pool, "run": run_id, "step": step_id, "slots": slots,
                        "at": iso(now)})
            seq, granted = tx.execute(
                "SELECT seq, granted FROM pool_slots WHERE run_id = :run AND step_id = :step "
                "AND pool = :pool", {"run": run_id, "step": step_id, "pool": pool}).fetchone()
            if granted:
                continue
            live = f"pool = :pool AND run_id IN (SELECT id FROM runs WHERE status IN {ACTIVE})"
            used = tx.execute(f"SELECT coalesce(sum(slots), 0) FROM pool_slots WHERE {live} "
                              "AND granted = 1", {"pool": pool}).fetchone()[0]
            ahead = tx.execute(f"SELECT count(*) FROM pool_slots WHERE {live} AND granted = 0 "
                               "AND seq < :seq", {"pool": pool, "seq": seq}).fetchone()[0]
            places.append(seq)
            ready = ready and not ahead and used + slots <= size[0]
        if not ready:
            return False
        for seq in places:
            tx.execute("UPDATE pool_slots SET granted = 1 WHERE seq = :seq", {"seq": seq})
        return True

    def release(self, run_id: str, step_id: str | None = None) -> None:
        with self._write(durable=False) as tx:
            if step_id is None:
                tx.execute("DELETE FROM pool_slots WHERE run_id = :run", {"run": run_id})
            else:
                tx.execute("DELETE FROM pool_slots WHERE run_id = :run AND step_id = :step",
                           {"run": run_id, "step": step_id})

    def pools(self) -> list[PoolState]:
        live = f"run_id IN (SELECT id FROM runs WHERE status IN {ACTIVE})"
        with self._read() as tx:
            rows = tx.execute(f"""
                SELECT name, slots,
                    (SELECT coalesce(sum(ps.slots), 0) FROM pool_slots AS ps
                     WHERE ps.pool = pools.name AND ps.granted = 1 AND ps.{live}),
                    (SELECT count(*) FROM pool_slots AS ps
                     WHERE ps.pool = pools.name AND ps.granted = 0 AND ps.{live})
                FROM pools ORDER BY name""").fetchall()
        return [PoolState(*row) for row in rows]

    # -- starting runs --------------------------------------------------------------------------

    def start_runs(self, node: str, run_ids: Sequence[str], *, now: datetime,
                   stopping: bool = False, force: Collection[str] = ()) -> list[Started]:
        if not run_ids:
            return []
        with self._write(durable=False) as tx:
            if self.shared:
                now = self._store_now(tx)
            rows = tx.execute(f"SELECT id, job FROM runs WHERE id {self.in_ids} "
                              "AND status = 'queued' AND node = :node ORDER BY queued_at, id",
                              {"ids": self._ids(run_ids), "node": node}).fetchall()
            return self._start(tx, node, rows, now, stopping, frozenset(force))

    def claim_runs(self, node: NodeInfo, *, limit: int, now: datetime,
                   only: Collection[str] | None = None) -> list[Started]:
        if limit <= 0 or (only is not None and not only):
            return []
        wanted = "" if only is None else f" AND id {self.in_ids}"
        ids = {} if only is None else {"ids": self._ids(only)}
        with self._read() as tx:  # most looks find nothing: no write lock for them
            if tx.execute("SELECT 1 FROM runs WHERE status = 'queued' AND node IS NULL "
                          f"AND ready_at <= :now{wanted} LIMIT 1",
                          {"now": iso(now), **ids}).fetchone() is None:
                return []
        with self._write(durable=False) as tx:
            if self.shared:
                now = self._store_now(tx)
            # Oldest first, past rows others are claiming; runs_on is checked here in Python
            # (a row that does not fit stays for another node).
            rows = tx.execute(f"""
                SELECT id, job, runs_on FROM runs
                WHERE status = 'queued' AND node IS NULL AND ready_at <= :now{wanted}
                ORDER BY ready_at, id LIMIT :limit{self.skip_locked}""",
                {"now": iso(now), "limit": limit * 4, **ids}).fetchall()
            fits = [(row[0], row[1]) for row in rows
                    if _fits(from_json(row[2]) or {}, node.labels)][:limit]
            if not fits:
                return []
            tx.execute(f"UPDATE runs SET node = :node WHERE id {self.in_ids} AND node IS NULL",
                       {"node": node.id, "ids": self._ids([i for i, _ in fits])})
            return self._start(tx, node.id, fits, now, False, frozenset())

    def _start(self, tx: Tx, node: str, rows: Sequence[Sequence[Any]], now: datetime,
               stopping: bool, force: frozenset[str]) -> list[Started]:
        """Decide about each of ``rows`` (id, job), under its job's lock; the statements per
        run are few on purpose: this is the firing path (a count, an update, a decision)."""
        if not rows:
            return []
        started: list[Started] = []
        decided: list[StoredDecision] = []
        jobs: dict[str, tuple[JobSettings, JobState]] = {}
        for name in sorted({row[1] for row in rows}):  # one lock order: no deadlock
            jobs[name] = self._job(tx, name)
        runs = {row[0]: row for row in tx.execute(
            f"SELECT {RUN_COLUMNS}, document, waiting, backlog, queued_at, parallel "
            f"FROM runs WHERE id {self.in_ids}", {"ids": self._ids([r[0] for r in rows])})}
        pools = {row[0] for row in tx.execute("SELECT name FROM pools")}
        at = iso(now)
        for run_id, name in ((row[0], row[1]) for row in rows):
            settings, state = jobs[name]
            run = runs[run_id]
            waiting, backlog = run[DOCUMENT + 1], bool(run[DOCUMENT + 2])
            active, ahead = tx.execute(
                "SELECT coalesce(sum(CASE WHEN status = 'running' THEN 1 ELSE 0 END), 0), "
                "coalesce(sum(CASE WHEN status = 'queued' AND waiting = 1 AND id <> :id "
                "AND (:all = 1 OR queued_at < :queued OR (queued_at = :queued AND id < :id)) "
                "THEN 1 ELSE 0 END), 0) FROM runs WHERE job = :job AND status IN "
                f"{ACTIVE}", {"job": name, "id": run_id, "all": int(not (waiting or backlog)),
                              "queued": run[DOCUMENT + 3]}).fetchone()
            situation = policy.Situation(
                active=active, waiting=ahead, failures=state.failures,
                circuit_opened_at=state.circuit_opened_at, paused=state.paused)
            trigger = Trigger(run[3])
            if waiting == WAITING_POOL and not stopping:
                decision = policy.START  # its policy said yes already: only slots are missing
            else:
                decision = policy.decide(
                    trigger=trigger, concurrency=settings.concurrency, situation=situation,
                    now=now, breaker=settings.breaker, enabled=settings.enabled,
                    waiting=bool(waiting), backlog=backlog, stopping=stopping,
                    force=run_id in force, parallel=run[DOCUMENT + 4] or 1)
            verdict = decision.verdict
            wanted = [(p, n) for p, n in (("*", 1), settings.pool or ("", 0)) if p in pools]
            if verdict is policy.Verdict.START and wanted and not self._acquire(
                    tx, wanted, run_id, "", now):
                blocked = next((p for p, _ in wanted if p != "*"), "*")
                detail = ("waiting for max_active_runs" if blocked == "*"
                          else f"waiting for pool {blocked}")
                tx.execute("UPDATE runs SET waiting = :kind, node = :node, reason = :reason "
                           "WHERE id = :id", {"kind": WAITING_POOL, "node": node,
                                              "reason": detail, "id": run_id})
                started.append(Started(_as_now(run, node=node, reason=detail),
                                       policy.Decision(policy.Verdict.QUEUE, None, detail)))
                continue
            replaced: tuple[str, ...] = ()
            if verdict is policy.Verdict.START:
                tx.execute("UPDATE runs SET status = 'running', started_at = :now, node = :node,"
                           " attempt = attempt + 1, waiting = 0, reason = NULL WHERE id = :id",
                           {"now": at, "node": node, "id": run_id})
                record = _as_now(run, node=node, status=RunStatus.RUNNING, started_at=now,
                                 attempt=(run[13] or 0) + 1, reason=None)
            elif verdict in (policy.Verdict.QUEUE, policy.Verdict.REPLACE):
                tx.execute("UPDATE runs SET waiting = 1, node = :node WHERE id = :id",
                           {"node": node, "id": run_id})
                if verdict is policy.Verdict.REPLACE:
                    replaced = tuple(r[0] for r in tx.execute(
                        "UPDATE runs SET stop_reason = :reason, stop_status = 'cancelled' "
                        "WHERE job = :job AND status = 'running' AND stop_reason IS NULL "
                        "RETURNING id", {"reason": f"replaced by run {run_id}", "job": name}))
                record = _as_now(run, node=node)
            else:
                tx.execute("UPDATE runs SET status = 'skipped', started_at = :now, "
                           "finished_at = :now, reason = :reason, waiting = 0 WHERE id = :id",
                           {"now": at, "reason": decision.detail, "id": run_id})
                record = _as_now(run, node=node, status=RunStatus.SKIPPED, started_at=now,
                                 finished_at=now, reason=decision.detail)
            if verdict in (policy.Verdict.START, policy.Verdict.SKIP, policy.Verdict.NOT_MADE):
                decided.append(StoredDecision(
                    name, outcome_of(decision), now, time_of(run[4]), node,
                    None if decision.reason is None else str(decision.reason),
                    decision.detail, run_id))
            started.append(Started(record, decision, replaced))
        self._decide_log(tx, decided)
        return started

    def _job(self, tx: Tx, name: str) -> tuple[JobSettings, JobState]:
        row = self._lock_job(tx, name, "settings, failures, circuit_opened_at, paused_at, "
                                       "paused_by, paused_reason, watermark")
        return (_settings(name, row[0]),
                JobState(name, time_of(row[6]), row[1] or 0, time_of(row[2]), time_of(row[3]),
                         row[4], row[5]))

    def release_runs(self, node: str, run_ids: Collection[str]) -> None:
        with self._write() as tx:
            tx.execute(f"UPDATE runs SET node = NULL WHERE node = :node AND status = 'queued' "
                       f"AND id {self.in_ids}", {"node": node, "ids": self._ids(run_ids)})

    def waiting_runs(self, node: str) -> list[str]:
        with self._read() as tx:
            return [row[0] for row in tx.execute(
                "SELECT id FROM runs WHERE node = :node AND status = 'queued' AND waiting = 1 "
                "ORDER BY queued_at, id", {"node": node})]

    # -- notifications and deadlines ------------------------------------------------------------

    def record_notification(self, run_id: str | None, outcome: Mapping[str, Any], *,
                            decision: StoredDecision) -> None:
        with self._write(durable=False) as tx:
            if run_id is not None:
                row = tx.execute(f"SELECT notifications FROM runs WHERE id = :id"
                                 f"{self.for_update}", {"id": run_id}).fetchone()
                if row is not None:
                    found = list(from_json(row[0]) or [])
                    found.append(dict(outcome))
                    tx.execute("UPDATE runs SET notifications = :n WHERE id = :id",
                               {"n": to_json(found[-100:]), "id": run_id})
            self._decide_log(tx, [decision])

    def save_outbox(self, node: str, pending: Sequence[Mapping[str, Any]]) -> None:
        with self._write() as tx:
            if pending:
                tx.execute("INSERT INTO outbox (node, pending) VALUES (:node, :pending) "
                           "ON CONFLICT (node) DO UPDATE SET pending = excluded.pending",
                           {"node": node, "pending": to_json(list(pending))})
            else:
                tx.execute("DELETE FROM outbox WHERE node = :node", {"node": node})

    def load_outbox(self, node: str) -> list[dict[str, Any]]:
        with self._read() as tx:
            row = tx.execute("SELECT pending FROM outbox WHERE node = :node",
                             {"node": node}).fetchone()
        return list(from_json(row[0])) if row else []

    def claim_notice(self, job: str, target: str, kind: str, *, at: datetime,
                     cooldown: float, delivery: str) -> datetime | None:
        keys = {"job": job, "target": target, "kind": kind}
        with self._write(durable=False) as tx:
            cursor = tx.execute(
                "INSERT INTO notices_sent (job, target, kind, at, delivery) "
                "VALUES (:job, :target, :kind, :at, :delivery) "
                "ON CONFLICT (job, target, kind) DO UPDATE SET at = excluded.at, "
                "delivery = excluded.delivery WHERE notices_sent.at <= :cutoff "
                "OR notices_sent.delivery = excluded.delivery",
                {**keys, "at": iso(at), "delivery": delivery,
                 "cutoff": iso(at - timedelta(seconds=cooldown))})
            if cursor.rowcount:
                return None
            row = tx.execute("SELECT at FROM notices_sent WHERE job = :job "
                             "AND target = :target AND kind = :kind", keys).fetchone()
        return time_of(row[0]) if row else None

    def miss_deadline(self, job: str, fire_time: datetime, *, deadline: datetime,
                      node: str | None) -> tuple[bool, RunRecord | None]:
        with self._write(durable=False) as tx:
            now = self._store_now(tx)
            row = tx.execute("SELECT id, status, finished_at FROM runs WHERE job = :job "
                             "AND fire_key = :fire", {"job": job, "fire": iso(fire_time)}
                             ).fetchone()
            if row is not None and row[1] == "succeeded" and row[2] <= iso(deadline):
                return False, None
            cursor = tx.execute(
                "INSERT INTO deadlines (job, fire_time, missed_at, run_id) "
                "VALUES (:job, :fire, :at, :run) ON CONFLICT DO NOTHING",
                {"job": job, "fire": iso(fire_time), "at": iso(now),
                 "run": row[0] if row else None})
            if not cursor.rowcount:
                return False, None
            if row is not None:
                tx.execute("UPDATE runs SET late = 1 WHERE id = :id", {"id": row[0]})
            detail = (f"not succeeded by {iso(deadline)}" + (
                f" (run {row[0]} is {row[1]})" if row else " (the fire made no run)"))
            self._decide_log(tx, [StoredDecision(job, Outcome.LATE, now, fire_time, node,
                                                 "deadline", detail,
                                                 row[0] if row else None)])
            return True, self._runs_by_id(tx, [row[0]])[0] if row else None

    # -- operators ------------------------------------------------------------------------------

    def request_stop(self, run_id: str, *, reason: str,
                     status: RunStatus = RunStatus.CANCELLED, at: datetime) -> RunRecord | None:
        with self._write() as tx:
            row = tx.execute(f"SELECT status, node FROM runs WHERE id = :id{self.for_update}",
                             {"id": run_id}).fetchone()
            if row is None or row[0] not in ("queued", "running"):
                return None
            if row[0] == "queued":  # nobody has started it: it ends here
                tx.execute("UPDATE runs SET status = :status, finished_at = :at, "
                           "reason = :reason, waiting = 0 WHERE id = :id",
                           {"status": str(status), "at": iso(at), "reason": reason,
                            "id": run_id})
            else:
                tx.execute("UPDATE runs SET stop_reason = :reason, stop_status = :status "
                           "WHERE id = :id AND stop_reason IS NULL",
                           {"reason": reason, "status": str(status), "id": run_id})
            return self._runs_by_id(tx, [run_id])[0]

    def stop_requests(self, node: str) -> list[StopRequest]:
        with self._read() as tx:
            rows = tx.execute("SELECT id, stop_reason, stop_status FROM runs WHERE node = :node "
                              "AND status = 'running' AND stop_reason IS NOT NULL",
                              {"node": node}).fetchall()
        return [StopRequest(row[0], row[1], RunStatus(row[2] or "cancelled")) for row in rows]

    # -- nodes ----------------------------------------------------------------------------------

    def register_node(self, node: NodeInfo, *, lease: float) -> datetime:
        with self._write() as tx:
            now = self._store_now(tx)
            tx.execute("""
                INSERT INTO nodes (id, name, roles, labels, version, identity, listen, digest,
                                   max_runs, started_at, heartbeat_at, expires_at, state)
                VALUES (:id, :name, :roles, :labels, :version, :identity, :listen, :digest,
                        :max_runs, :now, :now, :expires, 'alive')""", {
                "id": node.id, "name": node.name, "roles": ",".join(sorted(node.roles)),
                "labels": to_json(node.labels), "version": node.version,
                "identity": node.identity, "listen": node.listen, "digest": node.digest,
                "max_runs": node.max_runs, "now": iso(now),
                "expires": iso(now + timedelta(seconds=lease))})
        return now

    def renew_lease(self, node: str, *, lease: float,
                    digest: str | None = None) -> datetime | None:
        with self._write(durable=False) as tx:
            now = self._store_now(tx)
            cursor = tx.execute(
                "UPDATE nodes SET heartbeat_at = :now, expires_at = :expires, "
                "digest = coalesce(:digest, digest) WHERE id = :id AND state = 'alive'",
                {"now": iso(now), "expires": iso(now + timedelta(seconds=lease)),
                 "digest": digest, "id": node})
        return now if cursor.rowcount else None

    def leave(self, node: str) -> None:
        with self._write() as tx:
            tx.execute("UPDATE nodes SET state = 'left', heartbeat_at = :now "
                       "WHERE id = :id AND state = 'alive'",
                       {"id": node, "now": iso(self._store_now(tx))})

    def nodes(self, *, since: datetime | None = None) -> list[NodeInfo]:
        with self._read() as tx:
            since_text = iso(since if since is not None else self._store_now(tx) - NODES_KEPT)
            rows = tx.execute("""
                SELECT id, name, roles, labels, version, identity, listen, digest, max_runs,
                       started_at, heartbeat_at, expires_at, state,
                       (SELECT count(*) FROM runs WHERE runs.node = nodes.id
                        AND runs.status IN ('queued', 'running')  -- the partial index
                        AND runs.status = 'running')
                FROM nodes WHERE state = 'alive' OR heartbeat_at >= :since
                ORDER BY name, started_at""", {"since": since_text}).fetchall()
        return [NodeInfo(row[0], row[1], frozenset(filter(None, row[2].split(","))),
                         from_json(row[3]) or {}, row[4] or "", row[5] or "", row[6], row[7],
                         row[8], time_of(row[9]), time_of(row[10]), time_of(row[11]),
                         NodeState(row[12]), row[13]) for row in rows]

    def alive_identities(self) -> dict[str, str]:
        """Alive nodes' process identities, for a liveness check on this machine."""
        with self._read() as tx:
            return {row[0]: row[1] or "" for row in tx.execute(
                "SELECT id, identity FROM nodes WHERE state = 'alive'")}

    def reap(self, *, now: datetime, dead: Collection[str] = ()) -> list[RunRecord]:
        with self._read() as tx:
            store_now = self._store_now(tx)
            # On one machine (SQLite) a node is lost when its process is seen dead; a lease
            # that ran out only counts where another machine may take the runs over.
            expired = {row[0] for row in tx.execute(
                "SELECT id FROM nodes WHERE state = 'alive' AND expires_at < :now",
                {"now": iso(store_now)})} if self.shared else set()
            orphaned = {row[0] for row in tx.execute(
                f"SELECT DISTINCT node FROM runs WHERE status IN {ACTIVE} AND node IS NOT NULL "
                "AND node NOT IN (SELECT id FROM nodes WHERE state = 'alive')")}
        lost = expired | set(dead) | orphaned
        if not lost:
            return []
        with self._write() as tx:
            store_now = self._store_now(tx)
            taken: set[str] = set(orphaned)
            for node in sorted(lost - orphaned):
                # A conditional update: of several nodes reaping at once, one takes each.
                cursor = tx.execute(
                    "UPDATE nodes SET state = 'lost' WHERE id = :id AND state = 'alive' "
                    "AND (:dead = 1 OR expires_at < :now)",
                    {"id": node, "dead": int(node in dead), "now": iso(store_now)})
                if cursor.rowcount:
                    taken.add(node)
            if not taken:
                return []
            return self._take_back(tx, taken, now)

    def _take_back(self, tx: Tx, nodes: Collection[str], now: datetime) -> list[RunRecord]:
        at = iso(now)
        rows = tx.execute(f"SELECT id, job, status, waiting FROM runs WHERE status IN {ACTIVE} "
                          f"AND node {self.in_ids}{self.for_update}",
                          {"ids": self._ids(nodes)}).fetchall()
        settings = {name: self._job(tx, name)[0] for name in sorted({r[1] for r in rows})}
        for run_id, job, status, _waiting in rows:
            if status == "queued":  # not started: any node may take it
                tx.execute("UPDATE runs SET node = NULL WHERE id = :id", {"id": run_id})
            elif settings[job].on_node_loss_retry:
                tx.execute("UPDATE runs SET status = 'queued', node = NULL, ready_at = :at, "
                           "waiting = 1, stop_reason = NULL, reason = :reason WHERE id = :id",
                           {"at": at, "reason": f"retried: {NODE_LOST}", "id": run_id})
            else:
                tx.execute("UPDATE runs SET status = 'interrupted', finished_at = :at, "
                           "reason = :reason, waiting = 0 WHERE id = :id",
                           {"at": at, "reason": INTERRUPTED_RUNNING, "id": run_id})
        ids = [r[0] for r in rows if r[2] == "running"]
        if ids:
            tx.execute("UPDATE steps SET status = 'cancelled', finished_at = :at, "
                       f"error = '{INTERRUPTED_RUNNING}' WHERE status IN ('running', 'pending') "
                       f"AND run_id {self.in_ids}", {"at": at, "ids": self._ids(ids)})
        return self._runs_by_id(tx, [r[0] for r in rows])

    # -- shipped logs ---------------------------------------------------------------------------

    def ship_log(self, run_id: str, step_id: str, start: int, data: bytes, *,
                 final: int | None = None) -> None:
        with self._write(durable=False) as tx:
            if final is not None:
                tx.execute("DELETE FROM log_chunks WHERE run_id = :run AND step_id = :step "
                           "AND start >= :start",
                           {"run": run_id, "step": step_id, "start": start})
            if data:
                tx.execute("INSERT INTO log_chunks (run_id, step_id, start, data) "
                           "VALUES (:run, :step, :start, :data) ON CONFLICT "
                           "(run_id, step_id, start) DO UPDATE SET data = excluded.data",
                           {"run": run_id, "step": step_id, "start": start, "data": data})
            if final is not None:
                tx.execute("UPDATE steps SET log_size = :size WHERE run_id = :run "
                           "AND step_id = :step",
                           {"size": final, "run": run_id, "step": step_id})

    def shipped_log(self, run_id: str, step_id: str, start: int = 0,
                    limit: int = 1 << 20) -> tuple[bytes, int | None]:
        with self._read() as tx:
            rows = tx.execute(
                "SELECT start, data FROM log_chunks WHERE run_id = :run AND step_id = :step "
                "AND start < :end ORDER BY start",
                {"run": run_id, "step": step_id, "end": start + limit}).fetchall()
            size = tx.execute("SELECT log_size FROM steps WHERE run_id = :run "
                              "AND step_id = :step", {"run": run_id, "step": step_id}
                              ).fetchone()
        out = bytearray()
        for begin, data in rows:
            data = bytes(data)
            if begin + len(data) <= start:
                continue
            if begin > start + len(out):
                break  # a hole: what follows is not shipped yet
            out += data[max(0, start + len(out) - begin):]
        return bytes(out[:limit]), (size[0] if size else None)

    # -- the decision log -----------------------------------------------------------------------

    def decisions(self, job: str, *, since: datetime | None = None,
                  until: datetime | None = None, limit: int = 50) -> list[StoredDecision]:
        clauses = ["job = :job"]
        if since is not None:
            clauses.append("coalesce(fire_time, decided_at) >= :since")
        if until is not None:
            clauses.append("coalesce(fire_time, decided_at) <= :until")
        with self._read() as tx:
            rows = tx.execute(
                "SELECT job, outcome, decided_at, fire_time, node, reason, detail, run_id "
                f"FROM decisions WHERE {' AND '.join(clauses)} "
                "ORDER BY coalesce(fire_time, decided_at) DESC, seq DESC LIMIT :limit",
                {"job": job, "since": iso_or_none(since), "until": iso_or_none(until),
                 "limit": limit}).fetchall()
        return [StoredDecision(row[0], Outcome(row[1]), time_of(row[2]),  # type: ignore[arg-type]
                               time_of(row[3]), row[4], row[5], row[6], row[7]) for row in rows]

    def record_decisions(self, decisions: Sequence[StoredDecision]) -> None:
        if decisions:
            with self._write() as tx:
                self._decide_log(tx, decisions)

    @staticmethod
    def _decide_log(tx: Tx, decisions: Sequence[StoredDecision]) -> None:
        for d in decisions:
            tx.execute("INSERT INTO decisions (job, outcome, decided_at, fire_time, node, "
                       "reason, detail, run_id) VALUES (:job, :outcome, :at, :fire, :node, "
                       ":reason, :detail, :run)", {
                           "job": d.job, "outcome": str(d.outcome), "at": iso(d.decided_at),
                           "fire": iso_or_none(d.fire_time), "node": d.node,
                           "reason": d.reason, "detail": d.detail, "run": d.run_id})

    # -- retention ------------------------------------------------------------------------------

    def prune(self, job: str, *, keep_runs: int | None, keep_days: float | None,
              now: datetime) -> list[RunRecord]:
        """Delete finished runs of ``job`` beyond the newest ``keep_runs`` or older than
        ``keep_days`` (by when they finished); return them, with steps, for their logs.

        Active runs are never deleted and do not count against ``keep_runs``. Neither is a run
        whose fire lies after the job's watermark (or any fired run while the job has none):
        its row is what stops that fire from running twice after a crash (CLUSTER rule 8).
        Decisions older than ``keep_days`` go too.
        """
        if keep_runs is None and keep_days is None:
            return []
        with self._write() as tx:  # holdings of runs that ended count for nothing: drop them
            tx.execute(f"DELETE FROM pool_slots WHERE run_id NOT IN "
                       f"(SELECT id FROM runs WHERE status IN {ACTIVE})")
        finished = f"""job = :job AND status NOT IN {ACTIVE} AND (fire_key IS NULL
            OR fire_key <= (SELECT watermark FROM jobs WHERE name = :job))"""
        doomed: set[str] = set()
        with self._write() as tx:
            if keep_runs is not None:
                doomed.update(row[0] for row in tx.execute(
                    f"SELECT id FROM runs WHERE {finished} "
                    "ORDER BY queued_at DESC, id DESC LIMIT 1000000000 OFFSET :keep",
                    {"job": job, "keep": keep_runs}))
            if keep_days is not None:
                cutoff = iso(now - timedelta(days=keep_days))
                doomed.update(row[0] for row in tx.execute(
                    f"SELECT id FROM runs WHERE {finished} "
                    "AND coalesce(finished_at, queued_at) < :cutoff",
                    {"job": job, "cutoff": cutoff}))
                tx.execute("DELETE FROM decisions WHERE job = :job AND decided_at < :cutoff",
                           {"job": job, "cutoff": cutoff})
            if not doomed:
                return []
            gone = self._runs_by_id(tx, doomed)
            tx.execute(f"DELETE FROM steps WHERE run_id {self.in_ids}",
                       {"ids": self._ids(sorted(doomed))})
            tx.execute(f"DELETE FROM log_chunks WHERE run_id {self.in_ids}",
                       {"ids": self._ids(sorted(doomed))})
            tx.execute(f"DELETE FROM runs WHERE id {self.in_ids}",
                       {"ids": self._ids(sorted(doomed))})
        return gone

    def delete_run(self, run_id: str) -> RunRecord | None:
        """Delete a finished run and its steps; return it (for its logs), None if unknown.

        Raises ``RunActive`` (a ``StateError``) if the run is queued or running.
        """
        with self._write() as tx:
            found = self._runs_by_id(tx, [run_id])
            if not found:
                return None
            if not found[0].status.finished:
                raise RunActive(run_id)
            tx.execute("DELETE FROM steps WHERE run_id = :id", {"id": run_id})
            tx.execute("DELETE FROM log_chunks WHERE run_id = :id", {"id": run_id})
            tx.execute("DELETE FROM runs WHERE id = :id", {"id": run_id})
        return found[0]

    # -- job files ------------------------------------------------------------------------------

    def definitions(self) -> dict[str, Definition]:
        with self._read() as tx:
            rows = tx.execute("SELECT file, name, sha256, source, since FROM definitions")
            return {file: Definition(file, name, sha256, bytes(source),
                                     time_of(since))  # type: ignore[arg-type]
                    for file, name, sha256, source, since in rows}

    def remember_definitions(self, kept: Sequence[Definition],
                             forgotten: Collection[str]) -> None:
        with self._write() as tx:
            for file in forgotten:
                tx.execute("DELETE FROM definitions WHERE file = :file", {"file": file})
            for d in kept:
                tx.execute(
                    "INSERT INTO definitions (file, name, sha256, source, since) "
                    "VALUES (:file, :name, :sha, :source, :since) ON CONFLICT (file) DO UPDATE "
                    "SET name = excluded.name, sha256 = excluded.sha256, "
                    "source = excluded.source, since = excluded.since",
                    {"file": d.file, "name": d.name, "sha": d.sha256, "source": d.source,
                     "since": iso(d.since)})


# A shared store refuses fires further ahead of its clock than this (the claim lead and a
# margin for the time the claim takes to arrive).
LEAD_ALLOWED = timedelta(seconds=1)


def _as_now(row: Sequence[Any], **changes: Any) -> RunRecord:
    """The run of a ``RUN_COLUMNS, document`` row, with what a decision just changed."""
    return dataclasses.replace(run_record(row, row[DOCUMENT]), **changes)


def _fits(wanted: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in wanted.items())


def _settings_json(job: JobSettings) -> str:
    c, b = job.concurrency, job.breaker
    return to_json({"policy": str(c.policy), "max_active": c.max_active,
                    "max_queued": c.max_queued, "enabled": job.enabled,
                    "breaker": None if b is None else {"after": b.after, "cooldown": b.cooldown},
                    "on_node_loss": "retry" if job.on_node_loss_retry else "fail",
                    "pool": None if job.pool is None else list(job.pool)})


def _settings(name: str, text: str | None) -> JobSettings:
    data = from_json(text)
    if not data:
        return JobSettings(name)
    breaker = data.get("breaker")
    return JobSettings(
        name, Concurrency(Policy(data["policy"]), data.get("max_active"),
                          data.get("max_queued", 10)),
        None if breaker is None else CircuitBreaker(breaker["after"], breaker["cooldown"]),
        bool(data.get("enabled", True)), data.get("on_node_loss") == "retry",
        None if not data.get("pool") else (str(data["pool"][0]), int(data["pool"][1])))
