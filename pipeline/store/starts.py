"""Starting runs: a node's queued runs, or ready runs nobody holds, decided about under their
job's lock (``policy.decide``) and started, skipped, queued or left waiting for a pool's slots.
``SqlStarts`` derives from ``SqlPools``: a start takes its run's slots in the same
transaction.

``StartVerbs`` is this family's part of the ``Store`` protocol (what each verb promises);
``SqlStarts`` is its SQL, one of the classes ``sql.SqlStore`` is made of, on ``base.SqlBase``
(the transactions a backend supplies, the few reads and writes families share).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any, Protocol

from pipeline import policy
from pipeline.model import RunStatus, Trigger
from pipeline.runrecords import RunRecord
from pipeline.store.base import ACTIVE, Tx
from pipeline.store.pools import SqlPools
from pipeline.store.records import (
    JobSettings,
    JobState,
    NodeInfo,
    Started,
    StoredDecision,
    outcome_of,
)
from pipeline.store.rows import DOCUMENT, RUN_COLUMNS, from_json, iso, run_record, time_of

# runs.waiting: 0 not waiting; 1 in its job's queue (queue, replace, a backlog); 2 for slots of
# a pool (its policy said start)
WAITING_POOL = 2
# What goes to the decision log as it is decided here (a run kept in its job's queue, or
# waiting for a pool's slots, is logged when it starts or is skipped).
_LOGGED = frozenset({policy.Verdict.START, policy.Verdict.SKIP, policy.Verdict.NOT_MADE})


class StartVerbs(Protocol):
    """Runs decided about and started (or claimed), under their job's lock."""

    def start_runs(self, node: str, run_ids: Sequence[str], *, now: datetime,
                   stopping: bool = False, force: Collection[str] = ()) -> list[Started]:
        """Decide about ``node``'s queued runs (new, or waiting in their job's queue), under
        each job's lock, and apply: running (attempt + 1), skipped, still waiting (queue,
        replace: the active runs are asked to stop). Runs in ``force`` start whatever the
        job's concurrency says. Runs no longer held by ``node`` or no longer queued are left
        out of the answer."""
        ...

    def claim_runs(self, node: NodeInfo, *, limit: int, now: datetime,
                   only: Collection[str] | None = None) -> list[Started]:
        """Take up to ``limit`` ready runs that no node holds (whose ``runs_on`` labels the
        node has), decide about each as ``start_runs`` does, and hold the ones that run or
        wait. Runs nobody has claimed are taken oldest first, past rows other nodes are
        claiming (SKIP LOCKED). ``only``: take none but these."""
        ...

    def release_runs(self, node: str, run_ids: Collection[str]) -> None:
        """``node`` lets go of queued runs it holds: any node may take them."""
        ...

    def waiting_runs(self, node: str) -> list[str]:
        """Ids of ``node``'s runs waiting in their job's queue, oldest first."""
        ...


