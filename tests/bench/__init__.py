"""The benchmarks that ``bin/bench`` runs, and the scripts they time.

    harness      child processes, timing, medians, the table, the machine
    dags         step overhead: DAGs of `true` steps, pipeline vs a bare trio runner and peers
    validate     1,000 job files through ``pipeline validate``
    startup      ``pipeline --help`` vs ``python -c 'import click'``
    serve        the daemon: fire lateness and CPU (vs a bare loop and APScheduler 3), memory,
                 the HTTP API under load
    pages        the status pages' server time with 1,000 jobs and 100,000 runs
    peers        the separate environment (.bench-venv) for Luigi and Prefect 3
    report       BENCHMARKS.md
    __main__     ``python -m tests.bench [--quick] [--only ...]``

Scripts run as whole processes: ``bare_dag.py``, ``bare_loop.py``, ``aps_loop.py`` and
``api_load.py`` (in .venv), ``luigi_dag.py`` and ``prefect_dag.py`` (in .bench-venv).
``gen_jobs.py`` writes realistic job files.
"""
