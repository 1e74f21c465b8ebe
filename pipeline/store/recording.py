"""``record``: the journal's events written as rows, each write of a held run fenced by its
node, and the circuit breaker counted as runs end.

``RecordVerbs`` is this family's part of the ``Store`` protocol (what each verb promises);
``SqlRecording`` is its SQL, one of the classes ``sql.SqlStore`` is made of, on ``base.SqlBase``
(the transactions a backend supplies, the few reads and writes families share).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from pipeline import policy
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
from pipeline.model import RunStatus, Trigger
from pipeline.store.base import ACTIVE, WATERMARK, SqlBase, Tx
from pipeline.store.rows import (
    document_json,
    fire_key,
    iso,
    iso_or_none,
    settings_of,
    time_of,
    to_json,
    version_json,
)

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


class RecordVerbs(Protocol):
    """The journal's events written, in order, each batch one transaction."""

    def record(self, events: Sequence[Event], *, node: str | None = None) -> frozenset[str]:
        """Apply ``events`` in order, in one transaction.

        Returns the run ids of ``RunQueued``/``RunSkipped`` events refused because their fire
        already has a run or their run id is taken; the rest of the batch is applied. With
        ``node``, writes of a run's state (its start, its steps, its end) apply only while that
        node holds the run; others are dropped (the node lost the run). Times must be aware.
        """
        ...


class SqlRecording(SqlBase):
    """Events applied in order, in one transaction."""

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
            tx.execute(WATERMARK, {"job": e.job, "until": iso(e.until)})
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
        breaker = settings_of(job, row[2]).breaker
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
