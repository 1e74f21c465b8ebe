"""Step overhead (issues 2 and 14): the same DAGs of `true` steps, each run by a whole process.

Two shapes: a 100-step fan-out (1 → 98 in parallel → 1) and a 50-step chain. Contenders:
``pipeline run FILE`` (a fresh state directory per repetition), the bare trio runner
(``bare_dag.py``, the baseline, on the same file), and, in the peers' environments, Luigi
(local scheduler, 8 workers), Prefect 3 (8 threads; against a local server, and with the
temporary server it starts by itself), Airflow 2.10 (``airflow dags test``, BashOperator
``true``, SQLite) and Dagster (``dagster job execute``, in-process executor, SQLite).

Start-up on its own: ``pipeline run`` of a one-step job against ``python -c 'import trio'``
(the least any trio program pays) and the bare runner on the same job.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import statistics
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path

from tests.bench.harness import (
    BENCH,
    CHILD_ENV,
    PIPELINE,
    PYTHON,
    Context,
    Row,
    Timed,
    Tool,
    measure,
    run_timed,
    say,
    seconds,
)
from tests.bench.peers import (
    OWN_VENVS,
    PEER_PYTHON,
    OwnVenv,
    Peers,
    prefect_env,
    prefect_server,
)

SHAPES = (("100-step fan-out", "fanout", 100), ("50-step chain", "chain", 50))
STEP_OVERHEAD = 1.25  # pipeline within this factor of the bare runner
LUIGI_FACTOR = 2.5  # pipeline at least this many times faster than Luigi
PREFECT_FACTOR = 10.0
DAGSTER_FACTOR = 12.0
AIRFLOW_FACTOR = 20.0


def graph(shape: str, n: int) -> dict[str, list[str]]:
    """Each step of the DAG with the steps it needs, in order."""
    if shape == "fanout":
        middle = [f"s{i:03d}" for i in range(n - 2)]
        return {"first": [], **{name: ["first"] for name in middle}, "last": middle}
    if shape == "chain":
        return {f"s{i:03d}": [f"s{i - 1:03d}"] if i else [] for i in range(n)}
    if shape == "one":
        return {"only": []}
    raise ValueError(f"unknown shape {shape!r}")


def job_text(name: str, steps: Mapping[str, Sequence[str]]) -> str:
    lines = [f"name: {name}", f"description: {len(steps)} steps of `true`, for benchmarks",
             "steps:"]
    for step, needs in steps.items():
        lines.append(f"  - id: {step}")
        if needs:
            lines.append(f"    needs: [{', '.join(needs)}]")
        lines.append('    exec: ["true"]')
    return "\n".join(lines) + "\n"


def write_dag(directory: Path, shape: str, n: int) -> tuple[Path, Path]:
    """The DAG as a job file (for pipeline and the bare runner) and as JSON (for the peers)."""
    directory.mkdir(parents=True, exist_ok=True)
    steps = graph(shape, n)
    job = directory / f"{shape}-{n}.yaml"
    job.write_text(job_text(f"{shape}-{n}", steps))
    plain = directory / f"{shape}-{n}.json"
    plain.write_text(json.dumps(steps))
    return job, plain


def fresh(directory: Path) -> Path:
    """An empty directory (a state directory, an output directory) for one repetition."""
    shutil.rmtree(directory, ignore_errors=True)
    return directory


Argv = Callable[[int], Sequence[str | Path]]  # repetition -> command


def bare_argv(job: Path, limit: int = 0) -> Sequence[str | Path]:
    return [PYTHON, BENCH / "bare_dag.py", job, *(["--limit", str(limit)] if limit else [])]


def same(argv: Sequence[str | Path]) -> Argv:
    return lambda _rep: argv


def pipeline_argv(job: Path, work: Path) -> Argv:
    """``pipeline run`` with a state directory of its own for each repetition."""
    return lambda rep: [PIPELINE, "run", job, "--state-dir",
                        fresh(work / f"state-{job.stem}-{rep}")]


def luigi_argv(plain: Path, work: Path) -> Argv:
    """Luigi with an empty output directory for each repetition (or it has nothing to do)."""
    return lambda rep: [PEER_PYTHON, BENCH / "luigi_dag.py", plain,
                        fresh(work / f"luigi-{plain.stem}-{rep}")]


def recorded_durations(work: Path, stem: str, reps: int) -> list[float]:
    """How long each measured ``pipeline run`` says its run took (from its state.db)."""
    found = []
    for rep in range(reps):
        db = work / f"state-{stem}-{rep}" / "state.db"
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            for started, finished in conn.execute("SELECT started_at, finished_at FROM runs"):
                found.append((datetime.fromisoformat(finished)
                              - datetime.fromisoformat(started)).total_seconds())
        finally:
            conn.close()
    return found


def airflow_env(ctx: Context, work: Path) -> dict[str, str] | str:
    """A home for Airflow in the scratch directory, its database migrated, and a DAGs folder
    holding ``airflow_dag.py`` and the graphs; the environment to run it with, or why not."""
    home, dags_folder = ctx.tmp / "airflow-home", ctx.tmp / "airflow-dags"
    dags_folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(BENCH / "airflow_dag.py", dags_folder)
    for _, shape, n in SHAPES:
        shutil.copy(work / f"{shape}-{n}.json", dags_folder)
    env = {**CHILD_ENV, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__USAGE_DATA_COLLECTION__ENABLED": "False", "DO_NOT_TRACK": "1"}
    airflow = _own("airflow").bin / "airflow"
    ctx.command(ctx.show([airflow, "db", "migrate"], _shown_env(env)))
    migrated = run_timed(ctx.children, [airflow, "db", "migrate"], log=ctx.log("airflow-migrate"),
                         env=env, check=False)
    if migrated.status != 0:
        return f"airflow db migrate exited {migrated.status}"
    return env


def dagster_env(ctx: Context, plain: Path) -> dict[str, str]:
    """Dagster's instance in the scratch directory (SQLite, no telemetry), for ``plain``."""
    home = ctx.tmp / "dagster-home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return {**CHILD_ENV, "DAGSTER_HOME": str(home), "PIPELINE_BENCH_GRAPH": str(plain)}