class SqlStarts(SqlPools):
    """Runs decided about and started, under their job's lock."""

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
                    if policy.fits(from_json(row[2]) or {}, node.labels)][:limit]
            if not fits:
                return []
            # A node found lost (frozen past its lease, cut off) may poll again before it
            # knows: it must not take back what was just taken from it. Its row is locked
            # against a reap meanwhile.
            state = tx.execute(f"SELECT state FROM nodes WHERE id = :node{self.for_update}",
                               {"node": node.id}).fetchone()
            if state is not None and state[0] != "alive":
                return []
            tx.execute(f"UPDATE runs SET node = :node WHERE id {self.in_ids} AND node IS NULL",
                       {"node": node.id, "ids": self._ids([i for i, _ in fits])})
            return self._start(tx, node.id, fits, now, False, frozenset())

    def _start(self, tx: Tx, node: str, rows: Sequence[Sequence[Any]], now: datetime,
               stopping: bool, force: frozenset[str]) -> list[Started]:
        """Decide about each of ``rows`` (id, job), under its job's lock, and apply what was
        decided. This is the firing path, so its round trips are few: the jobs' rows are
        locked by one statement and the runs counted by one (when each run is of another job,
        as when fires come due; runs of one job are counted one by one, each seeing what was
        decided before it), and the writes are sent without waiting for each answer."""
        if not rows:
            return []
        jobs = self._jobs(tx, {row[1] for row in rows})
        ids = [row[0] for row in rows]
        runs = {row[0]: row for row in tx.execute(
            f"SELECT {RUN_COLUMNS}, document, waiting, backlog, queued_at, parallel "
            f"FROM runs WHERE id {self.in_ids}", {"ids": self._ids(ids)})}
        pools = {row[0] for row in tx.execute("SELECT name FROM pools")}
        counted = self._counts(tx, ids) if len(jobs) == len(rows) else {}
        started: list[Started] = []
        decided: list[StoredDecision] = []
        with self._pipelined(tx):
            for run_id, name in ((row[0], row[1]) for row in rows):
                settings, state = jobs[name]
                run = runs[run_id]
                decision = self._decide(tx, run, settings, state, now, stopping,
                                        run_id in force, counted)
                start = self._carry_out(tx, node, run, decision, settings.pool, pools, now)
                if start.decision.verdict in _LOGGED:
                    decided.append(StoredDecision(
                        name, outcome_of(decision), now, time_of(run[4]), node,
                        None if decision.reason is None else str(decision.reason),
                        decision.detail, run_id))
                started.append(start)
            self._decide_log(tx, decided)
        return started

    def _counts(self, tx: Tx, run_ids: Collection[str]) -> dict[str, tuple[int, int]]:
        """For each of ``run_ids``: its job's running runs, and the runs queued in its job's
        queue ahead of it (all of them for a run that is new, neither waiting nor part of a
        backlog), on every node."""
        ahead = ("a.status = 'queued' AND a.waiting = 1 AND a.id <> r.id AND ("
                 "(r.waiting = 0 AND r.backlog = 0) OR a.queued_at < r.queued_at "
                 "OR (a.queued_at = r.queued_at AND a.id < r.id))")
        return {row[0]: (row[1], row[2]) for row in tx.execute(
            f"SELECT r.id, "
            f"(SELECT count(*) FROM runs a WHERE a.job = r.job AND a.status IN {ACTIVE} "
            f"AND a.status = 'running'), "
            f"(SELECT count(*) FROM runs a WHERE a.job = r.job AND a.status IN {ACTIVE} "
            f"AND {ahead}) FROM runs r WHERE r.id {self.in_ids}", {"ids": self._ids(run_ids)})}

    def _decide(self, tx: Tx, run: Sequence[Any], settings: JobSettings, state: JobState,
                now: datetime, stopping: bool, forced: bool,
                counted: dict[str, tuple[int, int]]) -> policy.Decision:
        """What the job's policy makes of ``run`` (a row of ``_start``'s) now, counting the
        job's running runs and the queued ones ahead of it, on every node (from ``counted``,
        else counted now)."""
        waiting, backlog = run[DOCUMENT + 1], bool(run[DOCUMENT + 2])
        if waiting == WAITING_POOL and not stopping:
            return policy.START  # its policy said yes already: only slots are missing
        active, ahead = counted.get(run[0]) or self._counts(tx, [run[0]])[run[0]]
        situation = policy.Situation(
            active=active, waiting=ahead, failures=state.failures,
            circuit_opened_at=state.circuit_opened_at, paused=state.paused)
        return policy.decide(
            trigger=Trigger(run[3]), concurrency=settings.concurrency, situation=situation,
            now=now, breaker=settings.breaker, enabled=settings.enabled,
            waiting=bool(waiting), backlog=backlog, stopping=stopping, force=forced,
            parallel=run[DOCUMENT + 4] or 1)

    def _carry_out(self, tx: Tx, node: str, run: Sequence[Any], decision: policy.Decision,
               pool: tuple[str, int] | None, pools: Collection[str], now: datetime) -> Started:
        """Write ``decision`` about ``run``: started, once it holds a slot of the ``*`` pool
        and its job's ``pool`` slots where those pools are defined (else it waits for them);
        kept in its job's queue (the active runs asked to stop, for ``replace``); skipped."""
        run_id, verdict, at = run[0], decision.verdict, iso(now)
        wanted = [(p, n) for p, n in (("*", 1), pool or ("", 0)) if p in pools]
        if verdict is policy.Verdict.START and wanted and not self._acquire(
                tx, wanted, run_id, "", now):
            blocked = next((p for p, _ in wanted if p != "*"), "*")
            detail = ("waiting for max_active_runs" if blocked == "*"
                      else f"waiting for pool {blocked}")
            tx.execute("UPDATE runs SET waiting = :kind, node = :node, reason = :reason "
                       "WHERE id = :id", {"kind": WAITING_POOL, "node": node,
                                          "reason": detail, "id": run_id})
            return Started(_as_now(run, node=node, reason=detail),
                           policy.Decision(policy.Verdict.QUEUE, None, detail))
        if verdict is policy.Verdict.START:
            tx.execute("UPDATE runs SET status = 'running', started_at = :now, node = :node,"
                       " attempt = attempt + 1, waiting = 0, reason = NULL WHERE id = :id",
                       {"now": at, "node": node, "id": run_id})
            return Started(_as_now(run, node=node, status=RunStatus.RUNNING, started_at=now,
                                   attempt=(run[13] or 0) + 1, reason=None), decision)
        if verdict in (policy.Verdict.QUEUE, policy.Verdict.REPLACE):
            tx.execute("UPDATE runs SET waiting = 1, node = :node WHERE id = :id",
                       {"node": node, "id": run_id})
            replaced: tuple[str, ...] = ()
            if verdict is policy.Verdict.REPLACE:
                replaced = tuple(r[0] for r in tx.execute(
                    "UPDATE runs SET stop_reason = :reason, stop_status = 'cancelled' "
                    "WHERE job = :job AND status = 'running' AND stop_reason IS NULL "
                    "RETURNING id", {"reason": f"replaced by run {run_id}", "job": run[1]}))
            return Started(_as_now(run, node=node), decision, replaced)
        tx.execute("UPDATE runs SET status = 'skipped', started_at = :now, "
                   "finished_at = :now, reason = :reason, waiting = 0 WHERE id = :id",
                   {"now": at, "reason": decision.detail, "id": run_id})
        return Started(_as_now(run, node=node, status=RunStatus.SKIPPED, started_at=now,
                               finished_at=now, reason=decision.detail), decision)

    def release_runs(self, node: str, run_ids: Collection[str]) -> None:
        with self._write() as tx:
            tx.execute(f"UPDATE runs SET node = NULL WHERE node = :node AND status = 'queued' "
                       f"AND id {self.in_ids}", {"node": node, "ids": self._ids(run_ids)})

    def waiting_runs(self, node: str) -> list[str]:
        with self._read() as tx:
            return [row[0] for row in tx.execute(
                "SELECT id FROM runs WHERE node = :node AND status = 'queued' AND waiting = 1 "
                "ORDER BY queued_at, id", {"node": node})]


def _as_now(row: Sequence[Any], **changes: Any) -> RunRecord:
    """The run of a ``RUN_COLUMNS, document`` row, with what a decision just changed."""
    return dataclasses.replace(run_record(row, row[DOCUMENT]), **changes)
