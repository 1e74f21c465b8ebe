"""A run's steps drawn as a graph, as its page shows it: the DAG left to right in graphlib's
generations (each layer ordered so that fewer edges cross), every step coloured by its status,
a for_each step marked with its item count, and the hook lists in their own columns after it.

Pure functions of the run's stored document and its steps' statuses; positions are SVG user
units, so the page draws it without a script.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline import dag
from pipeline.http.pages import HOOK_LISTS
from pipeline.model import EMPTY, StepStatus
from pipeline.runrecords import RunRecord

NODE_W, NODE_H, GAP_X, GAP_Y, PAD, HEAD = 140, 34, 36, 12, 10, 20


@dataclass(frozen=True)
class Node:
    id: str
    label: str
    status: str
    x: float
    y: float
    title: str
    anchor: str | None


@dataclass(frozen=True)
class Edge:
    path: str
    dashed: bool = False


@dataclass(frozen=True)
class Caption:
    x: float
    text: str


@dataclass(frozen=True)
class Graph:
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    captions: tuple[Caption, ...]
    width: float
    height: float
    node_w: float = NODE_W
    node_h: float = NODE_H


def _needs_of(entries: Any) -> dict[str, list[str]]:
    needs: dict[str, list[str]] = {}
    for entry in entries or ():
        if isinstance(entry, Mapping) and isinstance(entry.get("id"), str):
            wanted = entry.get("needs") or []
            needs[entry["id"]] = [n for n in wanted if isinstance(n, str)] if isinstance(
                wanted, list | tuple) else []
    return needs


def _ordered_layers(needs: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """``dag.layers``, each layer ordered by where the steps it needs are drawn (fewer
    crossing edges), file order breaking ties."""
    try:
        found = dag.layers(needs)
    except Exception:  # a stored document with a cycle cannot come from a valid file
        found = [list(needs)]
    row: dict[str, float] = {}
    ordered: list[list[str]] = []
    for layer in found:
        def weight(sid: str) -> float:
            placed = [row[n] for n in needs.get(sid, ()) if n in row]
            return sum(placed) / len(placed) if placed else math.inf

        layer = sorted(layer, key=lambda sid: (weight(sid) if weight(sid) != math.inf
                                               else len(row) + layer.index(sid)))
        for index, sid in enumerate(layer):
            row[sid] = index
        ordered.append(layer)
    return ordered


def _curve(x1: float, y1: float, x2: float, y2: float) -> str:
    bend = max((x2 - x1) / 2, 12)
    return f"M{x1:g} {y1:g}C{x1 + bend:g} {y1:g} {x2 - bend:g} {y2:g} {x2:g} {y2:g}"


def graph(document: Mapping[str, Any], statuses: Mapping[str, str],
          counts: Mapping[str, int] = EMPTY) -> Graph | None:
    """The run's steps laid out left to right in graphlib's generations, each coloured by
    ``statuses`` (id -> status), a for_each step marked with its item count (``counts``);
    hook lists follow in their own columns, joined to the DAG's last steps by dashed edges.
    None for a document without steps."""
    lists = [("steps", _needs_of(document.get("steps")))]
    lists += [(words, _needs_of(document.get(key))) for key, words in HOOK_LISTS]
    lists = [(name, needs) for name, needs in lists if needs]
    if not lists:
        return None
    nodes: list[Node] = []
    edges: list[Edge] = []
    captions: list[Caption] = []
    where: dict[str, tuple[float, float]] = {}
    column = 0
    tallest = 0
    main_sinks: list[str] = []
    for name, needs in lists:
        layers = _ordered_layers(needs)
        first_column = column
        for layer in layers:
            x = PAD + column * (NODE_W + GAP_X)
            for index, sid in enumerate(layer):
                y = PAD + HEAD + index * (NODE_H + GAP_Y)
                where[sid] = (x, y)
                status = statuses.get(sid, "none")
                label = sid if len(sid) <= 17 else sid[:16] + "…"
                if sid in counts:
                    label = (sid if len(sid) <= 12 else sid[:11] + "…") + f" ×{counts[sid]}"
                nodes.append(Node(sid, label, status, x, y,
                                  f"{label}: {status.replace('_', ' ')}"
                                  + (f", {counts[sid]} items" if sid in counts else ""),
                                  f"log-{sid}" if status not in ("none", "pending") else None))
            tallest = max(tallest, len(layer))
            column += 1
        if name != "steps":
            captions.append(Caption(PAD + first_column * (NODE_W + GAP_X), name))
        for sid, wanted in needs.items():
            for need in wanted:
                if need in where and need in needs:
                    (x1, y1), (x2, y2) = where[need], where[sid]
                    edges.append(Edge(_curve(x1 + NODE_W, y1 + NODE_H / 2, x2, y2 + NODE_H / 2)))
        if name == "steps":
            needed = {n for wanted in needs.values() for n in wanted}
            main_sinks = [sid for sid in needs if sid not in needed]
        else:
            roots = [sid for sid, wanted in needs.items() if not any(n in needs for n in wanted)]
            for sink in main_sinks:
                for root in roots:
                    (x1, y1), (x2, y2) = where[sink], where[root]
                    edges.append(Edge(_curve(x1 + NODE_W, y1 + NODE_H / 2, x2, y2 + NODE_H / 2),
                                      dashed=True))
    width = PAD * 2 + column * (NODE_W + GAP_X) - GAP_X
    height = PAD * 2 + HEAD + tallest * (NODE_H + GAP_Y) - GAP_Y
    return Graph(tuple(nodes), tuple(edges), tuple(captions), width, height)


def step_statuses(run: RunRecord, pending: Sequence[str]) -> tuple[dict[str, str],
                                                                  dict[str, int]]:
    """Each step's status for the graph (items folded into their step), and how many items
    each for_each step has."""
    statuses = {sid: "pending" for sid in pending}
    counts: dict[str, int] = {}
    for step in run.steps:
        base, dot, _ = step.id.partition(".")
        if dot:
            counts[base] = counts.get(base, 0) + 1
            statuses.setdefault(base, str(StepStatus.RUNNING))
        else:
            statuses[step.id] = str(step.status)
    return statuses, counts
