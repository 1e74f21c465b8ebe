"""Run history: runs, show, logs."""

from __future__ import annotations

import json
import mmap
import os
import re
import sys
import time
from typing import Any

import click

from pipeline.cli import Settings, complete_job, complete_run, complete_step, dirs, pass_settings
from pipeline.cli.state import daemon_info, get_run, has_state, job_zones, known_names, open_state
from pipeline.cli.text import echo_json, local, table, value_text
from pipeline.errors import NotFound
from pipeline.logship import shipped_whole
from pipeline.model import STEP_INSTANCE_ID, RunStatus
from pipeline.runrecords import RunRecord, StepRecord, in_file_order
from pipeline.store import Store
from pipeline.views import run_as_dict, version_differs

RUN_STATES = ("queued", "running", "succeeded", "failed", "cancelled", "skipped", "interrupted")


@click.command()
@click.argument("job", required=False, shell_complete=complete_job)
@click.option("--status", type=click.Choice(RUN_STATES))
@click.option("--limit", type=click.IntRange(1, 10000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@dirs
@pass_settings
def runs(settings: Settings, job: str | None, status: str | None, limit: int,
         as_json: bool) -> None:
    """Run history, newest first, times in each job's zone.

    Exit status 1 for a JOB that no file in the jobs directory names and that has no runs.
    """
    # Only runs reads the job files (for their zones): show and logs must not pay for them.
    from pipeline.cli.jobfiles import jobs_on_disk

    loaded = jobs_on_disk(settings)
    daemon = daemon_info(settings)
    found: list[RunRecord] = []
    ever = job is None
    if has_state(settings):
        with open_state(settings) as store:
            found = store.runs(job=job, status=RunStatus(status) if status else None,
                               limit=limit)
            ever = bool(found) or job is None or store.count_runs(job=job) > 0
    if not ever and job not in known_names(loaded, daemon):
        where = f"in {settings.jobs_dir}" if loaded is not None else \
            f"(no jobs directory {settings.jobs_dir})"
        raise NotFound(f"unknown job {job!r}: no job file {where} names it, and it has no runs")
    if as_json:
        echo_json([run_as_dict(r, steps=False) for r in found])
        return
    if not found:
        click.echo(f"no runs{f' of {job}' if job else ''}"
                   f"{f' with status {status}' if status else ''} yet", err=True)
        return
    zones = job_zones(loaded, daemon)
    # A run that missed its deadline: "failed, late" (the API's `late: true`).
    table([(r.id, r.job, f"{r.status}, late" if r.late else str(r.status), str(r.trigger),
            local(r.started_at or r.queued_at, zones.get(r.job)),
            f"{r.duration_s:.1f}s" if r.duration_s is not None else "-", r.reason or "")
           for r in found], ("RUN", "JOB", "STATUS", "TRIGGER", "STARTED", "TOOK", "REASON"))


@click.command()
@click.argument("run_id", shell_complete=complete_run)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@dirs
@pass_settings
def show(settings: Settings, run_id: str, as_json: bool) -> None:
    """One run with its steps (in file order), and the run's own outputs."""
    with open_state(settings) as store:
        record = get_run(store, run_id)
        # A rerun's original, for its version (None once retention has removed it).
        original = store.run(record.rerun_of) if record.rerun_of and not as_json else None
    if as_json:
        echo_json(run_as_dict(record))
        return
    version = record.version
    click.echo(f"run      {record.id}\njob      {record.job}\nstatus   {record.status}"
               + (f" ({record.reason})" if record.reason else "")
               + ("; late: it had not succeeded by its deadline" if record.late else "")
               + f"\ntrigger  {record.trigger}"
               + (f"\nrerun of {record.rerun_of}" if record.rerun_of else "")
               + (f"\nfired    {local(record.fire_time)}" if record.fire_time else "")
               + f"\nstarted  {local(record.started_at)}\nfinished {local(record.finished_at)}"
               + (f"\ntook     {record.duration_s:.2f}s" if record.duration_s is not None
                  else ""))
    if record.params:
        click.echo("params   " + ", ".join(f"{k}={value_text(v)}"
                                           for k, v in record.params.items()))
    if version is not None:
        git = ""
        if version.git_commit:
            git = f" (git {version.git_commit[:12]}{', modified' if version.git_dirty else ''})"
        differs = ""
        if original is not None and original.version is not None \
                and version_differs(original, record):
            # What `rerun` warned of when it made this run: the file changed in between.
            differs = (f"; not the version run {original.id} ran "
                       f"(sha256:{original.version.sha256[:16]}): the job file changed")
        click.echo(f"version  sha256:{version.sha256[:16]}{git}{differs}")
    if record.outputs:
        click.echo("outputs  " + ", ".join(f"{k}={v}" for k, v in record.outputs.items()))
    click.echo("")
    table([(s.id, str(s.status), str(s.attempt or "-"),
            str(s.exit_code) if s.exit_code is not None else "-",
            f"{s.duration_s:.2f}s" if s.duration_s is not None else "-",
            ", ".join(f"{k}={v}" for k, v in s.outputs.items())[:60], s.error or "")
           for s in in_file_order(record)],
          ("STEP", "STATUS", "ATTEMPT", "EXIT", "TOOK", "OUTPUTS", "ERROR"))


@click.command()
@click.argument("run_id", shell_complete=complete_run)
@click.argument("step", required=False, shell_complete=complete_step)
@click.option("-f", "--follow", is_flag=True, help="Keep printing while the run is active.")
@dirs
@pass_settings
def logs(settings: Settings, run_id: str, step: str | None, follow: bool) -> None:
    """Print a run's step logs (one step, or all in file order).

    A for_each step prints each item's log in item order, each under a heading naming the
    item; STEP may also name one item (build.2). Ctrl-C while following exits 130.
    """
    if step is not None and not STEP_INSTANCE_ID.match(step):
        raise NotFound(f"no step {step!r}")

    def wanted(step_id: str) -> bool:
        return step is None or step_id == step or step_id.startswith(f"{step}.")

    def heading(s: StepRecord) -> str:
        base, _, index = s.id.partition(".")
        if not index:
            return f"==> {s.id} <=="
        item = "" if s.item is None else f" (item: {_item_text(s.item)})"
        return f"==> {base}[{index}]{item} <=="

    try:
        with open_state(settings) as store:
            record = get_run(store, run_id)
            printed: dict[str, tuple[int, int]] = {}  # step -> (the log's inode, bytes printed)
            while True:
                steps = [s for s in in_file_order(record) if s.log and wanted(s.id)]
                if step is not None and not steps and record.status.finished:
                    if any(wanted(s.id) for s in record.steps):
                        return  # the step never ran: no log
                    raise NotFound(f"run {run_id} has no step {step!r}")
                for s in steps:
                    assert s.log is not None
                    seen = printed.get(s.id)
                    if seen is None and s.id != step:
                        click.echo(heading(s))
                    try:
                        if shipped_whole(store, record.id, s.id):
                            raise FileNotFoundError  # a file here may be of a lost attempt
                        with (settings.state_dir / s.log).open("rb") as f:
                            inode, offset = os.fstat(f.fileno()).st_ino, seen[1] if seen else 0
                            if seen is not None and seen[0] != inode:
                                offset = _after_cap(f, offset)
                            f.seek(offset)
                            data = f.read()
                    except FileNotFoundError:
                        # Not on this machine: a cluster's node shipped it to the store.
                        (inode, offset) = seen or (0, 0)
                        data = _shipped(store, record.id, s.id, offset)
                    printed[s.id] = (inode, offset + len(data))
                    if data:
                        sys.stdout.buffer.write(data)
                        sys.stdout.flush()
                if not follow or record.status.finished:
                    return
                time.sleep(0.5)
                record = get_run(store, run_id)
    except KeyboardInterrupt:
        sys.exit(130)  # Ctrl-C ends a follow: nothing to report


def _shipped(store: Store, run_id: str, step_id: str, offset: int) -> bytes:
    """What a shared store holds of a step's log from ``offset`` (nothing with SQLite)."""
    if not store.shared:
        return b""
    out = b""
    while True:
        data, _ = store.shipped_log(run_id, step_id, offset + len(out))
        if not data:
            return out
        out += data


def _item_text(item: str) -> str:
    """A for_each item (stored as JSON) as a log heading shows it: a string as it is."""
    try:
        value = json.loads(item)
    except ValueError:
        return item[:80]
    return (value if isinstance(value, str) and value.isprintable() else item)[:80]


def _after_cap(f: Any, offset: int) -> int:
    """Where to go on in a log that was replaced while followed, after ``offset`` bytes: a
    capped log is put together when its step ends (head, marker, tail), and a follower that
    printed beyond the head goes on at the marker."""
    size = os.fstat(f.fileno()).st_size
    if size == 0:
        return 0
    marker = re.compile(rb"\[pipeline\] \d+ bytes dropped here: the log keeps the first \d+ "
                        rb"and the last \d+ bytes\n")
    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
        found = marker.search(view, 0, min(size, offset + 256))
    return min(offset, size if found is None else found.start())
