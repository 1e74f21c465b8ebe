"""Notifications and deadlines: each outcome kept with its run and in the decision log, what a
node has still to deliver, a target's cooldown claimed once across nodes, and a fire's missed
deadline judged once.

``NoticeVerbs`` is this family's part of the ``Store`` protocol (what each verb promises);
``SqlNotices`` is its SQL, one of the classes ``sql.SqlStore`` is made of, on ``base.SqlBase``
(the transactions a backend supplies, the few reads and writes families share).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from pipeline.runrecords import RunRecord
from pipeline.store.base import SqlBase
from pipeline.store.records import Outcome, StoredDecision
from pipeline.store.rows import from_json, iso, time_of, to_json


class NoticeVerbs(Protocol):
    """Notifications' outcomes, outboxes and cooldowns; missed deadlines."""

    def record_notification(self, run_id: str | None, outcome: Mapping[str, Any], *,
                            decision: StoredDecision) -> None:
        """Keep a notification's outcome with its run (``notifications``) and in the
        decision log."""
        ...

    def save_outbox(self, node: str, pending: Sequence[Mapping[str, Any]]) -> None:
        """What ``node`` (by name) has still to deliver, replacing what it saved before."""
        ...

    def load_outbox(self, node: str) -> list[dict[str, Any]]:
        ...

    def adopt_outboxes(self, node: str) -> list[dict[str, Any]]:
        """Take over what nodes no longer alive left undelivered (a daemon restarted under
        another name, a node lost for good): their outboxes join ``node``'s, in one
        transaction, and are returned (only theirs); [] when there are none."""
        ...

    def claim_notice(self, job: str, target: str, kind: str, *, at: datetime,
                     cooldown: float, delivery: str) -> datetime | None:
        """Take the right to send ``job``'s ``kind`` event (which happened ``at``) to
        ``target``: None if no such notice was sent within ``cooldown`` seconds before
        ``at`` (or the one sent was this same ``delivery``, tried again after a restart),
        recording this one as sent; otherwise when the one that was sent happened. Atomic,
        so that two nodes (or a node and its successor) never both send within a cooldown."""
        ...

    def miss_deadline(self, job: str, fire_time: datetime, *, deadline: datetime,
                      node: str | None) -> tuple[bool, RunRecord | None]:
        """Judge a fire's deadline once ``deadline`` has passed: missed unless its run (the
        one holding the instant) succeeded by then. The first to judge a miss records it
        (the run marked late, a ``late`` decision) and gets True with the run (None if the
        fire made none); every later judge, or a met deadline, gets False."""
        ...


class SqlNotices(SqlBase):
    """Notifications, their outbox and cooldowns; deadlines."""

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

    def adopt_outboxes(self, node: str) -> list[dict[str, Any]]:
        with self._write() as tx:
            rows = tx.execute(
                "SELECT node, pending FROM outbox WHERE node <> :node AND node NOT IN "
                f"(SELECT name FROM nodes WHERE state = 'alive') ORDER BY node{self.for_update}",
                {"node": node}).fetchall()
            if not rows:
                return []
            adopted = [entry for row in rows for entry in from_json(row[1]) or []]
            own = tx.execute(f"SELECT pending FROM outbox WHERE node = :node{self.for_update}",
                             {"node": node}).fetchone()
            tx.execute(f"DELETE FROM outbox WHERE node {self.in_ids}",
                       {"ids": self._ids([row[0] for row in rows])})
            tx.execute("INSERT INTO outbox (node, pending) VALUES (:node, :pending) "
                       "ON CONFLICT (node) DO UPDATE SET pending = excluded.pending",
                       {"node": node, "pending": to_json(
                           [*(from_json(own[0]) if own else []), *adopted])})
        return adopted

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