def _own(name: str) -> OwnVenv:
    return next(peer for peer in OWN_VENVS if peer.name == name)


def _shown_env(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if CHILD_ENV.get(k) != v}


def run(ctx: Context, peers: Peers) -> list[Row]:
    rows: list[Row] = startup_rows(ctx)
    work = ctx.tmp / "dags"
    timings: dict[str, dict[str, list[Timed]]] = {}
    for label, shape, n in SHAPES:
        job, plain = write_dag(work, shape, n)
        say(f"bench: {label}: bare trio runner, pipeline run"
            + (", Luigi" if peers.has("luigi") and ctx.peers else ""))
        tools = [
            Tool("bare", ctx.reps(15, 5), same(bare_argv(job))),
            Tool("pipeline", ctx.reps(15, 5), pipeline_argv(job, work)),
            Tool("bare8", ctx.reps(5, 3), same(bare_argv(job, 8))),
        ]
        if peers.has("luigi") and ctx.peers:
            tools.append(Tool("luigi", ctx.reps(7, 3), luigi_argv(plain, work)))
        timings[shape] = measure(ctx, tools, what=f"dag-{shape}")
    if peers.has("prefect") and ctx.peers:
        # The server runs only now, so its background work cannot slow the others down.
        say("bench: DAGs: Prefect 3 against a local server")
        with prefect_server(ctx, ctx.tmp / "prefect-server-home") as env:
            for _, shape, n in SHAPES:
                plain = work / f"{shape}-{n}.json"
                timings[shape] |= measure(ctx, [Tool(
                    "prefect-server", ctx.reps(5, 2),
                    same([PEER_PYTHON, BENCH / "prefect_dag.py", plain]), env=env)],
                    what=f"dag-{shape}")
        if not ctx.quick:
            say("bench: DAGs: Prefect 3 with its temporary server")
            ephemeral = prefect_env(ctx.tmp / "prefect-ephemeral-home")
            for _, shape, n in SHAPES:
                plain = work / f"{shape}-{n}.json"
                timings[shape] |= measure(ctx, [Tool(
                    "prefect-ephemeral", 3,
                    same([PEER_PYTHON, BENCH / "prefect_dag.py", plain]), env=ephemeral)],
                    what=f"dag-{shape}")
    if peers.has("airflow") and ctx.peers:
        say("bench: DAGs: Airflow 2.10, airflow dags test")
        env_or_why = airflow_env(ctx, work)
        if isinstance(env_or_why, str):
            peers.missing["airflow"] = env_or_why
            del peers.versions["airflow"]
        else:
            for _, shape, n in SHAPES:
                timings[shape] |= measure(ctx, [Tool(
                    "airflow", ctx.reps(3, 1),
                    same([_own("airflow").bin / "airflow", "dags", "test", f"{shape}-{n}"]),
                    env=env_or_why)], what=f"dag-{shape}")
    if peers.has("dagster") and ctx.peers:
        say("bench: DAGs: Dagster, dagster job execute (in-process executor)")
        for _, shape, n in SHAPES:
            plain = work / f"{shape}-{n}.json"
            timings[shape] |= measure(ctx, [Tool(
                "dagster", ctx.reps(3, 1),
                same([_own("dagster").bin / "dagster", "job", "execute", "-f",
                      BENCH / "dagster_dag.py", "-j", "dag"]),
                env=dagster_env(ctx, plain))], what=f"dag-{shape}")
    for label, shape, n in SHAPES:
        rows += shape_rows(label, timings[shape])
        inside = recorded_durations(work, f"{shape}-{n}", len(timings[shape]["pipeline"]))
        whole = seconds(timings[shape]["pipeline"]).median
        ctx.details.append(
            f"**{label}** — of `pipeline run`'s {whole:.3f} s (median, whole process), the run "
            f"itself (its recorded start to finish) took {statistics.median(inside):.3f} s; "
            "the rest is start-up (imports, loading the job, opening the state) and exit.")
    ctx.details.append(
        "**DAGs** — `pipeline run` has no parallelism limit, so neither has the bare runner "
        "it is compared with; the bare runner held to 8 at once (as Luigi's 8 workers and "
        "Prefect's 8 threads are) is shown for reference. Airflow's `dags test` and Dagster's "
        "in-process executor run one task at a time.")
    return rows


