"""The engine: real processes, real files, the virtual clock where time is the subject."""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import trio

from pipeline import process
from pipeline.engine import RunHandle
from pipeline.errors import RunnerError
from pipeline.events import RunFinished, StepRetrying, StepSpawned, StepStarted
from pipeline.model import Job, RunStatus, StepStatus
from pipeline.redact import Redactor
from pipeline.runners import Runner, StepContext, builtin_runners
from pipeline.steplog import StepLog, parse_outputs
from tests.conftest import run

JobFrom = Callable[[str], Job]


def log_of(state_dir: Path, step: str) -> str:
    return (state_dir / "logs" / "job" / "20261128T000000-00000001" / f"{step}.log").read_text()


def without_times(log: str) -> str:
    """A log without the start times of its attempt markers."""
    return re.sub(r"(\[pipeline\] attempt \d+ of \d+) at \S+", r"\1", log)


async def test_chain_passes_outputs_through_expressions(job_from: JobFrom,
                                                        tmp_path: Path) -> None:
    job = job_from("""
        steps:
          - id: make
            run: |
              echo "greeting=hello world" >> "$PIPELINE_OUTPUT"
              printf 'poem<<EOF\\nroses\\nviolets\\nEOF\\n' >> "$PIPELINE_OUTPUT"
          - id: use
            needs: [make]
            run: echo "${{ steps.make.outputs.greeting }}|${{ steps.make.outputs.poem }}"
    """)
    result, rec = await run(job, tmp_path)
    assert result.status is RunStatus.SUCCEEDED
    assert rec.steps()["make"].outputs == {"greeting": "hello world", "poem": "roses\nviolets"}
    assert log_of(tmp_path, "use") == "hello world|roses\nviolets\n"


async def test_parameter_with_shell_metacharacters_prints_literally(job_from: JobFrom,
                                                                    tmp_path: Path) -> None:
    job = job_from("""
        params:
          text: {type: string, default: ""}
        steps:
          - id: say
            run: echo ${{ params.text }}
    """)
    hostile = "$(touch pwned); `touch pwned2` && rm -rf / ; 'quoted' \"dq\" $HOME \\ | > x"
    result, _ = await run(job, tmp_path, params={"text": hostile})
    assert result.status is RunStatus.SUCCEEDED
    assert log_of(tmp_path, "say") == hostile + "\n"
    assert not (Path.cwd() / "pwned").exists() and not (Path.cwd() / "x").exists()


async def test_raw_filter_opts_out_of_quoting(job_from: JobFrom, tmp_path: Path) -> None:
    job = job_from("""
        params:
          flags: "-n"
        steps:
          - id: say
            run: echo ${{ params.flags | raw }} hi
    """)
    result, _ = await run(job, tmp_path, params={"flags": "-n"})
    assert result.status is RunStatus.SUCCEEDED
    assert log_of(tmp_path, "say") == "hi"


async def test_exec_runs_without_a_shell(job_from: JobFrom, tmp_path: Path) -> None:
    job = job_from("""
        steps:
          - id: argv
            exec: [printf, "%s|", "a b", "$HOME", ";", "${{ job.name }}"]
    """)
    result, _ = await run(job, tmp_path)
    assert result.status is RunStatus.SUCCEEDED
    assert log_of(tmp_path, "argv") == "a b|$HOME|;|job|"


async def test_fan_out_runs_in_parallel_and_join_waits(job_from: JobFrom, tmp_path: Path,
                                                       autojump_clock: trio.abc.Clock) -> None:
    job = job_from("""
        steps:
          - {id: start, uses: sleep, with: {duration: 1s}}
          - {id: a, needs: [start], uses: sleep, with: {duration: 10s}}
          - {id: b, needs: [start], uses: sleep, with: {duration: 10s}}
          - {id: c, needs: [start], uses: sleep, with: {duration: 10s}}
          - {id: join, needs: [a, b, c], uses: sleep, with: {duration: 1s}}
    """)
    t0 = trio.current_time()
    result, rec = await run(job, tmp_path)
    assert result.status is RunStatus.SUCCEEDED
    assert trio.current_time() - t0 == pytest.approx(12)
    order = [e.step_id for e in rec.events if isinstance(e, StepStarted)]
    assert order[0] == "start" and order[-1] == "join"


