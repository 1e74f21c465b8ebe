"""Process groups: real processes, real signals; nothing a step starts may outlive it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import trio

from pipeline import process

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def wait_gone(pid: int, within: float = 2.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.01)
    return False


async def run(argv: list[str], *, grace: float = 5.0, env: dict[str, str] | None = None,
              ) -> tuple[process.Exit, bytes, list[int]]:
    chunks: list[bytes] = []
    pids: list[int] = []

    async def spawned(pid: int) -> None:
        pids.append(pid)

    exit = await process.run_group(argv, env=env or ENV, cwd=None, output=chunks.append,
                                   grace=grace, spawned=spawned)
    return exit, b"".join(chunks), pids


async def test_exit_status_and_output_are_captured() -> None:
    exit, out, _ = await run(["bash", "-c", "echo out; echo err >&2; exit 3"])
    assert exit == process.Exit(3, None)
    assert out.splitlines() == [b"out", b"err"]
    assert not exit.ok and exit.describe() == "exit status 3"


async def test_stdin_is_dev_null_and_env_is_only_what_we_pass() -> None:
    exit, out, _ = await run(["bash", "-c", "cat; echo \"[$HOME][$PATH]\""],
                             env={"PATH": "/usr/bin:/bin"})
    assert exit.ok
    assert out == b"[][/usr/bin:/bin]\n"


async def test_step_is_a_session_leader() -> None:
    exit, out, pids = await run(["bash", "-c", "ps -o pid=,pgid=,sid= -p $$"])
    assert exit.ok
    pid, pgid, sid = (int(x) for x in out.split())
    assert pid == pgid == sid == pids[0]


async def test_background_child_holding_the_pipe_does_not_hold_the_step() -> None:
    # The leader exits at once; its background child keeps stdout open for a minute.
    started = trio.current_time()
    exit, out, _ = await run(["bash", "-c", "sleep 60 & echo $! ; echo done"], grace=1)
    assert exit.ok
    assert trio.current_time() - started < 5
    child = int(out.split()[0])
    assert wait_gone(child), "the background child outlived its step"
    assert b"done" in out


async def test_grandchild_that_detaches_from_the_pipe_is_still_killed() -> None:
    exit, _, pids = await run(["bash", "-c", "(sleep 60 >/dev/null 2>&1 &) ; echo ok"])
    assert exit.ok
    assert process.group_members(pids[0]) == []


async def test_timeout_terminates_the_whole_group() -> None:
    pids_file = []

    async def spawned(pid: int) -> None:
        pids_file.append(pid)

    chunks: list[bytes] = []
    with trio.move_on_after(0.5) as scope:
        await process.run_group(
            ["bash", "-c", "sleep 60 & echo $!; sleep 60"], env=ENV, cwd=None,
            output=chunks.append, grace=2, spawned=spawned)
    assert scope.cancelled_caught
    child = int(b"".join(chunks).split()[0])
    assert wait_gone(child)
    assert wait_gone(pids_file[0])
    assert process.group_members(pids_file[0]) == []


@pytest.mark.slow
async def test_a_step_ignoring_sigterm_is_killed_after_the_grace_period() -> None:
    script = "trap '' TERM; echo ready; while true; do sleep 0.05; done"
    chunks: list[bytes] = []
    leader: list[int] = []

    async def spawned(pid: int) -> None:
        leader.append(pid)

    t0 = time.monotonic()
    with trio.move_on_after(0.3):
        await process.run_group(["bash", "-c", script], env=ENV, cwd=None,
                                output=chunks.append, grace=0.5, spawned=spawned)
    took = time.monotonic() - t0
    assert 0.7 <= took < 3, took
    assert wait_gone(leader[0])


async def test_hurry_skips_the_grace_period() -> None:
    hurry = trio.Event()
    hurry.set()
    t0 = time.monotonic()
    with trio.move_on_after(0.2):
        await process.run_group(["bash", "-c", "trap '' TERM; sleep 30"], env=ENV, cwd=None,
                                output=lambda _: None, grace=30, hurry=hurry)
    assert time.monotonic() - t0 < 2


async def test_killed_by_a_signal_is_reported_as_signal() -> None:
    exit, _, _ = await run(["bash", "-c", "kill -KILL $$"])
    assert exit == process.Exit(None, signal.SIGKILL)
    assert exit.describe() == "killed by SIGKILL"


async def test_missing_program_raises_oserror() -> None:
    with pytest.raises(OSError):
        await run(["/nonexistent/program"])


async def test_large_output_streams_without_buffering_everything() -> None:
    seen = 0
    biggest = 0

    def output(chunk: bytes) -> None:
        nonlocal seen, biggest
        seen += len(chunk)
        biggest = max(biggest, len(chunk))

    exit = await process.run_group(["bash", "-c", "head -c 50000000 /dev/zero"], env=ENV,
                                   cwd=None, output=output, grace=1)
    assert exit.ok
    assert seen == 50_000_000
    assert biggest <= process.READ_SIZE


def test_kill_leftovers_only_touches_marked_processes(tmp_path: Path) -> None:
    import subprocess

    marked = subprocess.Popen(["sleep", "60"], env={**ENV, "PIPELINE_RUN_ID": "run-a"},
                              start_new_session=True)
    other = subprocess.Popen(["sleep", "60"], env={**ENV, "PIPELINE_RUN_ID": "run-b"},
                             start_new_session=True)
    try:
        assert process.processes_of_run("run-a") == [marked.pid]
        # The recorded pgid of run-b's process is offered, but it is not run-a's: untouched.
        killed = process.kill_leftovers("run-a", [other.pid])
        assert killed == [marked.pid]
        assert marked.wait(5) == -signal.SIGKILL
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


@pytest.mark.slow
async def test_output_written_after_sigterm_reaches_the_caller(tmp_path: Path) -> None:
    """A step that traps TERM and reports on its way out: every byte it writes until it
    exits is passed on, not only what came before the signal."""
    marker = tmp_path / "cleaned"
    script = (f"trap 'echo got TERM; echo done > {marker}; sleep 0.2; echo after file; exit 3'"
              " TERM; echo ready; sleep 30 & wait")
    chunks: list[bytes] = []
    with trio.move_on_after(0.5) as scope:
        await process.run_group(["bash", "-c", script], env=ENV, cwd=None,
                                output=chunks.append, grace=5)
    assert scope.cancelled_caught
    assert marker.read_text() == "done\n"
    assert b"".join(chunks) == b"ready\ngot TERM\nafter file\n"


@pytest.mark.slow
async def test_output_until_the_sigkill_after_the_grace_reaches_the_caller() -> None:
    script = ("trap 'echo got TERM; echo still cleaning' TERM; echo ready; "
              "while true; do sleep 0.05; done")
    chunks: list[bytes] = []
    with trio.move_on_after(0.3):
        await process.run_group(["bash", "-c", script], env=ENV, cwd=None,
                                output=chunks.append, grace=0.5)
    out = b"".join(chunks)  # bash may also report its killed sleep ("Terminated")
    assert out.startswith(b"ready\n") and b"got TERM\nstill cleaning\n" in out


def test_stat_fields_read_this_process_past_a_name_with_spaces_and_parentheses(
        tmp_path: Path) -> None:
    """One reader of /proc/PID/stat for the process groups and the process identities."""
    from pipeline.statedir import process_identity, stat_fields

    fields = stat_fields(os.getpid())
    assert fields is not None and fields[0] in (b"R", b"S")
    assert int(fields[2]) == os.getpgid(0)
    assert process_identity() == f"{os.getpid()}:{fields[19].decode()}"
    assert stat_fields(2**22 + 12345) is None
    # A command name may hold ") " itself: the fields start after the last ")".
    odd = tmp_path / "a) b (c"
    odd.write_text("#!/bin/sh\nsleep 5\n")
    odd.chmod(0o755)
    child = subprocess.Popen([str(odd)], start_new_session=True)
    try:
        deadline = time.monotonic() + 5
        while Path(f"/proc/{child.pid}/comm").read_text().strip() != "a) b (c":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        found = stat_fields(child.pid)
        assert found is not None and int(found[2]) == child.pid  # its own group
        assert child.pid in process.group_members(child.pid)
    finally:
        child.kill()
        child.wait()
