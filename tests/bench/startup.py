"""CLI start-up (issue 6): ``pipeline --help`` against ``python -c 'import click'``, both whole
processes on the interpreter of .venv (and a bare ``python -c pass`` for reference)."""

from __future__ import annotations

from tests.bench.harness import PIPELINE, PYTHON, Context, Row, Tool, measure, say, seconds

TARGET = 1.5  # × python -c 'import click'


def run(ctx: Context) -> list[Row]:
    say("bench: CLI start-up")
    timings = measure(ctx, [
        Tool("click", ctx.reps(25, 8), lambda rep: [PYTHON, "-c", "import click"]),
        Tool("help", ctx.reps(25, 8), lambda rep: [PIPELINE, "--help"]),
        Tool("pass", ctx.reps(25, 8), lambda rep: [PYTHON, "-c", "pass"]),
    ], what="startup")
    click = seconds(timings["click"])
    ours = seconds(timings["help"])
    return [
        Row("CLI start-up: python -c 'import click'", "s", click, target="baseline"),
        Row("CLI start-up: pipeline --help", "s", ours, "import click", click,
            f"≤ {TARGET:g}× import click", ours.median <= TARGET * click.median),
        Row("CLI start-up: python -c pass", "s", seconds(timings["pass"]), "import click",
            click, "(reference)"),
    ]