async def test_for_each_respects_max_parallel(job_from: JobFrom, tmp_path: Path,
                                              autojump_clock: trio.abc.Clock) -> None:
    job = job_from("""
        steps:
          - id: each
            for_each: [1, 2, 3, 4, 5]
            max_parallel: 2
            uses: sleep
            with: {duration: "${{ item }}"}
          - id: after
            needs: [each]
            run: "true"
    """)
    t0 = trio.current_time()
    result, rec = await run(job, tmp_path)
    assert result.status is RunStatus.SUCCEEDED
    # 2 at a time: (1,2) -> 3 starts at 1, 4 at 2, 5 at 4; last ends at 9
    assert trio.current_time() - t0 == pytest.approx(9)
    assert {f"each.{i}" for i in range(5)} <= rec.steps().keys()
    assert rec.status("each") == "succeeded"


async def test_for_each_from_an_expression_with_items_in_context(job_from: JobFrom,
                                                                 tmp_path: Path) -> None:
    job = job_from("""
        params:
          names: "[\\"x\\", \\"y\\"]"
        steps:
          - id: each
            for_each: ${{ params.names | fromjson }}
            run: echo "n=${{ item }}" >> "$PIPELINE_OUTPUT"
          - id: join
            needs: [each]
            run: >-
              echo ${{ steps.each['items'] | map(attribute='outputs')
              | map(attribute='n') | join(',') }}
    """)
    result, rec = await run(job, tmp_path, params={"names": '["x", "y"]'})
    assert result.status is RunStatus.SUCCEEDED, rec.steps()
    assert log_of(tmp_path, "join") == "x,y\n"


async def test_failure_skips_dependants_runs_failure_hook_and_finally(
        job_from: JobFrom, tmp_path: Path) -> None:
    job = job_from("""
        steps:
          - {id: ok, run: "true"}
          - {id: bad, run: "exit 3"}
          - {id: after_bad, needs: [bad], run: "true"}
          - {id: independent, needs: [ok], run: "true"}
          - {id: cleanup, needs: [bad], if: "always()", run: "true"}
        on_success:
          - {id: yay, run: "true"}
        on_failure:
          - {id: alert, run: "echo failed ${{ run.id }}"}
        finally:
          - {id: last, run: "true"}
          - {id: only_on_failure, if: "failure()", run: "true"}
    """)
    result, rec = await run(job, tmp_path)
    assert result.status is RunStatus.FAILED
    assert result.reason == "step failed: bad"
    s = rec.steps()
    assert s["bad"].exit_code == 3 and s["bad"].error == "exit status 3"
    assert rec.status("after_bad") == "skipped"
    assert rec.status("independent") == "succeeded"
    assert rec.status("cleanup") == "succeeded"
    assert rec.status("yay") == "skipped"
    assert rec.status("alert") == "succeeded"
    assert rec.status("last") == "succeeded"
    assert rec.status("only_on_failure") == "succeeded"
    assert log_of(tmp_path, "alert") == "failed 20261128T000000-00000001\n"


async def test_continue_on_error_keeps_the_run_and_dependants_going(job_from: JobFrom,
                                                                    tmp_path: Path) -> None:
    job = job_from("""
        steps:
          - {id: flaky, run: "exit 1", continue_on_error: true}
          - {id: next, needs: [flaky], run: "true"}
        on_failure:
          - {id: alert, run: "true"}
    """)
    result, rec = await run(job, tmp_path)
    assert result.status is RunStatus.SUCCEEDED
    assert rec.status("flaky") == "failed"
    assert rec.status("next") == "succeeded"
    assert rec.status("alert") == "skipped"


