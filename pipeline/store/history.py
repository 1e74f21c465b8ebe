"""What happened: runs read back (one with its steps, lists, counts, the last of each job),
the decision log, and retention, which deletes the runs and decisions past a job's limits.

``HistoryVerbs`` is this family's part of the ``Store`` protocol (what each verb promises);
``SqlHistory`` is its SQL, one of the classes ``sql.SqlStore`` is made of, on ``base.SqlBase``
(the transactions a backend supplies, the few reads and writes families share).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from pipeline.errors import RunActive
from pipeline.model import RunStatus, Trigger
from pipeline.runrecords import RunRecord
from pipeline.store.base import ACTIVE, SqlBase
from pipeline.store.records import Outcome, StoredDecision
from pipeline.store.rows import RUN_COLUMNS, iso, iso_or_none, run_record, time_of


class HistoryVerbs(Protocol):
    """Runs read back, the decision log, retention."""

    def run(self, run_id: str) -> RunRecord | None:
        """One run with its document and its steps (in the order they were first recorded)."""
        ...

    def runs(self, *, job: str | None = None, status: RunStatus | None = None,
             trigger: Trigger | None = None, since: datetime | None = None,
             until: datetime | None = None, limit: int = 50, offset: int = 0,
             ) -> list[RunRecord]:
        """Runs newest first (by queued time, then id), without steps or document."""
        ...

    def count_runs(self, *, job: str | None = None, status: RunStatus | None = None,
                   trigger: Trigger | None = None, since: datetime | None = None,
                   until: datetime | None = None) -> int:
        ...

    def last_runs(self) -> dict[str, RunRecord]:
        """The newest run of every job that has one, without steps or document."""
        ...

    def active_runs(self, job: str | None = None) -> list[RunRecord]:
        """Queued and running runs, oldest first, without steps or document."""
        ...

    def last_success(self, job: str) -> datetime | None:
        ...

    def jobs_with_runs(self) -> list[str]:
        ...

    def delete_run(self, run_id: str) -> RunRecord | None:
        """Delete a finished run; None if unknown. Raises ``RunActive`` for an active one."""
        ...

    def prune(self, job: str, *, keep_runs: int | None, keep_days: float | None,
              now: datetime) -> list[RunRecord]:
        """Delete the job's finished runs beyond the limits (and its old decisions); return
        the runs with their steps, for their logs."""
        ...

    def decisions(self, job: str, *, since: datetime | None = None,
                  until: datetime | None = None, limit: int = 50) -> list[StoredDecision]:
        """The job's decisions, newest first."""
        ...

    def record_decisions(self, decisions: Sequence[StoredDecision]) -> None:
        ...


class SqlHistory(SqlBase):
    """Runs and decisions, read and pruned."""

    # -- reading runs --------------------------------------------------------------------------

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

    # -- the decision log ----------------------------------------------------------------------

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

    # -- retention -----------------------------------------------------------------------------

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
