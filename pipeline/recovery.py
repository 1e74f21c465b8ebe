"""After a crash: take back the runs of lost nodes and kill what their steps left running.

Every command that opens the state calls ``recover`` (a crash is repaired by whoever comes
next), and every daemon calls it at start and then every few seconds. A node is lost when its
process is seen dead on this machine or, in a shared store, when its lease has run out; its
running runs end ``interrupted`` (or queue again, ``on_node_loss: retry``), its queued runs go
back to any node, and every process still carrying one of those runs' ids is killed.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from loguru import logger

from pipeline import process
from pipeline.events import StepFinished
from pipeline.model import RunStatus
from pipeline.nodes import identity_dead
from pipeline.runrecords import RunRecord
from pipeline.store import Store


def recover(store: Store, state_dir: Path, now: datetime) -> list[RunRecord]:
    """Reap lost nodes (``Store.reap``) and clean up after their runs; return those runs."""
    dead = [node for node, identity in store.alive_identities().items()
            if identity and identity_dead(identity)]
    recovered = store.reap(now=now, dead=dead)
    ended = [run for run in recovered if run.status is not RunStatus.QUEUED]
    # A step cut off before it printed anything never made its log file: say so, as a step
    # that finished silently does, rather than point at nothing. Only this machine's state
    # directory can tell, so only with a store of its own: in a cluster the lost node's log
    # is on its own disk, and its start in the store, shipped (`pipeline logs` reads it there).
    silent = [] if store.shared else [
        StepFinished(run.id, step.id, step.status, step.finished_at or now,
                     attempt=step.attempt, error=step.error, no_log=True)
        for run in ended for step in run.steps
        if step.log and not (state_dir / step.log).exists()]
    if silent:
        store.record(silent)
    for run in recovered:
        # A run queued again may already have a new attempt, started on this machine by
        # another node: only the lost attempt's groups are the lost node's.
        killed = process.kill_leftovers(run.id, [s.pgid for s in run.steps if s.pgid],
                                        marked=run.status is not RunStatus.QUEUED)
        if run.status is RunStatus.INTERRUPTED:
            what = "marked interrupted"
        elif run.steps:
            what = "queued again (on_node_loss: retry)"
        else:
            what = "left to another node"
        logger.warning("run {} of {} was left running by a node that was lost: {}{}", run.id,
                       run.job,
                       what, f"; killed {len(killed)} leftover processes" if killed else "")
    return recovered
