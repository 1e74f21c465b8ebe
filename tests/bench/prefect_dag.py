"""Peer: the same DAG of `true` steps run by Prefect 3, whole process.

    .bench-venv/bin/python tests/bench/prefect_dag.py GRAPH.json

GRAPH.json maps each step to the steps it needs. Each step is a task submitted to a thread
pool of 8 workers with ``wait_for`` its needs. With PREFECT_API_URL set it reports to that
server; without, Prefect starts its own temporary one. Runs in the peers' virtual environment.
"""

from __future__ import annotations

import graphlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.task_runners import ThreadPoolTaskRunner

GRAPH: dict[str, list[str]] = json.loads(Path(sys.argv[1]).read_text())


@task
def step(name: str) -> None:
    subprocess.run(["true"], stdin=subprocess.DEVNULL, check=True)


@flow(task_runner=ThreadPoolTaskRunner(max_workers=8))  # type: ignore[arg-type]
def dag() -> None:
    futures: dict[str, Any] = {}
    for name in graphlib.TopologicalSorter(GRAPH).static_order():
        futures[name] = step.with_options(task_run_name=name).submit(
            name, wait_for=[futures[n] for n in GRAPH[name]])
    for future in futures.values():
        future.result()


if __name__ == "__main__":
    dag()
