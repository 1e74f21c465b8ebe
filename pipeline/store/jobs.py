"""A job's row: the settings its scheduler published, its watermark and the instants it
fired, its circuit breaker's reset, its pause; and the job files the daemon last loaded.

``JobVerbs`` is this family's part of the ``Store`` protocol (what each verb promises);
``SqlJobs`` is its SQL, one of the classes ``sql.SqlStore`` is made of, on ``base.SqlBase``
(the transactions a backend supplies, the few reads and writes families share).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Protocol

from pipeline.model import Definition
from pipeline.runrecords import RunRecord
from pipeline.store.base import WATERMARK, SqlBase
from pipeline.store.records import JobSettings, JobState
from pipeline.store.rows import DOCUMENT, RUN_COLUMNS, iso, run_record, settings_json, time_of


class JobVerbs(Protocol):
    """Jobs' settings, watermarks and fired instants, breaker resets, pauses; job files."""

    def publish_jobs(self, jobs: Sequence[JobSettings]) -> None:
        """Record what the policy needs of each job (scheduler nodes, at every load)."""
        ...

    def job_states(self) -> dict[str, JobState]:
        ...

    def watermark(self, job: str) -> datetime | None:
        ...

    def move_watermark(self, job: str, until: datetime) -> None:
        """Every fire of ``job`` up to ``until`` is dealt with (it only ever moves forward)."""
        ...

    def fired(self, job: str, *, since: datetime, until: datetime) -> dict[datetime, RunRecord]:
        """The runs that hold the job's instants in [since, until], by instant."""
        ...

    def fires_after(self, job: str, after: datetime) -> set[datetime]:
        """Instants after ``after`` that already have a run (skipped ones too)."""
        ...

    def reset_circuit(self, job: str, at: datetime) -> None:
        """Close the job's circuit breaker: its failures so far no longer count."""
        ...

    def pause(self, jobs: Collection[str], *, by: str, reason: str | None,
              at: datetime) -> None:
        ...

    def resume(self, jobs: Collection[str]) -> None:
        ...

    def definitions(self) -> dict[str, Definition]:
        """The last good version of every job file the daemon has loaded, by file."""
        ...

    def remember_definitions(self, kept: Sequence[Definition],
                             forgotten: Collection[str]) -> None:
        """Store ``kept`` (replacing a file's earlier version) and drop the ``forgotten``
        files, in one transaction."""
        ...


class SqlJobs(SqlBase):
    """Jobs' rows and job files."""

    def publish_jobs(self, jobs: Sequence[JobSettings]) -> None:
        if not jobs:
            return
        with self._write() as tx:
            for job in jobs:
                tx.execute("INSERT INTO jobs (name, settings) VALUES (:job, :settings) "
                           "ON CONFLICT (name) DO UPDATE SET settings = excluded.settings",
                           {"job": job.name, "settings": settings_json(job)})
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
            tx.execute(WATERMARK, {"job": job, "until": iso(until)})

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

    # -- job files -----------------------------------------------------------------------------

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
