"""The benchmarks that ``bin/bench`` runs, and the scripts they time.

    harness      child processes, timing, medians, the table, the machine
    dags         step overhead: DAGs of `true` steps, pipeline vs a bare trio runner and peers
    validate     1,000 job files through ``pipeline validate``
    startup      ``pipeline --help`` vs ``python -c 'import click'``
    serve        the daemon: fire lateness and CPU (vs a bare loop and APScheduler 3), memory,
                 the HTTP API under load
    pages        the status pages' server time with 1,000 jobs and 100,000 runs
    steps        real steps: steady load, a burst, CPU per fire (vs the bare loop spawning the
                 same commands, APScheduler 3 and cron)
    filewatch    file arrival: files dropped into pipeline serve's watched folder, and into a
                 ``FileWatcher`` alone
    pools        a pool's slot handed from step to step, vs a bare ``trio.Semaphore``
    cron         cron(8) on a crontab of the bench's own, in a mount namespace
    peers        the peers' environments (.bench-venv for Luigi and Prefect 3; Airflow and
                 Dagster under the cache directory)
    report       BENCHMARKS.md (with README.md, how to run each, and profile.md)
    profile      py-spy, perf and kernel tracepoints on the daemon under the real-step loads
    __main__     ``python -m tests.bench [--quick] [--only ...]``

Scripts run as whole processes: ``bare_dag.py``, ``bare_loop.py``, ``bare_pool.py``,
``aps_loop.py``, ``parse_floor.py`` and ``api_load.py`` (in .venv), ``luigi_dag.py`` and
``prefect_dag.py`` (in .bench-venv), ``airflow_dag.py`` and ``dagster_dag.py`` (in their own).
``gen_jobs.py`` writes realistic job files.
"""
