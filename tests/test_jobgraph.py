"""The job-to-job graph of ``after:`` schedules: its edges, its drawings, ``pipeline graph
--jobs`` over a real jobs directory, and ``GET /api/v1/graph`` from a real daemon."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline import jobgraph, jobset
from pipeline.cli import main
from pipeline.jobgraph import Edge
from pipeline.model import RunStatus

SUCCEEDED, FAILED, CANCELLED = RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED
STEP = 'steps: [{id: a, run: "true"}]\n'
JOBS = {
    "extract.yaml": 'schedule: "0 2 * * *"\n' + STEP,
    "load.yaml": "schedule: {after: extract}\n" + STEP,
    # Two entries after one upstream are one edge; another upstream is another edge.
    "report.yaml": textwrap.dedent("""\
        schedule:
          - {after: load, status: [succeeded]}
          - {after: extract, status: [failed]}
          - {after: extract, status: [cancelled, failed]}
        """) + STEP,
    "alone.yaml": 'schedule: "@hourly"\n' + STEP,
    # Its file is invalid: a job after it still loads, and the graph says it is not loaded.
    "old.yaml": "name: old\nschedule: {after: alone}\nsteps: [{id: a, run: 'true', bad: 1}]\n",
    "cleanup.yaml": "schedule: {after: old, status: [succeeded, failed]}\n" + STEP,
}


def write_jobs(root: Path) -> Path:
    folder = root / "jobs.d"
    folder.mkdir(parents=True)
    for name, text in JOBS.items():
        (folder / name).write_text(text)
    return folder


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_edges_of_loaded_jobs(tmp_path: Path) -> None:
    loaded = jobset.load_jobs([write_jobs(tmp_path)])
    assert sorted(loaded.jobs) == ["alone", "cleanup", "extract", "load", "report"]
    assert sorted(jobgraph.edges(loaded.jobs), key=lambda e: (e.downstream, e.upstream)) == [
        Edge("old", "cleanup", (SUCCEEDED, FAILED)),
        Edge("extract", "load", (SUCCEEDED,)),
        Edge("extract", "report", (FAILED, CANCELLED)),
        Edge("load", "report", (SUCCEEDED,)),
    ]


def test_around_a_job_is_what_leads_to_it_and_what_it_leads_to() -> None:
    graph = [Edge("a", "b", (SUCCEEDED,)), Edge("b", "c", (SUCCEEDED,)),
             Edge("a", "c", (FAILED,)), Edge("a", "x", (SUCCEEDED,)),
             Edge("y", "z", (SUCCEEDED,))]
    assert jobgraph.around(graph, "b") == graph[:3]  # not a's other downstream x, nor y -> z
    assert jobgraph.around(graph, "x") == [graph[3]]
    assert jobgraph.around(graph, "lonely") == []


GRAPH = [Edge("extract", "load", (SUCCEEDED,)), Edge("load", "report", (SUCCEEDED,)),
         Edge("extract", "report", (FAILED, CANCELLED)), Edge("old", "cleanup", (SUCCEEDED,))]
LOADED = {"extract", "load", "report", "cleanup", "alone"}


def test_text_lists_jobs_upstream_first_with_what_fires_each() -> None:
    assert jobgraph.render(GRAPH, loaded=LOADED) == textwrap.dedent("""\
        5 jobs, 4 after: edges
           1. extract
           1. old (not loaded)
           2. cleanup           <- old (succeeded)
           2. load              <- extract (succeeded)
           3. report            <- load (succeeded); extract (failed or cancelled)""")
    assert jobgraph.render([], jobs=["alone"]) == "1 job, 0 after: edges\n   1. alone"


def test_mermaid_and_dot_label_each_edge_with_its_states() -> None:
    assert jobgraph.render(GRAPH[:3], "mermaid", jobs=["end"], loaded=LOADED) == \
        textwrap.dedent("""\
        flowchart LR
            j0["end (not loaded)"]
            j1["extract"]
            j2["load"]
            j3["report"]
            j1 -->|succeeded| j2
            j2 -->|succeeded| j3
            j1 -->|failed or cancelled| j3""")
    dot = jobgraph.render(GRAPH[3:], "dot", loaded=LOADED)
    assert dot == textwrap.dedent("""\
        digraph jobs {
            rankdir=LR;
            node [shape=box];
            "old" [label="old (not loaded)", style=dashed];
            "cleanup" [label="cleanup"];
            "old" -> "cleanup" [label="succeeded"];
        }""")
    with pytest.raises(ValueError, match="unknown graph format"):
        jobgraph.render(GRAPH, "svg")


def test_pipeline_graph_jobs_draws_the_directory(tmp_path: Path) -> None:
    jobs = str(write_jobs(tmp_path))
    code, out, err = cli("graph", "--jobs", "--jobs-dir", jobs)
    assert code == 0
    assert out.splitlines() == [
        "5 jobs, 4 after: edges",
        "   1. extract",
        "   1. old (not loaded)",
        "   2. cleanup           <- old (succeeded or failed)",
        "   2. load              <- extract (succeeded)",
        "   3. report            <- load (succeeded); extract (failed or cancelled)"]
    assert "1 invalid job file left out" in err
    # --all: also the jobs no after: connects; JOB: only what leads to it and from it.
    code, out, _ = cli("graph", "--jobs", "--all", "--jobs-dir", jobs)
    assert code == 0 and "   1. alone" in out.splitlines() and out.startswith("6 jobs, 4")
    code, out, _ = cli("graph", "--jobs", "load", "--format", "mermaid", "--jobs-dir", jobs)
    assert code == 0 and out.splitlines()[0] == "flowchart LR"
    assert "cleanup" not in out and "-->|failed or cancelled|" in out
    code, out, _ = cli("graph", "--jobs", "alone", "--format", "dot", "--jobs-dir", jobs)
    assert code == 0 and '"alone" [label="alone"];' in out and "->" not in out


def test_pipeline_graph_says_what_is_wrong_in_one_line(tmp_path: Path) -> None:
    jobs = str(write_jobs(tmp_path))
    for args, code, message in [
            ((), 2, "name a JOB, or give --jobs"),
            (("--all", "load"), 2, "--all goes with --jobs"),
            (("--jobs", "--all", "load"), 2, "not both"),
            (("--jobs", "nope"), 1, "unknown job 'nope'"),
    ]:
        got, out, err = cli("graph", *args, "--jobs-dir", jobs)
        assert (got, out) == (code, ""), args
        assert message in err and "Traceback" not in err and len(err.splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "solo.yaml").write_text(STEP)
    code, out, err = cli("graph", "--jobs", "--jobs-dir", str(empty))
    assert code == 0 and out == "0 jobs, 0 after: edges\n"
    assert "no job in" in err and "--all shows every job" in err
    # The step DAG is still what JOB alone draws.
    code, out, _ = cli("graph", "load", "--jobs-dir", jobs)
    assert code == 0 and out.startswith("job load\nsteps:")


@pytest.mark.slow
async def test_the_api_answers_the_job_graph(tmp_path: Path) -> None:
    from tests.test_http import client, open_daemon

    async with open_daemon(tmp_path, jobs=JOBS) as daemon, client(daemon) as http:
        answer = (await http.get("/api/v1/graph")).json()
        assert answer["jobs"] == [{"name": n, "loaded": n != "old"} for n in
                                  ("cleanup", "extract", "load", "old", "report")]
        assert {(e["upstream"], e["downstream"]): e["status"] for e in answer["edges"]} == {
            ("extract", "load"): ["succeeded"], ("load", "report"): ["succeeded"],
            ("extract", "report"): ["failed", "cancelled"],
            ("old", "cleanup"): ["succeeded", "failed"]}
        every = (await http.get("/api/v1/graph", params={"all": "1"})).json()
        assert {"name": "alone", "loaded": True} in every["jobs"]
        bad = await http.get("/api/v1/graph", params={"all": "maybe"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_query"
