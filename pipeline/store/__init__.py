"""The state of jobs, runs and nodes: one protocol, one module per backend.

``Store`` is what the scheduler, the runner, the CLI and the HTTP app speak to: domain verbs,
synchronous (async code calls them through ``trio.to_thread``), each one transaction. Two
backends implement it and pass one conformance suite (``tests/test_store.py``):

- ``sqlite.SqliteStore``: ``STATE_DIR/state.db``, the default, one daemon per state directory;
- ``postgres.PostgresStore``: a database several daemons share (cluster mode, CONTRACT §9).

The package, by concept: ``records`` (what the verbs take and give back), ``rows`` (those values
as the tables hold them), ``migrations`` (both backends' tables, version for version), ``sql``
(``SqlStore``: the verbs in the SQL both backends run, one class per family of verbs on
``base``), ``sqlite``, ``postgres`` (and ``pgurl``: a PostgreSQL URL's password, masked).

What both must hold (docs/architecture.md has the whole picture):

- **A fire runs at most once.** A scheduled fire is keyed ``(job, fire_key)`` by a unique index;
  ``claim_fires`` reads the job's watermark under the job's lock, so every fire at or before it
  has already been dealt with by whoever moved it, and moves it in the same transaction.
- **A run is held by one node.** ``runs.node`` names it; every write of a held run is a
  compare-and-set on the node (and, for its end, the attempt), so a node that lost a run has its
  writes refused.
- **Policies are decided under lock.** ``start_runs`` and ``claim_runs`` lock the job's row,
  count its active and waiting runs on every node and ask ``policy.decide``.
- **Time is the store's.** ``now()`` is the database's clock (SQLite: this machine's).

Every method may raise ``StateError`` when the state cannot be read or written (a full disk, a
database that is down); a failed write applies nothing and may be retried.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from pipeline.events import Event
from pipeline.model import Definition, RunStatus, Trigger
from pipeline.runrecords import RunRecord
from pipeline.store.records import (
    Claims,
    EventFire,
    FireClaim,
    JobSettings,
    JobState,
    NodeInfo,
    PoolState,
    Started,
    StopRequest,
    StoredDecision,
)

__all__ = ["Store", "open_store"]


class Store(Protocol):
    """The state of every job, run and node. See the module's docstring for the guarantees."""

    shared: bool  # other daemons may use it too: a node must fence itself when cut off

    def now(self) -> datetime:
        """The store's clock (aware, UTC)."""
        ...

    def schema_version(self) -> int:
        """The version of the store's tables (after the migrations ``open`` ran)."""
        ...

    # -- events (the journal's group commit) ------------------------------------------------

    def record(self, events: Sequence[Event], *, node: str | None = None) -> frozenset[str]:
        """Apply ``events`` in order, in one transaction.

        Returns the run ids of ``RunQueued``/``RunSkipped`` events refused because their fire
        already has a run or their run id is taken; the rest of the batch is applied. With
        ``node``, writes of a run's state (its start, its steps, its end) apply only while that
        node holds the run; others are dropped (the node lost the run). Times must be aware.
        """
        ...

    # -- runs -----------------------------------------------------------------------------------

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

    # -- jobs -----------------------------------------------------------------------------------

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

    # -- making and starting runs ----------------------------------------------------------------

    def claim_fires(self, claims: Sequence[FireClaim], *, node: str | None,
                    now: datetime) -> Claims:
        """Make runs of due fires (see ``FireClaim``), in one transaction.

        ``node`` holds the runs it can run (it names itself; None leaves them to any node).
        Fires the catch-up policy does not make are written to the decision log. In a shared
        store, a fire not yet due by the store's clock (allowing for the lead) is left for
        later, and the watermark stops before it.
        """
        ...

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

    # -- pools -----------------------------------------------------------------------------------

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

    # -- notifications and deadlines -------------------------------------------------------------

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

    # -- operators ------------------------------------------------------------------------------

    def request_stop(self, run_id: str, *, reason: str,
                     status: RunStatus = RunStatus.CANCELLED, at: datetime) -> RunRecord | None:
        """Ask for ``run_id`` to stop. A run nobody has started yet ends at once (as
        ``status``); a running one is flagged for its node. None if there is no such active
        run."""
        ...

    def stop_requests(self, node: str) -> list[StopRequest]:
        """Runs held by ``node`` that someone asked to stop."""
        ...

    # -- nodes ----------------------------------------------------------------------------------

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

    # -- shipped logs (cluster mode) ----------------------------------------------------------

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

    # -- the decision log ------------------------------------------------------------------------

    def decisions(self, job: str, *, since: datetime | None = None,
                  until: datetime | None = None, limit: int = 50) -> list[StoredDecision]:
        """The job's decisions, newest first."""
        ...

    def record_decisions(self, decisions: Sequence[StoredDecision]) -> None:
        ...

    # -- job files ------------------------------------------------------------------------------

    def definitions(self) -> dict[str, Definition]:
        """The last good version of every job file the daemon has loaded, by file."""
        ...

    def remember_definitions(self, kept: Sequence[Definition],
                             forgotten: Collection[str]) -> None:
        """Store ``kept`` (replacing a file's earlier version) and drop the ``forgotten``
        files, in one transaction."""
        ...

    def close(self) -> None:
        ...


def open_store(state_dir: Path, url: str | None = None, *,
               lease: float | None = None) -> Store:
    """The store at ``url`` (``postgresql://...``), or SQLite in ``state_dir``.

    ``lease``: the node lease of a daemon in a shared store; its connection and session
    timeouts are derived from it (``postgres.Timeouts.for_lease``), 30 s when not given.
    """
    if url:
        from pipeline.store.postgres import DEFAULT_TIMEOUTS, PostgresStore, Timeouts

        return PostgresStore.open(url, timeouts=DEFAULT_TIMEOUTS if lease is None
                                  else Timeouts.for_lease(lease))
    from pipeline.store.sqlite import SqliteStore

    return SqliteStore.open(state_dir)
