"""pipeline: a declarative pipeline runner.

Users write YAML job files; pipeline validates them, fires them on cron, interval and one-shot
schedules, and runs each job's steps as a DAG of real processes in their own process groups.

Modules, with imports flowing one way (a module imports only from the rows above it):

    errors, model, events        the exception tree; frozen job objects and states; event records
    triggers, expr, dag          pure: cron and interval arithmetic, ${{ }} expressions, the
                                 step graph (graphlib)
    yamlsafe, notation           pure, as are the job-file rows down to spec: YAML that cannot
                                 hurt us, with positions; durations, times, schedule strings
    schema                       the job JSON Schema: runner composition, errors in words
    params                       job parameters: declared types; given values checked and typed
    checks                       what a schema cannot express: needs, cycles, cron, zones, ...
    spec                         job file -> Job: bytes, YAML, schema, checks, frozen model
    runners, process             step runners (a registry keyed by name, plus entry points);
                                 process groups: spawn, terminate, kill, reap
    engine                       one run = one trio nursery; steps are tasks in it
    store, versions              SQLite state and log files; which version of a job ran
    scheduler, watch, http       the daemon loop, the watched jobs directory, the status app
    cli                          the one place that wires real objects together
"""

__version__ = "0.1.0"
