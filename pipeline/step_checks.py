"""The checks of a job's step lists that their schema cannot express (``pipeline.checks`` runs
them, with its reporting).

Across the lists (``steps``, and the hooks ``STEP_LISTS`` names): a step id is unique in the
job, and a step's ``needs`` name steps of its own list with no cycle (``dag.check``; a step of
another list is named as such). In each step: its templates (``run``, ``exec``, ``with``,
``cwd``, ``env``) and expressions (``if``, ``for_each``) read, and look up only what is there
where they are evaluated (``pipeline.lookups``: which steps, ``item``, which ``env``); its
``shell`` splits into words; its durations, retries and pool as the job's are checked.

Every step of every file passes here, so a step's checks look only at the keys it has.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any

from pipeline import dag
from pipeline.lookups import NO_ITEM, STEP_LISTS, Scope
from pipeline.yamlsafe import JsonPath

if TYPE_CHECKING:
    from pipeline.checks import Checks

_STEP_TEMPLATES = frozenset({"run", "exec", "with", "cwd"})


def check_steps(checks: Checks, data: dict[str, Any]) -> None:
    """Report what is wrong with the step lists of the job ``data``, and with each step."""
    first: dict[str, tuple[str, int]] = {}  # step id -> its list and index there
    graphs: list[dict[str, list[str]]] = []
    for list_name in STEP_LISTS:
        items = data.get(list_name)
        if items.__class__ is not list:
            continue
        needs: dict[str, list[str]] = {}
        for index, step in enumerate(items):
            if step.__class__ is not dict:
                continue
            path = (list_name, index)
            _check_step(checks, step, path)
            sid = step.get("id")
            if sid.__class__ is not str:
                continue
            if sid in first:
                where, before = first[sid]
                place = "" if where == list_name else f" in {where}"
                checks.report((*path, "id"), f"duplicate step id {sid!r} (first at line "
                              f"{checks.doc.where((where, before, 'id'))[0]}{place}); step "
                              "ids are unique in a job")
                continue
            first[sid] = (list_name, index)
            wanted = step.get("needs", ())
            if wanted.__class__ is str:
                wanted = [wanted]
            elif wanted.__class__ is not list:
                wanted = []
            needs[sid] = [n for n in wanted if n.__class__ is str]
        graphs.append(needs)
    elsewhere = {sid: where for sid, (where, _) in first.items()}
    for needs in graphs:
        for flaw in dag.check(needs, elsewhere=elsewhere):
            where, index = first[flaw.step]
            written = data[where][index]["needs"]
            checks.report((where, index, "needs", written.index(flaw.need))
                          if isinstance(written, list) else (where, index, "needs"),
                          f"step {flaw.step!r} {flaw.message}")


def _check_step(checks: Checks, step: dict[str, Any], path: JsonPath) -> None:
    sid = step.get("id")
    list_name = path[0]
    reader = (str(list_name), sid) if (
        isinstance(sid, str) and checks.names.home.get(sid) == list_name) else None
    item = None if "for_each" in step else NO_ITEM
    job_env = checks.names.env
    own = step.get("env", {})
    env = None if job_env is None or not isinstance(own, dict) else job_env | frozenset(own)
    commands = Scope(reader, item=item, env=env,
                      env_words="only the job's and this step's env:")
    for key in step.keys() & _STEP_TEMPLATES:
        checks.template(step[key], (*path, key), commands)
    if "env" in step:
        checks.env(step["env"], (*path, "env"), Scope(
            reader, item=item, env=job_env, env_words="only the job's env:"))
    if "if" in step:
        checks.expression(step["if"], (*path, "if"), Scope(
            reader, item="item is not defined in if: (it is evaluated once for the whole "
            "step, before its items)", env=job_env, env_words="only the job's env:"))
    if isinstance(step.get("for_each"), str):
        checks.expression(step["for_each"], (*path, "for_each"), Scope(
            reader, item="item is not defined in for_each itself (it gives the items)",
            env=job_env, env_words="only the job's env:"))
    shell = step.get("shell")
    if isinstance(shell, str):
        try:
            if not shlex.split(shell):
                checks.report((*path, "shell"), "names no command")
        except ValueError as exc:
            checks.report((*path, "shell"), f"cannot be split into words: {exc}")
    if "timeout" in step:
        checks.duration(step["timeout"], (*path, "timeout"), positive=True)
    if "grace" in step:
        checks.duration(step["grace"], (*path, "grace"))
    if "retries" in step:
        checks.retries(step["retries"], (*path, "retries"))
    if "pool" in step:
        checks.pool(step["pool"], (*path, "pool"))
