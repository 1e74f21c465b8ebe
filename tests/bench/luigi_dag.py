"""Peer: the same DAG of `true` steps run by Luigi (local scheduler, 8 workers), whole process.

    .bench-venv/bin/python tests/bench/luigi_dag.py GRAPH.json OUT_DIR

GRAPH.json maps each step to the steps it needs. Each step is a Luigi task whose output is a
marker file in OUT_DIR (Luigi's own notion of "complete"); OUT_DIR must start empty. Runs in
the peers' virtual environment, never in the project's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import luigi

GRAPH: dict[str, list[str]] = json.loads(Path(sys.argv[1]).read_text())
OUT = Path(sys.argv[2])


class Step(luigi.Task):
    step = luigi.Parameter()

    def requires(self) -> list[Step]:
        return [Step(step=name) for name in GRAPH[str(self.step)]]

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(str(OUT / str(self.step)))

    def run(self) -> None:
        subprocess.run(["true"], stdin=subprocess.DEVNULL, check=True)
        Path(self.output().path).touch()


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    needed = {name for needs in GRAPH.values() for name in needs}
    sinks = [Step(step=name) for name in GRAPH if name not in needed]
    ok = luigi.build(sinks, local_scheduler=True, workers=8, log_level="WARNING")
    sys.exit(0 if ok else 1)
