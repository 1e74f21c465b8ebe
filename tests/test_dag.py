"""The step graph: needs checks and drawings (pipeline.dag)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import dag, spec
from pipeline.dag import Flaw
from pipeline.model import Job, Step, StepKind


def step(sid: str, *needs: str, **extra: object) -> Step:
    return Step(id=sid, kind=StepKind.RUN, run="true", needs=needs, **extra)  # type: ignore[arg-type]


def test_a_sound_graph_has_no_flaws() -> None:
    assert dag.check({"a": [], "b": ["a"], "c": ["a", "b"]}) == []
    assert dag.check({"c": ["b"], "b": ["a"], "a": []}) == []  # needs may point forward
    assert dag.check({}) == []


def test_unknown_needs_with_a_did_you_mean() -> None:
    assert dag.check({"build": [], "test": ["biuld", "zzz"]}) == [
        Flaw("test", "biuld", "needs 'biuld', which is not a step of this job "
             "(did you mean 'build'?)"),
        Flaw("test", "zzz", "needs 'zzz', which is not a step of this job"),
    ]


def test_needs_of_another_list() -> None:
    assert dag.check({"alert": ["build"]}, elsewhere={"build": "steps"}) == [
        Flaw("alert", "build", "needs 'build', which is a step of steps: a step can only "
             "need steps of its own list")]


def test_cycles_name_their_steps_in_order() -> None:
    assert dag.check({"a": ["c"], "b": ["a"], "c": ["b"]}) == [
        Flaw("a", "c", "needs form a cycle: a -> c -> b -> a")]
    assert dag.check({"me": ["me"]}) == [Flaw("me", "me", "needs itself ('me')")]


def test_every_independent_cycle_is_reported() -> None:
    flaws = dag.check({"a": ["b"], "b": ["a"], "c": ["d"], "d": ["c"], "e": ["e"], "f": []})
    assert len(flaws) == 3
    assert {f.step for f in flaws} <= {"a", "b", "c", "d", "e"}
    assert all("cycle" in f.message or "itself" in f.message for f in flaws)


def test_order_and_levels() -> None:
    steps = [step("join", "left", "right"), step("left", "root"), step("root"),
             step("right", "root"), step("other")]
    assert [[s.id for s in level] for level in dag.levels(steps)] == [
        ["root", "other"], ["left", "right"], ["join"]]
    sorter = dag.order(steps)
    assert set(sorter.get_ready()) == {"root", "other"}


def test_order_ignores_needs_outside_the_list() -> None:
    # Hook lists are graphs of their own; validation has made sure needs stay inside.
    assert [[s.id for s in level] for level in dag.levels([step("a", "elsewhere")])] == [["a"]]


@pytest.fixture
def job(tmp_path: Path) -> Job:
    path = tmp_path / "graph.yaml"
    path.write_text("""name: graph
steps:
  - {id: prepare, run: "true"}
  - {id: end, name: 'Say "end"', needs: [prepare], run: "true"}
  - {id: each, needs: [prepare], for_each: [a, b], max_parallel: 1, exec: [echo, x]}
  - {id: join, needs: [end, each], uses: sleep, with: {duration: 1s}, if: always()}
on_failure:
  - {id: alert, run: "true"}
  - {id: page, needs: [alert], run: "true", continue_on_error: true}
finally:
  - {id: cleanup, run: "true"}
""")
    return spec.load_job(path)


def test_render_text(job: Job) -> None:
    assert dag.render(job, "text") == """job graph
steps:
   1. prepare  (run)
   2. end      (run)  <- prepare
   2. each     (exec, for each item (max 1 at once))  <- prepare
   3. join     (uses sleep, if always())  <- end, each
on_failure:
   1. alert  (run)
   2. page   (run, continue on error)  <- alert
finally:
   1. cleanup  (run)"""


def test_render_mermaid(job: Job) -> None:
    text = dag.render(job, "mermaid")
    assert text.startswith("flowchart TD\n")
    assert 's_end["Say #quot;end#quot; (end)"]' in text  # `end` alone would close a block
    assert "s_prepare --> s_end" in text
    assert '    subgraph on_failure["on_failure"]' in text
    assert "        s_alert --> s_page" in text
    assert "s_join -. on_failure .-> s_alert" in text
    assert "s_join -. finally .-> s_cleanup" in text
    assert "s_join -. on_failure .-> s_page" not in text


def test_render_dot(job: Job) -> None:
    text = dag.render(job, "dot")
    assert text.startswith('digraph "graph" {')
    assert text.endswith("}")
    assert '"end" [label="Say \\"end\\""];' in text
    assert '"prepare" -> "end";' in text
    assert 'subgraph "cluster_finally" {' in text
    assert '"join" -> "cleanup" [style=dotted, label="finally"];' in text


def test_render_refuses_an_unknown_format(job: Job) -> None:
    with pytest.raises(ValueError, match="unknown graph format"):
        dag.render(job, "png")
