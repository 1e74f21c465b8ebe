"""Pools: their sizes, and the slots runs and steps hold or wait for, first come first served
(a holding of a run that is no longer active counts for nothing).

``PoolVerbs`` is this family's part of the ``Store`` protocol (what each verb promises);
``SqlPools`` is its SQL, one of the classes ``sql.SqlStore`` is made of, on ``base.SqlBase``
(the transactions a backend supplies, the few reads and writes families share).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Protocol

from pipeline.store.base import ACTIVE, SqlBase, Tx
from pipeline.store.records import PoolState
from pipeline.store.rows import iso


class PoolVerbs(Protocol):
    """Pools' sizes, and the slots runs and steps hold or wait for."""

    def publish_pools(self, pools: Mapping[str, int]) -> None:
        """The pools' sizes (from the settings file; ``*`` for ``max_active_runs``)."""
        ...

    def acquire(self, pool: str, slots: int, *, run_id: str, step_id: str = "",
                now: datetime) -> bool:
        """Take ``slots`` of ``pool`` for a run (or one of its steps), first come first
        served: True once they are held; False means it waits (and keeps its place)."""
        ...

    def release(self, run_id: str, step_id: str | None = None) -> None:
        """Give back what a run (or one of its steps) holds or waits for."""
        ...

    def pools(self) -> list[PoolState]:
        ...


class SqlPools(SqlBase):
    """Pools' sizes and slots."""

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
