"""Nodes: their registration and lease, leaving, the list ``pipeline nodes`` shows; reaping the
lost ones and taking their runs back; and requests to stop a run, which its node reads.

``LeaseVerbs`` is this family's part of the ``Store`` protocol (what each verb promises);
``SqlLeases`` is its SQL, one of the classes ``sql.SqlStore`` is made of, on ``base.SqlBase``
(the transactions a backend supplies, the few reads and writes families share).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Protocol

from pipeline.model import RunStatus
from pipeline.runrecords import RunRecord
from pipeline.store.base import ACTIVE, SqlBase, Tx
from pipeline.store.records import INTERRUPTED_RUNNING, NODE_LOST, NodeInfo, NodeState, StopRequest
from pipeline.store.rows import from_json, iso, time_of, to_json

# Nodes that left or were lost stay listed this long (for `pipeline nodes` and the page).
NODES_KEPT = timedelta(days=1)


class LeaseVerbs(Protocol):
    """Nodes and their leases, the lost ones reaped; requests to stop a run."""

    def register_node(self, node: NodeInfo, *, lease: float) -> datetime:
        """Add ``node`` (alive, its lease ``lease`` seconds from now); returns the store's now."""
        ...

    def renew_lease(self, node: str, *, lease: float,
                    digest: str | None = None) -> datetime | None:
        """Move ``node``'s lease ``lease`` seconds past the store's now and return that now;
        None if the node is no longer alive (it was found lost): it must fence itself."""
        ...

    def leave(self, node: str) -> None:
        """``node`` stops cleanly: it holds no run any more; its heartbeat is when it left."""
        ...

    def nodes(self, *, since: datetime | None = None) -> list[NodeInfo]:
        """Every node alive, and those whose last heartbeat was after ``since`` (default: a
        day ago)."""
        ...

    def alive_identities(self) -> dict[str, str]:
        """Each alive node's process identity, for a liveness check on this machine."""
        ...

    def reap(self, *, now: datetime, dead: Collection[str] = ()) -> list[RunRecord]:
        """Declare lost the nodes whose lease has run out and the alive nodes in ``dead`` (a
        process seen dead on this machine), and take their runs back: running ones end
        ``interrupted`` (or, where the job says ``on_node_loss: retry``, queue again for any
        node), queued ones are released to any node. Returns the runs that ended or were
        released, with their steps (their process groups may need killing). Safe on every node
        at once: each lost node is reaped by one of them."""
        ...

    def request_stop(self, run_id: str, *, reason: str,
                     status: RunStatus = RunStatus.CANCELLED, at: datetime) -> RunRecord | None:
        """Ask for ``run_id`` to stop. A run nobody has started yet ends at once (as
        ``status``); a running one is flagged for its node. None if there is no such active
        run."""
        ...

    def stop_requests(self, node: str) -> list[StopRequest]:
        """Runs held by ``node`` that someone asked to stop."""
        ...


class SqlLeases(SqlBase):
    """Nodes, their leases and the runs they hold."""

    # -- nodes ---------------------------------------------------------------------------------

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

    # -- stop requests -------------------------------------------------------------------------

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