def startup_rows(ctx: Context) -> list[Row]:
    """``pipeline run`` of a one-step job against ``python -c 'import trio'``: start-up alone."""
    say("bench: one-step job: python -c 'import trio', bare trio runner, pipeline run")
    work = ctx.tmp / "dags"
    job, _ = write_dag(work, "one", 1)
    timings = measure(ctx, [
        Tool("trio", ctx.reps(15, 5), same([PYTHON, "-c", "import trio"])),
        Tool("bare", ctx.reps(15, 5), same(bare_argv(job))),
        Tool("pipeline", ctx.reps(15, 5), pipeline_argv(job, work)),
    ], what="dag-one")
    trio = seconds(timings["trio"])
    ours = seconds(timings["pipeline"])
    inside = recorded_durations(work, "one-1", len(timings["pipeline"]))
    ctx.details.append(
        f"**One-step job** — of `pipeline run`'s {ours.median:.3f} s, the run itself took "
        f"{statistics.median(inside):.3f} s and `python -c 'import trio'` "
        f"{trio.median:.3f} s; the rest is pipeline's own start-up and exit.")
    return [
        Row("1-step job: python -c 'import trio'", "s", trio, target="baseline"),
        Row("1-step job: bare trio runner", "s", seconds(timings["bare"]), "import trio", trio,
            "(reference)"),
        Row("1-step job: pipeline run", "s", ours, "import trio", trio, "(reference)"),
    ]


def shape_rows(label: str, timings: Mapping[str, list[Timed]]) -> list[Row]:
    bare = seconds(timings["bare"])
    ours = seconds(timings["pipeline"])
    rows = [
        Row(f"{label}: bare trio runner", "s", bare, target="baseline"),
        Row(f"{label}: pipeline run", "s", ours, "bare trio runner", bare,
            f"≤ {STEP_OVERHEAD:g}× bare", ours.median <= STEP_OVERHEAD * bare.median),
        Row(f"{label}: bare trio runner, ≤ 8 at once", "s", seconds(timings["bare8"]),
            "bare trio runner", bare, "(reference)"),
    ]
    peers = (("luigi", "Luigi, local scheduler, 8 workers", LUIGI_FACTOR),
             ("prefect-server", "Prefect 3, local server", PREFECT_FACTOR),
             ("prefect-ephemeral", "Prefect 3, temporary server", PREFECT_FACTOR),
             ("dagster", "Dagster, job execute, in-process executor", DAGSTER_FACTOR),
             ("airflow", "Airflow 2.10, dags test", AIRFLOW_FACTOR))
    for key, name, factor in peers:
        if key in timings:
            theirs = seconds(timings[key])
            rows.append(Row(f"{label}: {name}", "s", theirs, "pipeline run", ours,
                            f"≥ {factor:g}× pipeline", theirs.median >= factor * ours.median))
    return rows
