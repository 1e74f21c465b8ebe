"""pipeline: a declarative pipeline runner.

Users write YAML job files; pipeline validates them, fires them on cron, interval and one-shot
schedules and on events, and runs each job's steps as a DAG of real processes in their own
process groups.

Every module, in layers: a module imports only modules named before it here (in the rows
above, or earlier in its own row); the modules of a package (``pkg/ (its modules)``) import
each other freely. ``tests/test_layering.py`` holds the code to this list.

    errors, model, runrecords,   the exception tree; frozen job objects and states; a run as
      events, faults             the store records it; event records; crash points for the
                                 fault-injection tests
    notation                     pure: the notations of a job file's strings: durations (read,
                                 and written back), times, time zones (the machine's too)
    cron, calendars, triggers    pure: cron expressions (cronie's grammar, the DST rule); what
                                 a calendar removes (active windows, exclude lists, the
                                 searches past them); when schedules fire (cron, intervals,
                                 one-shots)
    sandbox, shell, expr,        pure: the expression language (jinja2's sandbox, our rules and
      redact, dag                guards); shell quoting; ${{ }} expressions parsed, evaluated,
                                 rendered; secret masking; the step graph (graphlib)
    yamlsafe                     pure, as are the job-file rows down to spec: YAML that cannot
                                 hurt us, with positions
    schedules, globs, jobgraph,  a schedule entry read into a Schedule (calendars, events);
      schedule_words             `file:` globs; the `after:` job-to-job graph; schedules and
                                 what becomes of their fires, in words
    schema                       the job JSON Schema: runner composition, errors in words
    params                       job parameters: declared types; given values checked and typed
    lookups, schedule_checks,    what a schema cannot express: what each expression may look
      step_checks, checks        up where it is written; a schedule entry's cron, zone,
                                 calendar and glob; the step lists (unique ids, needs,
                                 cycles) and each step's keys; durations, templates, ...
    settings                     the jobs directory's settings file (kind: settings) -> Settings;
                                 its defaults merged into jobs; values jobs and settings share
    build, spec, jobset          a checked document -> frozen Job; job file -> Job: bytes,
                                 YAML, schema, checks, build; a set of files judged together
                                 (which file holds a name, calls and `after:` across files)
    statedir, process,           the state directory's layout, lock and process identities
      runners/ (args, http,      (/proc read in one place); process groups (spawn, terminate,
      job, python, sleep,        kill, reap); step runners (a registry keyed by name, plus
      wait_for, _child)          entry points; their arguments checked in `runners.args`;
                                 `_child` is the process `uses: python` runs)
    policy, views                pure: what to do with a fire (start, queue, replace, skip, not
                                 made, and why); what catching up makes of missed fires; which
                                 fires a calendar removes are recorded; which nodes may run a
                                 job (runs_on); jobs and runs as the API and the commands show
                                 them
    scratch, steplog, steps,     where steps write $PIPELINE_OUTPUT (one private directory
      engine, plan, live         per process); a step's log and outputs; one step's
                                 condition, items, attempts and retries, its process or
                                 runner; one run = one trio nursery walking the step graph,
                                 steps are tasks in it; the dry-run plan; `pipeline run`'s
                                 live view
    store/ (records, rows,       the state of jobs, runs, nodes and decisions: one protocol
      migrations, base, sql,     (store/__init__), made of one per family of verbs, each in
      recording, history, jobs,  its family's module beside its SQL (sql.SqlStore, those
      fires, starts, pools,      classes together on base's transactions); its records;
      leases, logs, notices,     values as rows; both backends' migrations; one module per
      sqlite, pgurl, postgres)   backend, and a PostgreSQL URL's password
    versions, journal            which version of a job ran (the loaded jobs' git facts found
                                 in the background); the one writer between events and the
                                 store (group commit)
    nodes, _watchdog, recovery   this process as a node (identity, lease, fencing); the
                                 watchdog process beside it that kills its steps when it
                                 cannot; taking back the runs of lost nodes
    notify/ (notice, message,    notifications: a run's events as notices, rendered for each
      send, outbox, cooldown,    target, sent by kind (webhook, Slack, email, ping, command);
      outcomes, notifier)        retried, never blocking, pending ones saved across restarts;
                                 a target's cooldown (claimed in the store); each delivery's
                                 outcome counted, logged and reported
    localruns, held, worker,     the runs a node runs (tasks, pool slots, child runs); the
      scheduler, watch,          runs it holds but has not started (reserved fires and their
      metrics, operate,          catch-up after a stall, waiting runs; how they end or are
      foreground                 let go); which runs it starts (claimed, triggered, stopped);
                                 the firing loop (claims fires); the watched jobs directory;
                                 Prometheus figures; pause, resume, backfill, rerun, why;
                                 runs in the foreground (`pipeline run`, a backfill with no
                                 daemon)
    filewatch, eventfires,       `file:` schedules: files that settled under their globs;
      deadlines, logship         fires that events make (a file, an upstream's end, a start);
                                 missed deadlines; step logs shipped to a shared store
    ansi, sdnotify, page         pure: terminal colours in step logs as safe HTML; telling
                                 systemd the daemon is ready, stopping, alive; the HTML pages
    http/ (answers, guard,       the status app and API (its answers, token and same-site
      reading, openapi, views,   guard, request reading, OpenAPI document, what it reads of
      pages, timeline,           runs, what the pages draw of a job, a run's timeline and its
      rungraph, runpage, site,   graph, a run's page, the page routes, the routes of jobs, of
      jobs, control, runs,       the operator, of runs and logs, of metrics and nodes, the
      figures, app, server),     route table, the server); the daemon's life (lock, parts,
      daemon, client,            signals, shutdown); the CLI's API client; shell completion
      completion
    cli/ (text, jobfiles,        the one place that wires real objects together: the group,
      state, remote, jobs,       and one module per family of commands, each imported
      runs, operate, run,        lazily; `python -m pipeline`
      daemon, cluster, shell),
      __main__

docs/architecture.md tells how a fire becomes a run and how one daemon on SQLite and a
cluster of daemons on PostgreSQL run the same code.
"""

__version__ = "0.1.0"
