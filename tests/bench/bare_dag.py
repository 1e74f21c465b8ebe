"""The baseline for step overhead: a bare trio DAG runner, run as a whole process.

    python tests/bench/bare_dag.py JOB.yaml [--limit N]

Reads the same job file as ``pipeline run`` (its ``steps``: ``id``, ``needs``, ``exec``), hands
out ready steps with ``graphlib``, and runs each ``exec`` with ``trio.run_process`` in its own
session, stdin from /dev/null, as many at once as the DAG allows (or ``--limit``). No
validation, no state, no logs: what is left is the floor any trio runner stands on.
"""

from __future__ import annotations

import argparse
import graphlib
import math
import subprocess
import sys
from pathlib import Path

import trio
import yaml


async def run_dag(steps: dict[str, list[str]], needs: dict[str, list[str]], limit: float) -> int:
    order = graphlib.TopologicalSorter(needs)
    order.prepare()
    finished, done = trio.open_memory_channel[str](math.inf)
    limiter = trio.CapacityLimiter(limit)
    failures = 0

    async def step(name: str) -> None:
        nonlocal failures
        async with limiter:
            result = await trio.run_process(steps[name], stdin=subprocess.DEVNULL, check=False,
                                            start_new_session=True)
        failures += result.returncode != 0
        finished.send_nowait(name)

    async with trio.open_nursery() as nursery:
        while order.is_active():
            for name in order.get_ready():
                nursery.start_soon(step, name)
            order.done(await done.receive())
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", type=Path)
    parser.add_argument("--limit", type=int, default=0, help="most steps at once (0: no limit)")
    args = parser.parse_args()
    document = yaml.load(args.job.read_bytes(), Loader=yaml.CSafeLoader)
    steps = {s["id"]: [str(a) for a in s["exec"]] for s in document["steps"]}
    needs = {s["id"]: list(s.get("needs", ())) for s in document["steps"]}
    failures = trio.run(run_dag, steps, needs, args.limit or math.inf)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
