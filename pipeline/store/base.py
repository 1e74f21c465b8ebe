"""What every family of ``SqlStore``'s verbs stands on: the transactions and dialect words a
backend supplies, and the reads and writes several families share.

``SqlStore`` is composed of plain classes, one per family of verbs (``recording``, ``history``,
``jobs``, ``fires``, ``starts``, ``pools``, ``leases``, ``logs``, ``notices``), rather than being
one class of a thousand lines: each family reads on its own, and a backend still subclasses the
one ``SqlStore`` and overrides only what is here. Every family derives from ``SqlBase``, so what
they share is written once and type-checked where it is used: taking a transaction, locking a
job's row (every decision about a job is taken under it, CLUSTER rule 6), reading runs with
their steps, and writing the decision log.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

from pipeline.runrecords import RunRecord, StepRecord
from pipeline.store.records import JobSettings, JobState, StoredDecision
from pipeline.store.rows import (
    DOCUMENT,
    RUN_COLUMNS,
    STEP_COLUMNS,
    iso,
    iso_or_none,
    run_record,
    settings_of,
    step_record,
    time_of,
)

ACTIVE = "('queued', 'running')"


# A connection inside a transaction. Both drivers offer execute(sql, params) -> cursor with
# fetchone, fetchall, rowcount and iteration; their parameter types differ, hence Any.
Tx = Any


# A job's watermark only moves forward; events, ``move_watermark`` and claims move it.
WATERMARK = """
    INSERT INTO jobs (name, watermark) VALUES (:job, :until)
    ON CONFLICT (name) DO UPDATE SET watermark = excluded.watermark
    WHERE jobs.watermark IS NULL OR excluded.watermark > jobs.watermark"""


_JOB_COLUMNS = ("settings, failures, circuit_opened_at, paused_at, paused_by, paused_reason, "
                "watermark")


def _job_of(name: str, row: Sequence[Any]) -> tuple[JobSettings, JobState]:
    """A job's settings and state from its ``_JOB_COLUMNS``."""
    return (settings_of(name, row[0]),
            JobState(name, time_of(row[6]), row[1] or 0, time_of(row[2]), time_of(row[3]),
                     row[4], row[5]))


class SqlBase:
    """Transactions, the dialect's words and the shared reads and writes; the verbs are in the
    families that derive from it."""

    shared = False
    # `FOR UPDATE` where rows are locked (PostgreSQL); SQLite serialises writers instead.
    for_update = ""
    skip_locked = ""
    # Job names in Python's order (code points), the order their rows are locked in one at a
    # time: a statement that locks several must take them in the same order, or it could
    # deadlock with one that locks them one by one. SQLite's default collation is that order.
    by_name = "name"

    # -- what a backend supplies ---------------------------------------------------------------

    def _write(self, *, durable: bool = True) -> AbstractContextManager[Tx]:
        """A write transaction; ``durable=False`` may skip waiting for the disk where a crash
        that loses it is the daemon's own (SQLite: after it, its runs are recovered either
        way); a shared store's writes are all durable."""
        raise NotImplementedError

    def _read(self) -> AbstractContextManager[Tx]:
        raise NotImplementedError

    def _store_now(self, tx: Tx) -> datetime:
        """The store's clock, inside ``tx``."""
        return datetime.now(UTC)

    def _pipelined(self, tx: Tx) -> AbstractContextManager[object]:
        """In the block, statements whose answer is not read are sent without waiting for it:
        a network round trip is saved per statement, and a read (or the block's end) waits
        for everything sent before it. Nothing to save in-process (SQLite)."""
        return contextlib.nullcontext()

    def _ids(self, ids: Collection[str]) -> Any:
        """A list of ids as the parameter of ``IN (SELECT value FROM json_each(:ids))``."""
        return json.dumps(list(ids))

    in_ids = "IN (SELECT value FROM json_each(:ids))"
    greatest = "max"

    def now(self) -> datetime:
        with self._read() as tx:
            return self._store_now(tx)

    # -- what several families use -------------------------------------------------------------

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

    def _job(self, tx: Tx, name: str) -> tuple[JobSettings, JobState]:
        return _job_of(name, self._lock_job(tx, name, _JOB_COLUMNS))

    def _jobs(self, tx: Tx, names: Collection[str]) -> dict[str, tuple[JobSettings, JobState]]:
        """``_job`` of each of ``names``, their rows locked in name order: by one statement
        (a round trip, where one a job took one each), then any job without a row yet is
        given one and locked as ``_lock_job`` does."""
        rows = {row[0]: row[1:] for row in tx.execute(
            f"SELECT name, {_JOB_COLUMNS} FROM jobs WHERE name {self.in_ids} "
            f"ORDER BY {self.by_name}{self.for_update}", {"ids": self._ids(names)})}
        return {name: _job_of(name, rows[name]) if name in rows else self._job(tx, name)
                for name in sorted(names)}

    @staticmethod
    def _decide_log(tx: Tx, decisions: Sequence[StoredDecision]) -> None:
        for d in decisions:
            tx.execute("INSERT INTO decisions (job, outcome, decided_at, fire_time, node, "
                       "reason, detail, run_id) VALUES (:job, :outcome, :at, :fire, :node, "
                       ":reason, :detail, :run)", {
                           "job": d.job, "outcome": str(d.outcome), "at": iso(d.decided_at),
                           "fire": iso_or_none(d.fire_time), "node": d.node,
                           "reason": d.reason, "detail": d.detail, "run": d.run_id})
