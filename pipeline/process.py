"""Step processes in their own process groups: spawn, stream output, terminate, kill, reap.

Every step process is a session leader (``start_new_session``), so its process group holds the
step and everything it starts that does not deliberately leave (``setsid``). One function,
``end_group``, is the only way a group is stopped: SIGTERM to the group, up to ``grace``
seconds for it to empty, then SIGKILL. Timeouts, ``pipeline stop``, Ctrl-C and daemon
shutdown all reach it through trio cancellation.

We do not use PR_SET_PDEATHSIG to tie steps to the daemon: Linux ties it to the parent
*thread*, and trio spawns from worker threads that exit after about 10 s idle, so a step started
with it is killed about 10 s later (measured).
Instead every step carries PIPELINE_RUN_ID in its environment and its group is recorded, so the
next start of a crashed daemon finds and kills what is left (``kill_leftovers``).
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from pipeline.statedir import stat_fields

# Once the leader has exited and its group has been told to stop, how long the pipe may stay
# open before we stop reading: a holder outside the group (a process that called setsid) must
# not keep a finished step running forever.
PIPE_LINGER = 1.0
READ_SIZE = 65536


@dataclass(frozen=True)
class Exit:
    """How a step process ended: ``exit_code`` for a normal exit, ``signal`` when killed."""

    exit_code: int | None
    signal: int | None

    @classmethod
    def from_returncode(cls, code: int) -> Exit:
        return cls(None, -code) if code < 0 else cls(code, None)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def describe(self) -> str:
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"killed by {name}"
        return f"exit status {self.exit_code}"


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``.

    ``killpg(pgid, 0)`` alone is not enough: a zombie whose parent never reaps it (a container's
    PID 1 that is not an init) still counts as a member but can never be killed.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        pass
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = stat_fields(int(entry.name))
        if fields is not None and len(fields) > 2 and fields[0] != b"Z" \
                and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a process group; False if the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        # Only a zombie-only group or a reused pgid of another user lands here; neither is ours
        # to kill.
        return False
    return True


async def end_group(pgid: int, *, grace: float, leader: trio.Process | None = None,
                    hurry: trio.Event | None = None) -> None:
    """Stop every process of group ``pgid``: SIGTERM, wait up to ``grace`` s, then SIGKILL.

    ``hurry`` set (a second Ctrl-C, a forced shutdown) cuts the grace period short. Returns once
    the group is empty or SIGKILL has been sent and the leader reaped. Never raises for a group
    that is already gone. Call it shielded when the caller is being cancelled.
    """

    def alive() -> bool:
        if leader is not None and leader.poll() is None:
            return True
        return bool(group_members(pgid))

    if not alive():
        return
    signal_group(pgid, signal.SIGTERM)
    with trio.move_on_after(grace) as waited:
        if hurry is not None and hurry.is_set():
            waited.cancel()
        delay = 0.005
        while alive():
            if hurry is None:
                await trio.sleep(delay)
            else:
                with trio.move_on_after(delay):
                    await hurry.wait()
                if hurry.is_set():
                    break
            delay = min(delay * 2, 0.1)
    if alive():
        signal_group(pgid, signal.SIGKILL)
    if leader is not None:
        await leader.wait()


def start_failure(exc: OSError | ValueError, program: str, cwd: str | Path | None) -> str:
    """Why ``run_group`` could not start ``program`` in ``cwd``, in words.

    subprocess names the working directory as the failing file when it cannot enter it, and
    the program otherwise; a missing directory must not read as a missing program.
    """
    reason = getattr(exc, "strerror", None) or str(exc)
    if (isinstance(exc, OSError) and cwd is not None and exc.filename == os.fspath(cwd)
            and not os.path.isdir(cwd)):
        if exc.errno == errno.ENOENT:
            return f"working directory {os.fspath(cwd)!r} does not exist"
        return f"cannot use working directory {os.fspath(cwd)!r}: {reason}"
    what = exc.filename if isinstance(exc, OSError) and exc.filename else program
    return f"cannot start {what!r}: {reason}"


async def run_group(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | Path | None,
    output: Callable[[bytes], None],
    grace: float,
    spawned: Callable[[int], Awaitable[None]] | None = None,
    hurry: trio.Event | None = None,
) -> Exit:
    """Run ``argv`` as the leader of a new session and process group; return how it ended.

    stdin is /dev/null; stdout and stderr are one pipe, passed to ``output`` chunk by chunk as
    they arrive (nothing is buffered whole). When the leader exits, whatever it left running in
    its group is stopped through ``end_group`` (a shell's forgotten background child must not
    hold the step open or outlive it). When the calling task is cancelled (timeout, stop,
    Ctrl-C), the group is stopped the same way before the cancellation goes on, and everything
    it writes until it is gone (a TERM trap's last words) is still passed to ``output``.

    Raises OSError if the program cannot be started (not found, not executable, bad cwd).
    """
    proc = await trio.lowlevel.open_process(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=dict(env),
        cwd=cwd,
    )
    pgid = proc.pid  # a session leader's group id is its pid
    stdout = proc.stdout
    assert stdout is not None
    drained = trio.Event()
    # The reader is shielded from the caller's cancellation: what the group writes after
    # SIGTERM (a trap reporting its cleanup) belongs in the log as much as what came before.
    # It stops when the pipe closes, or when we stop it below.
    reading = trio.CancelScope(shield=True)

    async def pump() -> None:
        with reading:
            try:
                while chunk := await stdout.receive_some(READ_SIZE):
                    output(bytes(chunk))
            except trio.ClosedResourceError:
                pass
            except OSError as exc:  # the pipe broke: nothing more will come
                if exc.errno not in (errno.EBADF, errno.EIO):
                    raise
            finally:
                drained.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump)
        try:
            if spawned is not None:
                await spawned(proc.pid)
            await proc.wait()
        finally:
            with trio.CancelScope(shield=True):
                await end_group(pgid, grace=grace, leader=proc, hurry=hurry)
                with trio.move_on_after(PIPE_LINGER):
                    await drained.wait()
                reading.cancel()
                await stdout.aclose()
    assert proc.returncode is not None
    return Exit.from_returncode(proc.returncode)


def processes_of_run(run_id: str) -> list[int]:
    """Pids of live processes that carry ``PIPELINE_RUN_ID=run_id`` in their environment.

    This is how a restarted daemon proves a leftover process is really a step of a run it
    owned, whatever happened to pid numbers meanwhile: the marker is in the process's own
    environment, set when we started it.
    """
    marker = f"PIPELINE_RUN_ID={run_id}".encode()
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            raw = Path(entry.path, "environ").read_bytes()
        except OSError:
            continue
        if marker in raw.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def kill_leftovers(run_id: str, pgids: Sequence[int] = (), *,
                   marked: bool = True) -> list[int]:
    """SIGKILL what is left of a dead daemon's run: its recorded groups and marked processes.

    A recorded pgid is only signalled if one of its members carries the run's marker, so a
    reused pgid of an unrelated process is never touched. ``marked=False`` leaves the other
    processes carrying the marker alone (the run is queued again: they may be its next
    attempt, started here by another node). Returns the pids signalled.
    """
    pids = set(processes_of_run(run_id))
    killed: list[int] = []
    for pgid in pgids:
        members = group_members(pgid)
        if any(p in pids for p in members):
            signal_group(pgid, signal.SIGKILL)
            killed.extend(members)
    if not marked:
        return sorted(killed)
    for pid in pids - set(killed):
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    return sorted(killed)
