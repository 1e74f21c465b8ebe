"""Peer: the same DAGs of `true` steps as Airflow 2.10 DAGs, for ``airflow dags test``.

    AIRFLOW__CORE__DAGS_FOLDER=DIR airflow dags test fanout-100

The harness copies this file into a DAGs folder of its own, beside the graphs as JSON
(``fanout-100.json`` maps each step to the steps it needs); each graph becomes a DAG of that
name whose tasks are ``BashOperator(bash_command="true")``. ``airflow dags test`` runs one DAG
run in a single process (tasks one at a time, state in the SQLite database under
AIRFLOW_HOME), which is Airflow's own way of running a DAG once from the command line. Runs in
Airflow's virtual environment, never in the project's.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from airflow import DAG
from airflow.operators.bash import BashOperator

for graph in sorted(Path(__file__).parent.glob("*.json")):
    steps: dict[str, list[str]] = json.loads(graph.read_text())
    with DAG(graph.stem, start_date=datetime(2024, 1, 1), schedule=None, catchup=False) as dag:
        tasks = {name: BashOperator(task_id=name, bash_command="true") for name in steps}
        for name, needs in steps.items():
            for need in needs:
                tasks[need] >> tasks[name]
    globals()[graph.stem.replace("-", "_")] = dag
