"""The step graph: checks on ``needs`` and drawings for ``pipeline graph``.

The graph itself is the standard library's ``graphlib.TopologicalSorter``; this module only
says what is wrong with a set of ``needs`` (unknown ids, cycles) and draws a job's steps as
text, Mermaid or Graphviz dot. The main DAG and each hook list (``on_success``, ``on_failure``,
``finally``) are separate graphs: a hook step may only need steps of its own list.
"""

from __future__ import annotations

import graphlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pipeline.errors import did_you_mean
from pipeline.model import Job, Step

HOOK_LISTS = ("on_success", "on_failure", "finally")


@dataclass(frozen=True)
class Flaw:
    """Something wrong with the ``needs`` of one step: ``need`` is the offending entry."""

    step: str
    need: str
    message: str


def check(needs: Mapping[str, Sequence[str]], *,
          elsewhere: Mapping[str, str] | None = None) -> list[Flaw]:
    """Unknown ids and cycles in one graph, given as step id -> the ids it needs.

    ``elsewhere`` maps ids of steps in the job's other lists to that list's name, so that a
    need of one of them gets a message saying why it cannot be needed from here. Every cycle
    is reported once (at the step whose need closes it), each naming the steps in order.
    """
    elsewhere = elsewhere or {}
    flaws: list[Flaw] = []
    graph: dict[str, list[str]] = {}
    for sid, wanted in needs.items():
        graph[sid] = []
        for need in wanted:
            if need in needs:
                graph[sid].append(need)
            elif need in elsewhere:
                flaws.append(Flaw(sid, need, f"needs {need!r}, which is a step of "
                                  f"{elsewhere[need]}: a step can only need steps of its own "
                                  "list"))
            else:
                hint = did_you_mean(need, needs)
                flaws.append(Flaw(sid, need, f"needs {need!r}, which is not a step of this "
                                  f"job{hint}"))
    # The usual file lists every step after those it needs: then there can be no cycle.
    position = {sid: index for index, sid in enumerate(graph)}
    if all(position[n] < position[sid] for sid, wanted in graph.items() for n in wanted):
        return flaws
    # graphlib reports one cycle at a time: cut the edge that closes it and look again, so
    # that independent cycles are all reported (each pass removes an edge, so this ends).
    while True:
        try:
            graphlib.TopologicalSorter(graph).prepare()
        except graphlib.CycleError as exc:
            cycle: list[str] = list(exc.args[1])
            # In graphlib's list each node is needed by the next one: reverse it to read as
            # "a needs b needs c needs a".
            cycle.reverse()
            step, need = cycle[0], cycle[1]
            if step == need:
                message = f"needs itself ({step!r})"
            else:
                message = "needs form a cycle: " + " -> ".join(cycle)
            flaws.append(Flaw(step, need, message))
            graph[step] = [n for n in graph[step] if n != need]
        else:
            return flaws


def order(steps: Sequence[Step]) -> graphlib.TopologicalSorter[str]:
    """A prepared sorter over ``steps``; needs outside ``steps`` are ignored (checked earlier)."""
    ids = {s.id for s in steps}
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter(
        {s.id: [n for n in s.needs if n in ids] for s in steps})
    sorter.prepare()
    return sorter


def levels(steps: Sequence[Step]) -> list[list[Step]]:
    """``steps`` in generations: every step comes after all it needs, in file order within one."""
    by_id = {s.id: s for s in steps}
    return [[by_id[sid] for sid in layer]
            for layer in layers({s.id: s.needs for s in steps})]


