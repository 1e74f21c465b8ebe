"""Jobs that fire after other jobs: the job-to-job graph of ``schedule: {after: JOB}``.

An ``after:`` entry makes its job downstream of the job it names. Across a jobs directory that
graph must name jobs that are there and must have no cycle: in ``a`` after ``b`` after ``a``
each would fire the other for ever once anything starts one of them, so ``pipeline validate``
refuses it, at the ``after:`` of every job on the ring. The graph itself
is the standard library's ``graphlib``, as for a job's steps (``pipeline.dag``).

``edges`` lists the graph of loaded jobs and ``render`` draws it for ``pipeline graph --jobs``
(text, Mermaid or Graphviz dot, as ``pipeline graph JOB`` draws a job's steps).
"""

from __future__ import annotations

import graphlib
import itertools
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline import dag
from pipeline.errors import did_you_mean
from pipeline.model import Job, RunStatus, ScheduleKind
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


# -- the graph of loaded jobs, and its drawings ------------------------------------------------

@dataclass(frozen=True)
class Edge:
    """``downstream`` fires after each run of ``upstream`` that ends in one of ``status``."""

    upstream: str
    downstream: str
    status: tuple[RunStatus, ...]


def edges(jobs: Mapping[str, Job]) -> list[Edge]:
    """Every ``after:`` of ``jobs`` (loaded jobs, by name) as an edge, in the order of ``jobs``
    and of each job's schedule entries. Two entries of one job after the same upstream are one
    edge with the states of both. An upstream need not be among ``jobs``: its file may be
    invalid now (a name no file holds is a validation error of the downstream)."""
    found: dict[tuple[str, str], list[RunStatus]] = {}
    for name, job in jobs.items():
        for schedule in job.schedules:
            if schedule.kind is ScheduleKind.AFTER and schedule.after is not None:
                states = found.setdefault((schedule.after, name), [])
                states.extend(s for s in schedule.status if s not in states)
    return [Edge(upstream, downstream, tuple(states))
            for (upstream, downstream), states in found.items()]


def around(graph: Sequence[Edge], name: str) -> list[Edge]:
    """The edges among ``name``, the jobs it fires after and those that fire after it,
    directly or through others: what leads to ``name`` and what it leads to."""
    def reach(step: dict[str, list[str]]) -> set[str]:
        seen, todo = {name}, [name]
        while todo:
            for other in step.get(todo.pop(), []):
                if other not in seen:
                    seen.add(other)
                    todo.append(other)
        return seen

    ups: dict[str, list[str]] = {}
    downs: dict[str, list[str]] = {}
    for edge in graph:
        ups.setdefault(edge.downstream, []).append(edge.upstream)
        downs.setdefault(edge.upstream, []).append(edge.downstream)
    kept = reach(ups) | reach(downs)
    return [e for e in graph if e.upstream in kept and e.downstream in kept]


def render(graph: Sequence[Edge], fmt: str = "text", *, jobs: Collection[str] = (),
           loaded: Collection[str] | None = None) -> str:
    """The job graph as ``text``, ``mermaid`` or ``dot``: every job of an edge, and the jobs
    in ``jobs`` even without one; each edge labelled with the states that fire it. A job not
    in ``loaded`` (when given) is marked ``not loaded``. Jobs come upstream first (graphlib's
    generations), by name within one; raises ``graphlib.CycleError`` for a ring (which
    ``after_flaws`` keeps from loading) and ``ValueError`` for an unknown format."""
    names = sorted({*jobs, *(e.upstream for e in graph), *(e.downstream for e in graph)})
    ups: dict[str, list[Edge]] = {n: [] for n in names}
    for edge in graph:
        ups[edge.downstream].append(edge)
    generations = dag.layers({n: [e.upstream for e in ups[n]] for n in names})

    def label(name: str) -> str:
        return name if loaded is None or name in loaded else f"{name} (not loaded)"

    def states(edge: Edge) -> str:
        return " or ".join(map(str, edge.status))

    if fmt == "text":
        lines = [f"{len(names)} job{'s' if len(names) != 1 else ''}, {len(graph)} after: "
                 f"edge{'s' if len(graph) != 1 else ''}"]
        width = max((len(label(n)) for n in names), default=0)
        for number, generation in enumerate(generations, start=1):
            for name in generation:
                after = "; ".join(f"{e.upstream} ({states(e)})" for e in ups[name])
                line = f"  {number:>2}. {label(name):<{width}}"
                lines.append(f"{line}  <- {after}" if after else line.rstrip())
        return "\n".join(lines)
    order = [n for generation in generations for n in generation]
    if fmt == "mermaid":
        # Node ids are numbers: a job name may hold "-" or "." or be `end`, which Mermaid
        # reads as syntax.
        ids = {name: f"j{index}" for index, name in enumerate(order)}
        lines = ["flowchart LR"]
        lines += [f"    {ids[n]}[{dag.mermaid_label(label(n))}]" for n in order]
        lines += [f"    {ids[e.upstream]} -->|{states(e)}| {ids[e.downstream]}"
                  for n in order for e in ups[n]]
        return "\n".join(lines)
    if fmt == "dot":
        lines = ["digraph jobs {", "    rankdir=LR;", "    node [shape=box];"]
        for name in order:
            style = "" if loaded is None or name in loaded else ", style=dashed"
            lines.append(f"    {dag.dot_id(name)} [label={dag.dot_id(label(name))}{style}];")
        lines += [f"    {dag.dot_id(e.upstream)} -> {dag.dot_id(e.downstream)} "
                  f"[label={dag.dot_id(states(e))}];" for n in order for e in ups[n]]
        lines.append("}")
        return "\n".join(lines)
    raise ValueError(f"unknown graph format {fmt!r} (text, mermaid or dot)")
