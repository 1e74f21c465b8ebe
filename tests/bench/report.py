"""BENCHMARKS.md: a table per benchmark, what they leave out, how to run each, the profile,
the machine, and the exact commands.

How to run them (``README.md`` beside this file) and the profile's findings (``profile.md``,
written by hand from a run of ``python -m tests.bench.profile``) are copied in as they are: a
full ``bin/bench`` rewrites the figures but keeps them. ``bin/bench --only GROUP --update``
rewrites one group's section alone (``section`` and ``splice``), saying when and how it was
measured, and leaves the rest of the report as it was.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from tests.bench.harness import BENCH, Context, Row, markdown_table

PROFILE = BENCH / "profile.md"
RUNNING = BENCH / "README.md"  # how to run each benchmark; its first line is its own title


def render(ctx: Context, sections: Sequence[tuple[str, Sequence[Row]]],
           machine: Mapping[str, str], command_line: str, took: float,
           load: tuple[str, str], notes: Sequence[str]) -> str:
    rows = [row for _, found in sections for row in found]
    judged = [r for r in rows if r.met is not None]
    missed = [r for r in judged if not r.met]
    summary = (f"{len(judged) - len(missed)} of {len(judged)} targets met"
               + (": missed — " + "; ".join(_missed(r) for r in missed) if missed else "."))
    tables: list[str] = []
    for title, found in sections:
        tables += [f"### {title}", "", markdown_table(found), ""]
    profile = PROFILE.read_text().strip() if PROFILE.exists() else "Not profiled yet."
    running = RUNNING.read_text().split("\n", 1)[1].strip()
    lines = [
        "# Benchmarks",
        "",
        f"Written by `{command_line}` on {machine['date']} ({took / 60:.1f} min). Every "
        "figure is a median of repeated runs, with the range of those runs; every ratio "
        "divides by a baseline measured in the same run, on the same machine. Sub-second "
        "timings on a shared 2-core machine move by ±15–40 % between runs: compare the "
        "ratios, and re-run `bin/bench` before relying on a figure.",
        "",
        f"**{summary}**",
        "",
        *tables,
        "A ratio is the row's median over its baseline's median. For the DAG peers (Luigi, "
        "Prefect, Dagster, Airflow) the baseline is `pipeline run`, so the ratio says how many "
        "times slower the peer is. With real steps, lateness is what the step itself saw: its "
        "own clock (`date +%s.%N`) minus the instant it was due, the same command for every "
        "contender; the daemon's record is the run's start as pipeline stored it "
        "(`runs.started_at`). With steps that start no process, lateness is measured twice "
        "for pipeline: by the run's start as the daemon records it, and by its step's start "
        "(`steps.started_at`), when the fire's work began, which is what the bare loop and "
        "APScheduler record for themselves. Steady-load samples are the p50 or p99 of each "
        "slice of the firing window; burst samples are one per repetition.",
        "",
        "## Details",
        "",
        *[f"- {line}" for line in ctx.details],
        *[f"- {note}" for note in notes],
        "",
        "## Running them",
        "",
        running,
        "",
        "## Profile",
        "",
        profile,
        "",
        "## Machine",
        "",
        "| | |",
        "| --- | --- |",
        *[f"| {key} | {value} |" for key, value in machine.items()],
        f"| load average (1, 5, 15 min) | {load[0]} at the start, {load[1]} at the end |",
        "",
        "## Commands",
        "",
        "Run from the checkout; `$BENCH_TMP` is the scratch directory the harness makes and "
        "removes. Each timed command ran as a whole process, stdout to /dev/null.",
        "",
        "```sh",
        command_line,
        *ctx.commands,
        "```",
        "",
    ]
    return "\n".join(lines)


def _missed(row: Row) -> str:
    ratio = row.ratio
    by = f"{row.stats.median:.3g} {row.unit}" + (f", {ratio:.2f}×" if ratio else "")
    note = f"; {row.note}" if row.note else ""
    return f"{row.benchmark} ({by}; target {row.target}{note})"


# -- one group's section, measured on its own ---------------------------------------------------

def section(group: str, title: str, rows: Sequence[Row], *, machine: Mapping[str, str],
            command_line: str, took: float, load: tuple[str, str], details: Sequence[str],
            commands: Sequence[str]) -> str:
    """The section of one group run on its own: its heading, when and how it was measured,
    its details and commands, and its table, between markers that ``splice`` finds."""
    judged = [r for r in rows if r.met is not None]
    met = sum(1 for r in judged if r.met)
    targets = f"{met} of {len(judged)} targets met" if judged else "no target of its own"
    lines = [
        f"<!-- bench:{group} (written by bin/bench --update; the next such run replaces it) -->",
        f"### {title}",
        "",
        f"Measured on its own by `{command_line}` on {machine['date']} ({took / 60:.1f} min), "
        f"at {machine['pipeline']}, apart from this report's full run (whose count of targets "
        f"is the one above); {targets}. Load average {load[0]} at the start, {load[1]} at the "
        "end.",
        "",
        *[f"- {line}" for line in details],
        *([""] if details else []),
        "```sh",
        *commands,
        "```",
        "",
        markdown_table(rows),
        f"<!-- /bench:{group} -->",
    ]
    return "\n".join(lines)


def splice(document: str, group: str, title: str, text: str, after: Sequence[str]) -> str:
    """``document`` with ``text`` in place of ``group``'s section: the one a previous
    ``section`` wrote (between its markers), or the heading ``### title`` and its table as a
    full run writes them; else inserted before the first heading of ``after`` (the titles of
    the sections that follow it) that is there, or before the text that follows the tables.
    """
    marked = re.compile(rf"<!-- bench:{re.escape(group)} .*?<!-- /bench:{re.escape(group)} -->",
                        re.DOTALL)
    if marked.search(document):
        return marked.sub(lambda _: text, document, count=1)
    lines = document.split("\n")
    heading = f"### {title}"
    if heading in lines:
        start = lines.index(heading)
        end = start + 1
        while end < len(lines) and not lines[end].startswith("|"):
            end += 1  # the words before its table
        while end < len(lines) and lines[end].startswith("|"):
            end += 1
        return "\n".join([*lines[:start], text, *lines[end:]])
    for other in after:
        if f"### {other}" in lines:
            at = lines.index(f"### {other}")
            return "\n".join([*lines[:at], text, "", *lines[at:]])
    for at, line in enumerate(lines):
        if line.startswith(("A ratio is", "## Details")):
            return "\n".join([*lines[:at], text, "", *lines[at:]])
    return document.rstrip("\n") + "\n\n" + text + "\n"