def layers(needs: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Step ids (``needs``: id -> the ids it needs, in file order) in generations, as
    graphlib hands them out: each after every step it needs, in file order within one. Needs
    of ids not in ``needs`` are ignored; a cycle raises ``graphlib.CycleError``."""
    position = {sid: i for i, sid in enumerate(needs)}
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter(
        {sid: [n for n in wanted if n in position] for sid, wanted in needs.items()})
    sorter.prepare()
    found: list[list[str]] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=position.__getitem__)
        found.append(ready)
        sorter.done(*ready)
    return found


def render(job: Job, fmt: str = "text") -> str:
    """The job's steps as ``text``, ``mermaid`` or ``dot``; hook lists come after the DAG."""
    if fmt == "text":
        return _text(job)
    if fmt == "mermaid":
        return _mermaid(job)
    if fmt == "dot":
        return _dot(job)
    raise ValueError(f"unknown graph format {fmt!r} (text, mermaid or dot)")


def _lists(job: Job) -> list[tuple[str, tuple[Step, ...]]]:
    found = [("steps", job.steps), ("on_success", job.on_success),
             ("on_failure", job.on_failure), ("finally", job.finally_)]
    return [(name, steps) for name, steps in found if steps]


def _what(step: Step) -> str:
    what = f"uses {step.uses}" if step.uses else str(step.kind)
    if step.for_each is not None:
        what += ", for each item"
        if step.max_parallel:
            what += f" (max {step.max_parallel} at once)"
    if step.if_ != "success()":
        what += f", if {step.if_}"
    if step.continue_on_error:
        what += ", continue on error"
    return what


def _text(job: Job) -> str:
    lines = [f"job {job.name}"]
    for name, steps in _lists(job):
        lines.append(f"{name}:")
        width = max(len(s.id) for s in steps)
        for number, level in enumerate(levels(steps), start=1):
            for step in level:
                after = f"  <- {', '.join(step.needs)}" if step.needs else ""
                lines.append(f"  {number:>2}. {step.id:<{width}}  ({_what(step)}){after}")
    return "\n".join(lines)


def _sinks(steps: Sequence[Step]) -> list[str]:
    needed = {n for s in steps for n in s.needs}
    return [s.id for s in steps if s.id not in needed]


def _roots(steps: Sequence[Step]) -> list[str]:
    ids = {s.id for s in steps}
    return [s.id for s in steps if not any(n in ids for n in s.needs)]


def mermaid_label(text: str) -> str:
    """``text`` as a quoted Mermaid label (also the job graph's, ``pipeline.jobgraph``)."""
    return '"' + text.replace('"', "#quot;") + '"'


def _mermaid(job: Job) -> str:
    # Node names get a prefix: a step may be called `end`, which Mermaid reserves.
    lines = ["flowchart TD"]
    for name, steps in _lists(job):
        indent = "    "
        if name != "steps":
            lines.append(f"    subgraph {name}[{mermaid_label(name)}]")
            indent = "        "
        for step in steps:
            label = step.title if step.title == step.id else f"{step.title} ({step.id})"
            lines.append(f"{indent}s_{step.id}[{mermaid_label(label)}]")
        for step in steps:
            for need in step.needs:
                lines.append(f"{indent}s_{need} --> s_{step.id}")
        if name != "steps":
            lines.append("    end")
    main = _sinks(job.steps)
    for name, steps in _lists(job)[1:]:
        for sink in main:
            for root in _roots(steps):
                lines.append(f"    s_{sink} -. {name} .-> s_{root}")
    return "\n".join(lines)


def dot_id(text: str) -> str:
    """``text`` as a quoted Graphviz id or label (also the job graph's)."""
    return json.dumps(text)  # a JSON string is a valid dot quoted id


def _dot(job: Job) -> str:
    lines = [f"digraph {dot_id(job.name)} {{", "    rankdir=LR;", "    node [shape=box];"]
    for name, steps in _lists(job):
        indent = "    "
        if name != "steps":
            lines.append(f"    subgraph {dot_id('cluster_' + name)} {{")
            lines.append(f"        label={dot_id(name)}; style=dashed;")
            indent = "        "
        for step in steps:
            lines.append(f"{indent}{dot_id(step.id)} [label={dot_id(step.title)}];")
        for step in steps:
            for need in step.needs:
                lines.append(f"{indent}{dot_id(need)} -> {dot_id(step.id)};")
        if name != "steps":
            lines.append("    }")
    main = _sinks(job.steps)
    for name, steps in _lists(job)[1:]:
        for sink in main:
            for root in _roots(steps):
                lines.append(f"    {dot_id(sink)} -> {dot_id(root)} "
                             f"[style=dotted, label={dot_id(name)}];")
    lines.append("}")
    return "\n".join(lines)
