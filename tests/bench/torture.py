"""The large runs of the torture harnesses (issue 6), at the sizes CI cannot afford.

    crash points, 200 random kill -9s, disk full, 2 GiB of output, 1,000 simultaneous fires:
        PIPELINE_FAULTS_FULL=1 PIPELINE_FAULTS_KILLS=200 pytest tests/test_faults.py
    20,000 random and mutated job files through the loader:
        PIPELINE_FUZZ_EXAMPLES=10000 pytest tests/test_spec.py -k "random or mutated"

Each is one row: how long it took, and whether every invariant held.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.bench.harness import ROOT, Context, Row, Stats, say

RUNS = (
    ("fault harnesses, full size (200 kill -9s, 2 GiB output, 1,000 fires)",
     {"PIPELINE_FAULTS_FULL": "1", "PIPELINE_FAULTS_KILLS": "200"},
     ["tests/test_faults.py"]),
    ("loader fuzzing, 20,000 random and mutated job files",
     {"PIPELINE_FUZZ_EXAMPLES": "10000"},
     ["tests/test_spec.py", "-k", "random_text or mutated_jobs"]),
)


def run(ctx: Context) -> list[Row]:
    rows = []
    for title, env, args in RUNS:
        say(f"bench: {title}")
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   "-o", "timeout=3600", *args]
        ctx.command(" ".join(f"{k}={v}" for k, v in env.items()) + " pytest "
                    + " ".join(args))
        started = time.monotonic()
        log = ctx.log(title.split(",")[0].replace(" ", "-"))
        with log.open("wb") as out:
            done = subprocess.run(command, cwd=ROOT, env={**os.environ, **env}, stdout=out,
                                  stderr=subprocess.STDOUT)
        took = time.monotonic() - started
        lines = log.read_text(errors="replace").strip().splitlines()
        # pytest -ra names each failure on a FAILED line: which invariant broke, not just how
        # many (the log goes with the scratch directory).
        failed = [line.removeprefix("FAILED ") for line in lines if line.startswith("FAILED ")]
        ctx.details.append(f"**{title}** — {lines[-1] if lines else 'no output'}"
                           + (f"; failed: {'; '.join(failed)}" if failed else ""))
        rows.append(Row(title, "s", Stats((took,)), target="every invariant holds",
                        met=done.returncode == 0,
                        note="" if done.returncode == 0 else f"pytest exit {done.returncode}"))
    return rows
