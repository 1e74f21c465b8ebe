"""Jobs that fire after other jobs: the job-to-job graph of ``schedule: {after: JOB}``.

An ``after:`` entry makes its job downstream of the job it names. Across a jobs directory that
graph must name jobs that are there and must have no cycle: in ``a`` after ``b`` after ``a``
each would fire the other for ever once anything starts one of them, so ``pipeline validate``
refuses it, at the ``after:`` of every job on the ring. The graph itself
is the standard library's ``graphlib``, as for a job's steps (``pipeline.dag``).
"""

from __future__ import annotations

import graphlib
import itertools
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.errors import did_you_mean
from pipeline.model import Job
from pipeline.yamlsafe import JsonPath


@dataclass(frozen=True)
class AfterFlaw:
    """Something wrong with one ``after:`` entry of ``job``, written at ``path``."""

    job: str
    path: JsonPath
    message: str


def upstreams(job: Job) -> list[tuple[JsonPath, str]]:
    """The jobs ``job`` fires after, each with the path of its ``after:`` in the job file."""
    schedule: Any = job.document.get("schedule")
    if isinstance(schedule, Mapping):
        entries: list[tuple[JsonPath, Any]] = [(("schedule",), schedule)]
    elif isinstance(schedule, list | tuple):
        entries = [(("schedule", index), entry) for index, entry in enumerate(schedule)]
    else:
        entries = []
    return [((*where, "after"), entry["after"]) for where, entry in entries
            if isinstance(entry, Mapping) and isinstance(entry.get("after"), str)]


def after_flaws(jobs: Mapping[str, Job], known: Collection[str], *,
                complete: bool = True) -> list[AfterFlaw]:
    """What is wrong with the ``after:`` entries of ``jobs`` (the valid jobs, by name).

    ``known`` holds every job name there is, valid or not. An entry must name one of them
    (judged only when ``complete``: ``known`` is a whole jobs directory), not its own job, and
    no ring of jobs may each fire after the next: every job on a ring gets a flaw. Each ring
    is reported once, naming its jobs in order.
    """
    flaws: dict[tuple[str, JsonPath], AfterFlaw] = {}
    graph: dict[str, dict[str, JsonPath]] = {}  # job -> its upstreams among jobs -> where
    for name, job in jobs.items():
        graph[name] = {}
        for where, upstream in upstreams(job):
            if upstream == name:
                flaws[name, where] = AfterFlaw(name, where, f"a job cannot fire after itself "
                                               f"({name!r})")
            elif upstream in jobs:
                graph[name].setdefault(upstream, where)
            elif complete and upstream not in known:
                hint = did_you_mean(upstream, known)
                flaws[name, where] = AfterFlaw(name, where, f"there is no job {upstream!r} in "
                                               f"the jobs directory{hint}")
    # graphlib reports one ring at a time: cut the edge that closes it and look again, so
    # that every ring is found (each pass removes an edge, so this ends).
    while True:
        try:
            graphlib.TopologicalSorter({n: list(ups) for n, ups in graph.items()}).prepare()
        except graphlib.CycleError as exc:
            ring: list[str] = list(exc.args[1])
            # graphlib lists each job before one that fires after it: reversed, the list
            # reads "a after b after a".
            ring.reverse()
            words = " after ".join(ring)
            for downstream, upstream in itertools.pairwise(ring):
                where = graph[downstream][upstream]
                flaws.setdefault((downstream, where), AfterFlaw(
                    downstream, where, f"jobs would fire each other in a ring: {words}"))
            del graph[ring[0]][ring[1]]
        else:
            return list(flaws.values())
