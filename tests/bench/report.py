"""BENCHMARKS.md: the table, what it leaves out, the machine, and the exact commands."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tests.bench.harness import Context, Row, markdown_table


def render(ctx: Context, rows: Sequence[Row], machine: Mapping[str, str],
           command_line: str, took: float, load: tuple[str, str],
           notes: Sequence[str]) -> str:
    judged = [r for r in rows if r.met is not None]
    missed = [r for r in judged if not r.met]
    summary = (f"{len(judged) - len(missed)} of {len(judged)} targets met"
               + (": missed — " + "; ".join(_missed(r) for r in missed) if missed else "."))
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
        markdown_table(rows),
        "",
        "A ratio is the row's median over its baseline's median. For the peers (Luigi, "
        "Prefect) the baseline is `pipeline run`, so the ratio says how many times slower "
        "the peer is. Lateness is measured twice for pipeline: by the run's start as the "
        "daemon records it (`runs.started_at`, the issue's definition), and by its step's "
        "start (`steps.started_at`), when the fire's work began, which is what the bare loop "
        "and APScheduler record for themselves. Its samples are the p99 of each slice of the "
        "firing window.",
        "",
        "## Details",
        "",
        *[f"- {line}" for line in ctx.details],
        *[f"- {note}" for note in notes],
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
