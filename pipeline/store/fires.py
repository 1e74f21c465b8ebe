"""Fires made into runs: a scheduler's claim of its jobs' due instants (each once, under the
job's lock and watermark), and event fires (each key once), with what event triggers read.

``FireVerbs`` is this family's part of the ``Store`` protocol (what each verb promises);
``SqlFires`` is its SQL, one of the classes ``sql.SqlStore`` is made of, on ``base.SqlBase``
(the transactions a backend supplies, the few reads and writes families share).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Protocol

from pipeline import policy
from pipeline.model import Trigger
from pipeline.runrecords import RunRecord
from pipeline.statedir import new_run_id
from pipeline.store.base import ACTIVE, WATERMARK, SqlBase, Tx
from pipeline.store.records import Claimed, Claims, EventFire, FireClaim, Outcome, StoredDecision
from pipeline.store.rows import (
    RUN_COLUMNS,
    document_json,
    iso,
    run_record,
    settings_of,
    time_of,
    to_json,
    version_json,
)

# A shared store refuses fires further ahead of its clock than this (the claim lead and a
# margin for the time the claim takes to arrive).
LEAD_ALLOWED = timedelta(seconds=1)


class FireVerbs(Protocol):
    """Scheduled and event fires made into runs, and what event triggers read."""

    def claim_fires(self, claims: Sequence[FireClaim], *, node: str | None,
                    now: datetime) -> Claims:
        """Make runs of due fires (see ``FireClaim``), in one transaction.

        ``node`` holds the runs it can run (it names itself; None leaves them to any node).
        Fires the catch-up policy does not make are written to the decision log. In a shared
        store, a fire not yet due by the store's clock (allowing for the lead) is left for
        later, and the watermark stops before it.
        """
        ...

    def claim_events(self, fires: Sequence[EventFire], *, node: str | None,
                     now: datetime) -> Claims:
        """Record event fires and make runs of the new ones (held by ``node`` where the fire
        says ``hold``), ready now; a paused or disabled job's fires are decisions only.
        Fires whose key is already recorded make nothing."""
        ...

    def known_keys(self, job: str, keys: Collection[str]) -> set[str]:
        """Which of ``keys`` are recorded for ``job`` (event identities)."""
        ...

    def ended_runs(self, jobs: Collection[str], *, since: datetime,
                   limit: int = 1000) -> list[RunRecord]:
        """Runs of ``jobs`` that ended after ``since``, oldest end first, with outputs."""
        ...

    def event_cursors(self) -> dict[str, datetime]:
        """Per job, up to when its ``after:`` upstreams' ended runs were looked at."""
        ...

    def move_event_cursor(self, job: str, at: datetime) -> None:
        ...


class SqlFires(SqlBase):
    """Scheduled and event fires made into runs."""

    # -- scheduled fires -----------------------------------------------------------------------

    def claim_fires(self, claims: Sequence[FireClaim], *, node: str | None,
                    now: datetime) -> Claims:
        made: list[Claimed] = []
        watermarks: dict[str, datetime] = {}
        decided: list[StoredDecision] = []
        with self._write() as tx:
            store_now = self._store_now(tx)
            if self.shared:
                now = store_now  # due-ness is judged by the database's clock (CLUSTER rule 4)
            ordered = sorted(claims, key=lambda c: c.job)  # one lock order: no deadlock
            # Every scheduler node claims every fire, and all but the first find it made. So
            # in a shared store the watermarks are read first, without a lock: a claim they
            # show dealt with is answered at once (a watermark only moves forward: what it
            # covers stays covered). The others wait for their job's lock, as the first did.
            seen = self._watermarks(tx, ordered) if self.shared and len(ordered) > 1 else {}
            for index, claim in enumerate(ordered):
                until = self._until(claim, now)
                done = _dealt_with(claim, seen[claim.job], until) if claim.job in seen else None
                if done is not None:
                    watermarks[claim.job] = done
                    continue
                runs, watermarks[claim.job], stored = self._claim(tx, claim, until, node, now,
                                                                  decided)
                made.extend(runs)
                if claim.job in seen and stored != seen[claim.job]:
                    # Another claim moved it since it was read (this one waited for the lock
                    # until that claim committed): the next ones are likely dealt with too.
                    seen = self._watermarks(tx, ordered[index + 1:])
        return Claims(made, watermarks, decided)

    def _until(self, claim: FireClaim, now: datetime) -> datetime:
        if self.shared:  # a node whose clock runs ahead claims nothing before it is due
            return min(claim.until, now + LEAD_ALLOWED)
        return claim.until

    def _watermarks(self, tx: Tx, claims: Sequence[FireClaim]) -> dict[str, datetime | None]:
        """The stored watermarks of the claims' jobs that have a row, read without a lock."""
        if not claims:
            return {}
        return {row[0]: time_of(row[1]) for row in tx.execute(
            f"SELECT name, watermark FROM jobs WHERE name {self.in_ids}",
            {"ids": self._ids([c.job for c in claims])})}

    def _claim(self, tx: Tx, claim: FireClaim, until: datetime, node: str | None,
               now: datetime, decisions: list[StoredDecision],
               ) -> tuple[list[Claimed], datetime, datetime | None]:
        """Make ``claim``'s runs under its job's lock; the runs, the watermark to answer and
        the one found stored."""
        row = self._lock_job(tx, claim.job, "watermark, paused_at, paused_by, settings")
        stored = time_of(row[0])
        done = _dealt_with(claim, stored, until)
        if done is not None:
            return [], done, stored
        fires = [(f, j) for f, j in claim.fires
                 if (stored is None or f > stored) and f <= until]
        jitter = dict(fires)
        holder = node if claim.hold else None
        plan = policy.catch_up([f for f, _ in fires], now=now, started=claim.started,
                               catchup=claim.catchup, misfire_grace=claim.misfire_grace)
        made: list[Claimed] = []
        decided: list[StoredDecision] = []
        paused = row[1] is not None
        enabled = settings_of(claim.job, row[3]).enabled
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
        tx.execute(WATERMARK, {"job": claim.job, "until": iso(until)})
        return made, until, stored

    # -- event fires ---------------------------------------------------------------------------

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
                if row is not None and not settings_of(fire.job, row[2]).enabled:
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


def _dealt_with(claim: FireClaim, stored: datetime | None, until: datetime) -> datetime | None:
    """The watermark to answer for ``claim`` when a node has dealt with it already: the
    stored watermark ``stored`` is at or after every fire (made or removed) it has up to
    ``until``. None when something is left to do. Answering ``until`` without storing it
    leaves the stored watermark where that node put it, since there is nothing in between."""
    if stored is None:
        return None
    if any(stored < f <= until for f, _ in claim.fires):
        return None
    if any(stored < fire <= until for fire, _, _ in claim.removed):
        return None
    return max(stored, until)
