"""pipeline: a declarative pipeline runner.

Users write YAML job files; pipeline validates them, fires them on cron, interval and one-shot
schedules, and runs each job's steps as a DAG of real processes in their own process groups.

Modules, with imports flowing one way (a module imports only from the rows above it):

    errors, model, events, faults  the exception tree; frozen job objects and states; event
                                 records; crash points for the fault-injection tests
    triggers, expr, redact, dag  pure: cron and interval arithmetic, ${{ }} expressions, secret
                                 masking, the step graph (graphlib)
    yamlsafe, notation           pure, as are the job-file rows down to spec: YAML that cannot
                                 hurt us, with positions; durations, times, schedule strings
    schema                       the job JSON Schema: runner composition, errors in words
    params                       job parameters: declared types; given values checked and typed
    lookups, checks              what a schema cannot express: what each expression may look
                                 up where it is written; needs, cycles, cron, zones, ...
    spec                         job file -> Job: bytes, YAML, schema, checks, frozen model
    process, statedir, runners   process groups (spawn, terminate, kill, reap); the state
                                 directory's layout, lock and owners; step runners (a registry
                                 keyed by name, plus entry points)
    steplog, engine, plan, live  a step's log and outputs; one run = one trio nursery, steps
                                 are tasks in it; the dry-run plan; `pipeline run`'s live view
    store, versions, journal     SQLite state; which version of a job ran; the one writer
                                 between events and the store (group commit)
    scheduler, watch, metrics    the daemon loop; the watched jobs directory; Prometheus figures
    ansi                         pure: terminal colours in step logs as safe HTML
    sdnotify                     telling systemd the daemon is ready, stopping, alive
    http, page, client, daemon   the status app and API; its HTML; the CLI's API client; the
                                 daemon's life (lock, recovery, signals, shutdown)
    cli                          the one place that wires real objects together
"""

__version__ = "0.1.0"