async def test_if_compares_contexts(job_from: JobFrom, tmp_path: Path) -> None:
    job = job_from("""
        params:
          target: {type: string, enum: [prod, staging], default: staging}
        steps:
          - {id: prod_only, if: "params.target == 'prod'", run: "true"}
          - {id: staging_only, if: "${{ params.target == 'staging' }}", run: "true"}
    """)
    result, rec = await run(job, tmp_path, params={"target": "staging"})
    assert result.status is RunStatus.SUCCEEDED
    assert rec.status("prod_only") == "skipped"
    assert rec.status("staging_only") == "succeeded"


async def test_expression_error_fails_that_step_only(job_from: JobFrom, tmp_path: Path) -> None:
    job = job_from("""
        steps:
          - {id: first, run: "true"}
          - {id: broken, needs: [first], run: "echo ${{ steps.first.outputs.nothere }}"}
          - {id: fine, run: "true"}
    """)
    result, rec = await run(job, tmp_path)
    assert result.status is RunStatus.FAILED
    error = rec.steps()["broken"].error
    assert error is not None and "nothere" in error
    assert rec.status("fine") == "succeeded"


async def test_retries_with_exponential_backoff_and_attempt_counts(
        job_from: JobFrom, tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    attempts: list[tuple[int, float]] = []

    async def flaky(args: Mapping[str, Any], ctx: StepContext) -> Mapping[str, Any]:
        attempts.append((ctx.attempt, trio.current_time()))
        if ctx.attempt < 4:
            raise RunnerError(f"not yet ({ctx.attempt})")
        return {"attempt": ctx.attempt}

    runners = {**builtin_runners(), "flaky": Runner("flaky", flaky)}
    job = job_from("""
        retries: {limit: 5, delay: 10s, backoff: exponential, max_delay: 25s}
        steps:
          - {id: try, uses: sleep, with: {duration: 0s}}
    """)
    # The same job, with the step using the plain-function runner instead.
    from dataclasses import replace

    job = replace(job, steps=(replace(job.steps[0], uses="flaky", with_={}),))
    t0 = trio.current_time()
    result, rec = await run(job, tmp_path, runners=runners)
    assert result.status is RunStatus.SUCCEEDED
    assert [a for a, _ in attempts] == [1, 2, 3, 4]
    gaps = [round(b - a) for (_, a), (_, b) in itertools.pairwise(attempts)]
    assert gaps == [10, 20, 25]  # 10, 20, then 40 capped at 25
    assert trio.current_time() - t0 == pytest.approx(55)
    assert [e.attempt for e in rec.events if isinstance(e, StepRetrying)] == [1, 2, 3]
    assert rec.steps()["try"].attempt == 4
    assert rec.steps()["try"].outputs == {"attempt": "4"}


async def test_pipeline_attempt_is_visible_to_the_step(job_from: JobFrom,
                                                       tmp_path: Path) -> None:
    job = job_from("""
        steps:
          - id: third_time_lucky
            retries: 2
            run: |
              echo "attempt $PIPELINE_ATTEMPT"
              [ "$PIPELINE_ATTEMPT" -ge 3 ]
    """)
    result, _ = await run(job, tmp_path)
    assert result.status is RunStatus.SUCCEEDED
    log = log_of(tmp_path, "third_time_lucky")
    assert "attempt 1\n" in log and "attempt 3\n" in log
    assert "[pipeline] attempt 2 of 3" in log


async def test_step_timeout_kills_the_group_including_background_children(
        job_from: JobFrom, tmp_path: Path) -> None:
    job = job_from("""
        steps:
          - id: hang
            timeout: 0.5s
            grace: 1s
            run: |
              sleep 300 &
              echo "child=$!" >> "$PIPELINE_OUTPUT"
              sleep 300
    """)
    t0 = time.monotonic()
    result, rec = await run(job, tmp_path)
    assert time.monotonic() - t0 < 5
    assert result.status is RunStatus.FAILED
    finished = rec.steps()["hang"]
    assert finished.status is StepStatus.TIMED_OUT
    assert finished.error == "timed out after 0.5s"
    pgid = next(e.pgid for e in rec.events if isinstance(e, StepSpawned))
    child = int(finished.outputs["child"])
    assert not _alive(child)  # gone by the time the step is recorded, not eventually
    assert process.group_members(pgid) == []


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


async def test_run_timeout_cancels_steps_and_runs_failure_hooks(job_from: JobFrom,
                                                                tmp_path: Path) -> None:
    job = job_from("""
        timeout: 0.5s
        steps:
          - {id: slow, run: "sleep 30"}
          - {id: never, needs: [slow], run: "true"}
        on_failure:
          - {id: alert, run: "echo alerted"}
    """)
    result, rec = await run(job, tmp_path)
    assert result.status is RunStatus.FAILED
    assert result.reason == "run timed out after 0.5s"
    assert rec.status("slow") == "cancelled"
    assert rec.steps()["slow"].error == "run timed out"
    assert rec.status("never") == "cancelled"
    assert rec.status("alert") == "succeeded"


async def test_stop_cancels_the_run_and_every_process_group(job_from: JobFrom,
                                                            tmp_path: Path) -> None:
    job = job_from("""
        steps:
          - {id: a, run: "sleep 30"}
          - {id: b, run: "sleep 30 & sleep 30"}
          - {id: c, needs: [a], run: "true"}
    """)
    handle = RunHandle("20261128T000000-00000001", "job")
    async with trio.open_nursery() as nursery:
        async def stop_soon() -> None:
            await trio.sleep(0.5)
            handle.stop("stopped by test")

        nursery.start_soon(stop_soon)
        result, rec = await run(job, tmp_path, handle=handle)
    assert result.status is RunStatus.CANCELLED
    assert result.reason == "stopped by test"
    assert rec.status("a") == "cancelled" and rec.status("b") == "cancelled"
    assert rec.status("c") == "cancelled"
    for e in rec.events:
        if isinstance(e, StepSpawned):
            assert process.group_members(e.pgid) == []
    assert isinstance(rec.events[-1], RunFinished)


async def test_environment_is_clean_and_secrets_are_declared(job_from: JobFrom,
                                                             tmp_path: Path) -> None:
    job = job_from("""
        env: {GREETING: hi}
        secrets:
          TOKEN: {env: MY_TOKEN}
        steps:
          - id: show
            env: {EXTRA: "${{ env.GREETING }}-there"}
            run: |
              echo "greeting=$GREETING extra=$EXTRA"
              echo "leak=${DAEMON_SECRET:-none}"
              echo "token=$TOKEN"
              echo "job=$PIPELINE_JOB step=$PIPELINE_STEP"
              echo "tok=$TOKEN" >> "$PIPELINE_OUTPUT"
    """)
    environ = {"PATH": os.environ["PATH"], "DAEMON_SECRET": "s3cr3t-of-the-daemon",
               "MY_TOKEN": "tok-123456"}
    result, rec = await run(job, tmp_path, environ=environ)
    assert result.status is RunStatus.SUCCEEDED
    log = log_of(tmp_path, "show")
    assert "greeting=hi extra=hi-there" in log
    assert "leak=none" in log
    assert "token=***" in log and "tok-123456" not in log
    assert "job=job step=show" in log
    assert rec.steps()["show"].outputs == {"tok": "***"}


async def test_missing_secret_fails_the_run_with_a_reason(job_from: JobFrom,
                                                          tmp_path: Path) -> None:
    job = job_from("""
        secrets:
          TOKEN: {env: NOT_SET_ANYWHERE}
        steps:
          - {id: a, run: "true"}
    """)
    result, rec = await run(job, tmp_path, environ={"PATH": os.environ["PATH"]})
    assert result.status is RunStatus.FAILED
    assert result.reason == "secret TOKEN: environment variable NOT_SET_ANYWHERE is not set"
    assert rec.status("a") == "skipped"


async def test_a_capped_log_keeps_its_head_and_its_tail(job_from: JobFrom,
                                                        tmp_path: Path) -> None:
    job = job_from("""
        steps:
          - {id: loud, run: "seq 1 300000; echo the error at the end; exit 3"}
    """)
    result, _ = await run(job, tmp_path, log_cap=100_000)
    assert result.status is RunStatus.FAILED
    printed = ("".join(f"{n}\n" for n in range(1, 300001)) + "the error at the end\n"
               + "[pipeline] exit status 3\n").encode()
    log = (tmp_path / "logs/job/20261128T000000-00000001/loud.log").read_bytes()
    assert not printed[:10_000].endswith(b"\n")  # so the marker gets a line of its own
    head, rest = log[:10_000], log[10_000:]
    gap, marker, tail = rest.split(b"\n", 2)
    assert head == printed[:10_000] and gap == b""
    assert marker == (f"[pipeline] {len(printed) - 100_000} bytes dropped here: the log keeps "
                      "the first 10000 and the last 90000 bytes").encode()
    assert tail == printed[-90_000:]
    assert len(log) == 100_000 + len(marker) + 2
    assert sorted(p.name for p in log_of_dir(tmp_path).iterdir()) == ["loud.log"]


def log_of_dir(state_dir: Path) -> Path:
    return state_dir / "logs" / "job" / "20261128T000000-00000001"


async def test_a_missing_program_fails_its_step(job_from: JobFrom, tmp_path: Path) -> None:
    job = job_from("""
        steps:
          - {id: nope, exec: [/definitely/not/here]}
    """)
    result, rec = await run(job, tmp_path)
    assert result.status is RunStatus.FAILED
    assert rec.steps()["nope"].error == "cannot start '/definitely/not/here': " \
                                        "No such file or directory"


async def test_a_runner_that_crashes_fails_its_step_not_the_run(job_from: JobFrom,
                                                                tmp_path: Path) -> None:
    async def buggy(args: Mapping[str, Any], ctx: StepContext) -> None:
        raise KeyError("oops")

    from dataclasses import replace

    job = job_from("""
        steps:
          - {id: a, uses: sleep, with: {duration: 0s}}
          - {id: b, run: "true"}
    """)
    job = replace(job, steps=(replace(job.steps[0], uses="buggy"), job.steps[1]))
    result, rec = await run(job, tmp_path,
                            runners={**builtin_runners(), "buggy": Runner("buggy", buggy)})
    assert result.status is RunStatus.FAILED
    assert rec.steps()["a"].error == "runner buggy crashed: KeyError: 'oops'"
    assert rec.status("b") == "succeeded"


def test_parse_outputs() -> None:
    outputs, warnings = parse_outputs("a=1\nb = two=2\n\nblock<<END\nx\ny\nEND\nbad line\n"
                                      "9x=no\n")
    assert outputs == {"a": "1", "b": " two=2", "block": "x\ny"}
    assert len(warnings) == 2
    outputs, warnings = parse_outputs("open<<EOF\nnever closed\n")
    assert outputs == {} and "no closing" in warnings[0]


def test_step_log_masks_secrets_split_across_chunks(tmp_path: Path) -> None:
    log = StepLog(tmp_path, "x.log", cap=1000, redactor=Redactor(["hunter22"]))
    for chunk in [b"pass: hun", b"ter2", b"2 ok\n"]:
        log.output(chunk)
    log.line("[pipeline] hunter22 again")
    log.close()
    assert (tmp_path / "x.log").read_text() == "pass: *** ok\n[pipeline] *** again\n"


async def test_a_stopped_run_still_runs_its_finally_hooks(job_from: JobFrom,
                                                          tmp_path: Path) -> None:
    job = job_from("""
        steps:
          - {id: slow, run: "sleep 30"}
        on_failure:
          - {id: alert, run: "true"}
        finally:
          - {id: cleanup, run: "echo cleaned"}
          - {id: note, if: "cancelled()", run: "echo was cancelled"}
    """)
    handle = RunHandle("20261128T000000-00000001", "job")
    async with trio.open_nursery() as nursery:
        async def stop_soon() -> None:
            await trio.sleep(0.3)
            handle.stop("stopped by test")

        nursery.start_soon(stop_soon)
        result, rec = await run(job, tmp_path, handle=handle)
    assert result.status is RunStatus.CANCELLED
    assert rec.status("slow") == "cancelled"
    assert rec.status("alert") == "skipped"
    assert rec.status("cleanup") == "succeeded"
    assert rec.status("note") == "succeeded"
    assert log_of(tmp_path, "note") == "was cancelled\n"


@pytest.mark.slow
async def test_a_kill_ends_finally_hooks_too(job_from: JobFrom, tmp_path: Path) -> None:
    job = job_from("""
        steps:
          - {id: slow, run: "sleep 30"}
        finally:
          - {id: cleanup, run: "sleep 30"}
    """)
    handle = RunHandle("20261128T000000-00000001", "job")
    async with trio.open_nursery() as nursery:
        async def stop_then_kill() -> None:
            await trio.sleep(0.3)
            handle.stop("stopped by test")
            await trio.sleep(0.5)
            handle.kill("killed by test")

        nursery.start_soon(stop_then_kill)
        t0 = time.monotonic()
        result, rec = await run(job, tmp_path, handle=handle)
    assert time.monotonic() - t0 < 5
    assert result.status is RunStatus.CANCELLED
    assert rec.status("cleanup") == "cancelled"


async def test_bad_input_fails_a_step_never_the_caller(job_from: JobFrom,
                                                        tmp_path: Path) -> None:
    """A NUL in a value, a secret file that is not text: failed steps or runs, no exception."""
    job = job_from("""
        params:
          who: {type: string, default: x}
        steps:
          - {id: echo, exec: [echo, "${{ params.who }}"]}
    """)
    result, rec = await run(job, tmp_path, params={"who": "a\0b"})
    assert result.status is RunStatus.FAILED
    assert "null" in (rec.steps()["echo"].error or "")
    binary = tmp_path / "secret.bin"
    binary.write_bytes(b"\xff\xfe\x00bad")
    job = job_from(f"""
        secrets:
          KEY: {{file: {binary}}}
        steps:
          - {{id: a, run: "true"}}
    """)
    result, _ = await run(job, tmp_path)
    assert result.status is RunStatus.FAILED
    assert result.reason is not None and result.reason.startswith("secret KEY: cannot read")


async def test_a_retried_error_never_shows_a_secret(job_from: JobFrom, tmp_path: Path,
                                                    autojump_clock: trio.abc.Clock) -> None:
    async def leaky(args: Mapping[str, Any], ctx: StepContext) -> None:
        raise RunnerError(f"login refused for token {ctx.env['TOKEN']}")

    from dataclasses import replace

    job = job_from("""
        secrets:
          TOKEN: {env: THE_TOKEN}
        steps:
          - {id: login, retries: 1, uses: sleep, with: {duration: 0s}}
    """)
    job = replace(job, steps=(replace(job.steps[0], uses="leaky", with_={}),))
    result, rec = await run(job, tmp_path, environ={"THE_TOKEN": "hunter2-SECRET"},
                            runners={**builtin_runners(), "leaky": Runner("leaky", leaky)})
    assert result.status is RunStatus.FAILED
    for event in rec.events:
        assert "hunter2-SECRET" not in repr(event), event
    assert "login refused for token ***" in (rec.steps()["login"].error or "")


def trapping(marker: Path) -> str:
    """A step's `run:` (as a YAML flow string) that traps TERM, and on it reports, writes
    ``marker`` and reports again."""
    return json.dumps(f"trap 'echo got TERM; echo done > {marker}; echo after file; exit 3' "
                      "TERM; echo before; sleep 30 & wait")


async def test_output_after_sigterm_is_logged_before_the_timeout_marker(
        job_from: JobFrom, tmp_path: Path) -> None:
    marker = tmp_path / "cleaned"
    job = job_from(f"""
        steps:
          - id: trapper
            timeout: 0.5s
            grace: 5s
            run: {trapping(marker)}
    """)
    _, rec = await run(job, tmp_path)
    assert rec.status("trapper") == "timed_out"
    assert marker.read_text() == "done\n"
    assert log_of(tmp_path, "trapper") == (
        "before\ngot TERM\nafter file\n[pipeline] timed out after 0.5s\n")


async def test_output_after_a_stop_is_logged_before_the_stopped_marker(
        job_from: JobFrom, tmp_path: Path) -> None:
    marker = tmp_path / "cleaned"
    job = job_from(f"""
        steps:
          - id: trapper
            grace: 5s
            run: {trapping(marker)}
    """)
    handle = RunHandle("20261128T000000-00000001", "job")
    async with trio.open_nursery() as nursery:
        async def stop_soon() -> None:
            await trio.sleep(0.5)
            handle.stop("stopped by test")

        nursery.start_soon(stop_soon)
        result, _ = await run(job, tmp_path, handle=handle)
    assert result.status is RunStatus.CANCELLED
    assert marker.read_text() == "done\n"
    assert log_of(tmp_path, "trapper") == (
        "before\ngot TERM\nafter file\n[pipeline] stopped: stopped by test\n")


async def test_a_failed_step_that_printed_nothing_gets_its_exit_marker(
        job_from: JobFrom, tmp_path: Path) -> None:
    job = job_from("""
        steps:
          - {id: quiet, run: "exit 7"}
          - {id: loud, run: "echo oops; exit 2"}
    """)
    result, rec = await run(job, tmp_path)
    assert result.status is RunStatus.FAILED
    assert log_of(tmp_path, "quiet") == "[pipeline] exit status 7\n"
    assert log_of(tmp_path, "loud") == "oops\n[pipeline] exit status 2\n"
    assert not rec.steps()["quiet"].no_log


async def test_each_attempt_gets_its_marker_once(job_from: JobFrom, tmp_path: Path) -> None:
    job = job_from("""
        steps:
          - id: slow
            timeout: 0.3s
            grace: 1s
            retries: {limit: 1, delay: 0s}
            run: "sleep 30"
          - id: bad
            retries: {limit: 1, delay: 0s}
            exec: [/definitely/not/here]
    """)
    result, _ = await run(job, tmp_path)
    assert result.status is RunStatus.FAILED
    slow = log_of(tmp_path, "slow")
    # Each attempt after the first says when it started (the run page draws attempts by it).
    started = re.search(r"attempt 2 of 2 at (\S+)\n", slow)
    assert started and datetime.fromisoformat(started.group(1)).utcoffset() is not None
    assert without_times(slow) == (
        "[pipeline] timed out after 0.3s; retrying in 0s\n"
        "[pipeline] attempt 2 of 2\n"
        "[pipeline] timed out after 0.3s\n")
    missing = "cannot start '/definitely/not/here': No such file or directory"
    assert without_times(log_of(tmp_path, "bad")) == (
        f"[pipeline] {missing}; retrying in 0s\n[pipeline] attempt 2 of 2\n"
        f"[pipeline] {missing}\n")


async def test_a_missing_working_directory_is_named_as_such(job_from: JobFrom,
                                                            tmp_path: Path) -> None:
    job = job_from("""
        steps:
          - {id: here, cwd: /no/such/dir, run: "true"}
          - {id: there, cwd: /no/such/dir, uses: python, with: {callable: "os:getcwd"}}
    """)
    result, rec = await run(job, tmp_path)
    assert result.status is RunStatus.FAILED
    for step in ("here", "there"):
        assert rec.steps()[step].error == "working directory '/no/such/dir' does not exist"
        assert log_of(tmp_path, step) == (
            "[pipeline] working directory '/no/such/dir' does not exist\n")


async def test_for_each_outputs_are_json_lists_a_join_step_can_read(
        job_from: JobFrom, tmp_path: Path) -> None:
    job = job_from("""
        steps:
          - id: fe
            for_each: [a, b, c]
            run: |
              echo "upper=$(echo ${{ item }} | tr a-z A-Z)" >> "$PIPELINE_OUTPUT"
              if [ ${{ item }} != b ]; then echo "odd=yes" >> "$PIPELINE_OUTPUT"; fi
          - id: join
            needs: [fe]
            run: |
              echo ${{ (steps.fe.outputs.upper | fromjson) | join('+') }}
              echo '${{ steps.fe.outputs.odd | raw }}'
    """)
    result, rec = await run(job, tmp_path)
    assert result.status is RunStatus.SUCCEEDED, rec.steps()
    assert rec.steps()["fe"].outputs == {"upper": '["A", "B", "C"]',
                                         "odd": '["yes", null, "yes"]'}
    assert log_of(tmp_path, "join") == 'A+B+C\n["yes", null, "yes"]\n'
    started = [e for e in rec.events if isinstance(e, StepStarted)]
    assert [(e.step_id, e.item) for e in started if "." in e.step_id] == [
        ("fe.0", '"a"'), ("fe.1", '"b"'), ("fe.2", '"c"')]


async def test_independent_steps_start_in_file_order(job_from: JobFrom,
                                                     tmp_path: Path) -> None:
    ids = [f"s{i}" for i in range(8)]
    job = job_from("steps:\n" + "".join(f"  - {{id: {i}, run: 'true'}}\n" for i in ids)
                   + "  - {id: last, needs: [s0, s7], run: 'true'}\n")
    for _ in range(5):  # trio shuffles the order of tasks made ready together
        _, rec = await run(job, tmp_path)
        assert [e.step_id for e in rec.events if isinstance(e, StepStarted)] == [*ids, "last"]


async def test_job_outputs_come_from_the_steps_and_are_masked(job_from: JobFrom,
                                                              tmp_path: Path) -> None:
    job = job_from("""
        secrets:
          TOKEN: {env: THE_TOKEN}
        outputs:
          greeting: "${{ steps.greet.outputs.greeting }}"
          count: "${{ steps.greet.outputs.n | int + 1 }}"
          token: "t=${{ secrets.TOKEN }}"
        steps:
          - id: greet
            run: |
              echo "greeting=hello" >> "$PIPELINE_OUTPUT"
              echo "n=41" >> "$PIPELINE_OUTPUT"
        on_success:
          - {id: hook, run: "echo greeting=changed >> $PIPELINE_OUTPUT"}
    """)
    result, rec = await run(job, tmp_path, environ={"THE_TOKEN": "hunter2-SECRET",
                                                    "PATH": os.environ["PATH"]})
    assert result.status is RunStatus.SUCCEEDED
    assert result.outputs == {"greeting": "hello", "count": "42", "token": "t=***"}
    finished = rec.events[-1]
    assert isinstance(finished, RunFinished) and finished.outputs == result.outputs


async def test_a_job_output_that_cannot_be_evaluated_fails_the_run(job_from: JobFrom,
                                                                   tmp_path: Path) -> None:
    job = job_from("""
        outputs:
          fine: "${{ steps.a.outputs.x }}"
          broken: "${{ steps.a.outputs.missing }}"
        steps:
          - {id: a, run: "echo x=1 >> $PIPELINE_OUTPUT"}
        on_failure:
          - {id: alert, run: "true"}
    """)
    result, rec = await run(job, tmp_path)
    assert result.status is RunStatus.FAILED
    assert result.reason is not None and result.reason.startswith("output broken:")
    assert result.outputs == {"fine": "1"}
    assert rec.status("alert") == "succeeded"


async def test_a_for_each_item_from_a_secret_is_recorded_masked(job_from: JobFrom,
                                                                tmp_path: Path) -> None:
    job = job_from("""
        secrets:
          TOKEN: {env: THE_TOKEN}
        steps:
          - id: fe
            for_each: ${{ [secrets.TOKEN, 'plain'] }}
            run: echo "seen=${{ item }}" >> "$PIPELINE_OUTPUT"
    """)
    result, rec = await run(job, tmp_path, environ={"THE_TOKEN": "hunter2-SECRET",
                                                    "PATH": os.environ["PATH"]})
    assert result.status is RunStatus.SUCCEEDED
    for event in rec.events:
        assert "hunter2-SECRET" not in repr(event), event
    started = [e for e in rec.events if isinstance(e, StepStarted) and "." in e.step_id]
    assert [e.item for e in started] == ['"***"', '"plain"']
    assert rec.steps()["fe"].outputs == {"seen": '["***", "plain"]'}
