"""``pipeline run``: one run of a job in the foreground, with its live view."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import click
import trio

from pipeline import foreground
from pipeline.cli import Settings, complete_job, dirs, fail, pass_settings
from pipeline.cli.jobfiles import find_job
from pipeline.cli.state import open_state
from pipeline.cli.text import local, parse_kv, zone_of
from pipeline.events import Event
from pipeline.live import LiveView
from pipeline.model import Job, Policy, RunStatus, utc_now
from pipeline.params import parse_params
from pipeline.plan import print_plan
from pipeline.runrecords import RunRecord
from pipeline.statedir import new_run_id
from pipeline.store.records import NodeInfo


@click.command()
@click.argument("job", shell_complete=complete_job)
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE",
              help="A parameter (repeatable).")
@click.option("--dry-run", is_flag=True, help="Print the plan and the resolved commands.")
@click.option("--force", is_flag=True,
              help="Run even when the job's concurrency policy says another of its runs (the "
                   "daemon's, say) must end first.")
@dirs
@pass_settings
def run(settings: Settings, job: str, params: tuple[str, ...], dry_run: bool,
        force: bool) -> None:
    """Run JOB (a name or a file) once, now, in the foreground.

    A run of the job that is still active (under the daemon or another `pipeline run`) stops
    this one, as the job's `concurrency` policy says, unless --force.

    Exit status: 0 succeeded, 1 failed or refused, 2 invalid job or parameters, 130
    interrupted.
    """
    definition = find_job(settings, job)
    values = parse_params(definition, parse_kv(params))
    if dry_run:
        print_plan(definition, values, out=sys.stdout)
        return
    with open_state(settings, create=True) as store:
        # Recovery has just marked the runs of dead processes interrupted: what is still
        # active has a live owner.
        active = store.active_runs(definition.name)
        nodes = {n.id: n for n in store.nodes()} if active else {}
    if not force:
        refuse_overlap(settings, definition, active, nodes)
    status = run_in_foreground(settings, definition, values, force=force)
    sys.exit({"succeeded": 0, "cancelled": 130}.get(str(status), 1))


def refuse_overlap(settings: Settings, job: Job, active: Sequence[RunRecord],
                   nodes: Mapping[str, NodeInfo]) -> None:
    """Exit 1 if the job's concurrency policy allows no run besides ``active`` now.

    ``forbid`` says so outright; ``queue`` and ``replace`` too, as far as a foreground run can
    follow them: it can neither wait in the daemon's queue nor cancel another process's run.
    """
    policy = job.concurrency
    room = policy.max_active if policy.policy is Policy.ALLOW else 1
    if not active or room is None or len(active) < room:
        return
    run = active[-1]
    since = run.started_at or run.queued_at
    node = nodes.get(run.node or "")
    pid = node.identity.rpartition("/")[2].partition(":")[0] if node else "?"
    by = ("the daemon" if node is not None and "scheduler" in node.roles else
          "another process" if node is not None else "no node yet") + f" (pid {pid})"
    fail(f"job {job.name} has an active run: {run.id}, {run.status} since "
         f"{local(since, zone_of(job))}, by {by}; concurrency: {policy.policy} "
         f"allows {room} at a time. Wait for it, stop it (pipeline stop {run.id}), or give "
         "--force to run anyway")


def run_in_foreground(settings: Settings, job: Job, params: dict[str, Any], *,
                      force: bool = False) -> RunStatus:
    with open_state(settings) as store:
        run_id = new_run_id(utc_now())
        view = LiveView(job, run_id)

        def show(event: Event) -> None:
            view.update(event)

        def jobs(name: str) -> Job | None:
            return find_job(settings, name, missing_code=1)

        outcome = trio.run(lambda: foreground.run_in_foreground(
            job, params, store=store, state_dir=settings.state_dir,
            runners=settings.runners(), jobs=jobs, observers=(show,), run_id=run_id,
            force=force, tick=view.tick))
        view.tick()
        record = store.run(run_id)
        took = f" in {record.duration_s:.2f}s" if record and record.duration_s else ""
        reason = f" ({record.reason})" if record and record.reason else ""
        click.echo(f"run {run_id} {outcome.status}{took}{reason}", err=True)
        return outcome.status
