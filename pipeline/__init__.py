"""pipeline: a declarative pipeline runner.

Users write YAML job files; pipeline validates them, fires them on cron, interval and one-shot
schedules, and runs each job's steps as a DAG of real processes in their own process groups.

Modules, with imports flowing one way (a module imports only from the rows above it):

    errors, model, events, faults  the exception tree; frozen job objects and states; event
                                 records; crash points for the fault-injection tests
    notation                     pure: the notations of a job file's strings: durations (read,
                                 and written back), times, time zones (the machine's too)
    cron, triggers               pure: cron expressions (cronie's grammar, the DST rule); when
                                 schedules fire (intervals, one-shots, calendars)
    sandbox, shell, expr,        pure: the expression language (jinja2's sandbox, our rules and
      redact, dag                guards); shell quoting; ${{ }} expressions parsed, evaluated,
                                 rendered; secret masking; the step graph (graphlib)
    yamlsafe                     pure, as are the job-file rows down to spec: YAML that cannot
                                 hurt us, with positions
    schedules, globs, jobgraph   a schedule entry read into a Schedule (calendars, events);
                                 `file:` globs; the `after:` job-to-job graph
    schema                       the job JSON Schema: runner composition, errors in words
    params                       job parameters: declared types; given values checked and typed
    lookups, schedule_checks,    what a schema cannot express: what each expression may look
      checks                     up where it is written; a schedule entry's cron, zone,
                                 calendar and glob; needs, cycles, durations, templates, ...
    settings                     the jobs directory's settings file (kind: settings) -> Settings;
                                 its defaults merged into jobs; values jobs and settings share
    build, spec                  a checked document -> frozen Job; job file -> Job: bytes,
                                 YAML, schema, checks, build; a set of files judged together
    statedir, process, runners   the state directory's layout, lock and process identities
                                 (/proc read in one place); process groups (spawn, terminate,
                                 kill, reap); step runners (a registry keyed by name, plus
                                 entry points; their arguments checked in `runners.args`)
    policy, views                pure: what to do with a fire (start, queue, replace, skip, not
                                 made, and why); what catching up makes of missed fires; jobs
                                 as the API and `pipeline list` show them
    steplog, steps, engine,      a step's log and outputs; one step's condition, items,
      plan, live                 attempts and retries, its process or runner; one run = one
                                 trio nursery walking the step graph, steps are tasks in it;
                                 the dry-run plan; `pipeline run`'s live view
    store/ (protocol, sql,       the state of jobs, runs, nodes and decisions: one protocol,
      sqlite, postgres)          the shared SQL, one module per backend
    versions, journal            which version of a job ran; the one writer between events
                                 and the store (group commit)
    nodes, recovery              this process as a node (identity, lease, watchdog, fencing);
                                 taking back the runs of lost nodes
    worker, scheduler, watch,    a node's runs (started, claimed, stopped); the firing loop
      metrics, operate,          (claims fires); the watched jobs directory; Prometheus
      foreground                 figures; pause, resume, backfill, rerun, why; `pipeline run`
    notify                       notifications: webhook, Slack, email, ping, command; retried,
                                 never blocking, pending ones saved across restarts
    filewatch                    `file:` schedules: files that settled under their globs
    ansi                         pure: terminal colours in step logs as safe HTML
    sdnotify                     telling systemd the daemon is ready, stopping, alive
    http, page, client, daemon   the status app and API; its HTML; the CLI's API client; the
                                 daemon's life (lock, parts, signals, shutdown)
    cli/                         the one place that wires real objects together: the group,
                                 and one module per family of commands, each imported lazily

docs/architecture.md tells how a fire becomes a run and how one daemon on SQLite and a
cluster of daemons on PostgreSQL run the same code.
"""

__version__ = "0.1.0"
