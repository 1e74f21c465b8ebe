"""Validation (issues 2 and 14): 1,000 generated job files checked by a whole ``pipeline
validate`` process, against the parse floor (a whole process that only parses the same files
with libyaml, ``parse_floor.py``); and the same load in-process (``jobset.load_jobs``), which
leaves start-up out."""

from __future__ import annotations

import time
from pathlib import Path

from pipeline import jobset
from tests.bench.gen_jobs import write_jobs
from tests.bench.harness import (
    BENCH,
    PIPELINE,
    PYTHON,
    Context,
    Row,
    Stats,
    Tool,
    measure,
    say,
    seconds,
)

FILES = 1000
TARGET = 0.5  # seconds for 1,000 valid files, whole process
FLOOR_FACTOR = 1.5  # ... and within this × the parse floor


def run(ctx: Context) -> list[Row]:
    many = ctx.tmp / "validate-1000"
    one = ctx.tmp / "validate-1"
    write_jobs(many, FILES)
    write_jobs(one, 1)
    say(f"bench: validation of {FILES:,} job files")
    timings = measure(ctx, [
        Tool("floor", ctx.reps(10, 5), lambda rep: [PYTHON, BENCH / "parse_floor.py", many]),
        Tool("many", ctx.reps(10, 5), lambda rep: [PIPELINE, "validate", many]),
        Tool("one", ctx.reps(10, 5), lambda rep: [PIPELINE, "validate", one]),
    ], what="validate")
    whole = seconds(timings["many"])
    floor = seconds(timings["floor"])
    in_process = load_in_process(ctx, many)
    ctx.command(f"python: pipeline.jobset.load_jobs([Path('{ctx.show([many])}')])")
    per_file = (in_process.median / FILES) * 1000
    ctx.details.append(
        f"**Validation** — in-process `jobset.load_jobs` of {FILES:,} files: "
        f"{in_process.median:.3f} s median ({per_file:.2f} ms a file); the rest of the whole "
        f"process is start-up (`pipeline validate` of one file: "
        f"{seconds(timings['one']).median:.3f} s).")
    return [
        Row(f"validate {FILES:,} job files: libyaml parse floor (whole process)", "s", floor,
            target="baseline"),
        Row(f"validate {FILES:,} job files: pipeline validate", "s", whole, "parse floor",
            floor, f"≤ {FLOOR_FACTOR:g}× parse floor", whole.median <= FLOOR_FACTOR * floor.median),
        Row(f"validate {FILES:,} job files: pipeline validate, absolute", "s", whole,
            target=f"≤ {TARGET:g} s", met=whole.median <= TARGET),
        Row(f"validate {FILES:,} job files: jobset.load_jobs in-process", "s", in_process,
            target="(reference)"),
        Row("validate 1 job file: pipeline validate", "s", seconds(timings["one"]),
            target="(reference)"),
    ]


def load_in_process(ctx: Context, path: Path) -> Stats:
    jobset.load_jobs([path])  # the first call builds the validators; a daemon does that once
    samples = []
    for _ in range(ctx.reps(10, 5)):
        start = time.perf_counter()
        loaded = jobset.load_jobs([path])
        samples.append(time.perf_counter() - start)
        if loaded.problems or len(loaded.jobs) != FILES:
            raise AssertionError(f"generated jobs did not load: {dict(loaded.problems)}")
    return Stats(tuple(samples))
