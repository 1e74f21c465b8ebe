"""Peer: the same DAG of `true` steps as a Dagster job, for ``dagster job execute``.

    PIPELINE_BENCH_GRAPH=GRAPH.json dagster job execute -f tests/bench/dagster_dag.py -j dag

GRAPH.json maps each step to the steps it needs. Each step is an op that runs ``true`` with
``subprocess.run`` and waits for its needs through ``Nothing`` inputs; the job uses the
in-process executor (steps one at a time, in the same process), with the run's records in
DAGSTER_HOME (SQLite). Runs in Dagster's virtual environment, never in the project's.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from dagster import (
    DependencyDefinition,
    GraphDefinition,
    In,
    Nothing,
    OpDefinition,
    in_process_executor,
    op,
)

GRAPH: dict[str, list[str]] = json.loads(Path(os.environ["PIPELINE_BENCH_GRAPH"]).read_text())


def step(name: str, needs: list[str]) -> OpDefinition:
    @op(name=name, ins={need: In(Nothing) for need in needs})
    def run_true() -> None:
        subprocess.run(["true"], stdin=subprocess.DEVNULL, check=True)

    return run_true


dag = GraphDefinition(
    name="dag",
    node_defs=[step(name, needs) for name, needs in GRAPH.items()],
    dependencies={name: {need: DependencyDefinition(need) for need in needs}
                  for name, needs in GRAPH.items()},
).to_job(executor_def=in_process_executor)
