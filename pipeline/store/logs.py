"""Step logs shipped to the store in chunks (cluster mode), so that any node shows any run's
log; a shipment from a node that lost the run is refused.

``LogVerbs`` is this family's part of the ``Store`` protocol (what each verb promises);
``SqlLogs`` is its SQL, one of the classes ``sql.SqlStore`` is made of, on ``base.SqlBase``
(the transactions a backend supplies, the few reads and writes families share).
"""

from __future__ import annotations

from typing import Protocol

from pipeline.store.base import SqlBase


class LogVerbs(Protocol):
    """Step logs shipped to the store (cluster mode)."""

    def ship_log(self, run_id: str, step_id: str, start: int, data: bytes, *,
                 final: int | None = None, node: str | None = None) -> bool:
        """Keep ``data`` as the step's log from byte ``start``. ``final``: the log is complete
        at that size (what a capped log was rebuilt to); chunks past it are dropped. What is
        shipped from byte 0 replaces whatever was (an earlier attempt's log, on another node).
        With ``node``, only while that node holds the run: False if the shipment was refused
        (the node lost the run)."""
        ...

    def shipped_log(self, run_id: str, step_id: str, start: int = 0,
                    limit: int = 1 << 20) -> tuple[bytes, int | None]:
        """Up to ``limit`` bytes of a shipped log from ``start``, and its final size if it is
        complete (None while its step runs, or if nothing was shipped)."""
        ...


class SqlLogs(SqlBase):
    """Shipped step logs."""

    def ship_log(self, run_id: str, step_id: str, start: int, data: bytes, *,
                 final: int | None = None, node: str | None = None) -> bool:
        # A log's end is waited for on disk: nothing ships it again after a crash.
        with self._write(durable=final is not None) as tx:
            # No row lock: the journal's writes lock the step's row, then the run's; taking
            # them the other way round here deadlocked. A shipment that crosses a takeover
            # may land; the next is refused.
            if node is not None and tx.execute(
                    "SELECT 1 FROM runs WHERE id = :run AND node = :node",
                    {"run": run_id, "node": node}).fetchone() is None:
                return False
            if final is not None or start == 0:
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
            elif start == 0:  # a new attempt's: no longer complete
                tx.execute("UPDATE steps SET log_size = NULL WHERE run_id = :run "
                           "AND step_id = :step AND log_size IS NOT NULL",
                           {"run": run_id, "step": step_id})
        return True

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
