"""The state directory's layout: where logs go, run ids, the daemon's lock, and process
identities (what a node records of itself, so a dead daemon is recognised on this machine).

Small and free of SQLite, so the engine can name log files without loading the store.

    STATE_DIR/state.db                  runs and schedule state (``store``)
    STATE_DIR/daemon.lock               flock held by the one daemon; holds its pid
    STATE_DIR/daemon.json               what the live daemon serves (``daemon``)
    STATE_DIR/logs/JOB/RUN_ID/STEP.log  step output (``engine``)
"""

from __future__ import annotations

import fcntl
import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from pipeline.errors import StateError, StateLocked
from pipeline.model import JOB_NAME, RUN_ID, STEP_INSTANCE_ID

LOCK_FILE = "daemon.lock"
LOGS_DIR = "logs"


def log_relpath(job: str, run_id: str, step_id: str) -> str:
    """``logs/JOB/RUN_ID/STEP.log``, relative to the state directory.

    Raises ``ValueError`` if a part is not a valid job name, run id or step (instance) id, so
    no name can reach outside its directory.
    """
    for value, pattern, what in ((job, JOB_NAME, "job name"), (run_id, RUN_ID, "run id"),
                                 (step_id, STEP_INSTANCE_ID, "step id")):
        if not pattern.fullmatch(value):
            raise ValueError(f"invalid {what} for a log path: {value!r}")
    return f"{LOGS_DIR}/{job}/{run_id}/{step_id}.log"


def new_run_id(now: datetime) -> str:
    """``YYYYMMDDTHHMMSS-xxxxxxxx``: the UTC second of ``now`` and 32 random bits."""
    if now.utcoffset() is None:
        raise ValueError(f"naive datetime {now!r}: a run id needs an aware time")
    return f"{_second(now.astimezone(UTC).replace(microsecond=0))}-{os.urandom(4).hex()}"


@functools.lru_cache(maxsize=4)
def _second(moment: datetime) -> str:
    # A thousand runs claimed in one second share it; strftime for each shows in a profile.
    return moment.strftime("%Y%m%dT%H%M%S")


@contextmanager
def lock_state_dir(state_dir: Path) -> Iterator[Path]:
    """Hold ``state_dir/daemon.lock`` (flock, exclusive) for the block; yield its path.

    The file holds the holder's pid, for the message another daemon gets. The kernel drops the
    lock with the process, so a crashed daemon never blocks the next one. Raises ``StateLocked``
    if another process (or another open in this one) holds it, ``StateError`` if the directory
    cannot be used.
    """
    path = state_dir / LOCK_FILE
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        # O_CLOEXEC: step processes must not inherit the lock (and keep it after we die).
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StateError(f"cannot lock {path}: {exc}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise StateLocked(
                f"another pipeline daemon (pid {holder or 'unknown'}) is using the state "
                f"directory {state_dir}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


# -- process identity --------------------------------------------------------------------------

def stat_fields(pid: int) -> list[bytes] | None:
    """Fields 3 onward of /proc/PID/stat (index 0 is the state, 2 the process group, 19 the
    start time), None if there is no such process.

    The command name (field 2) is in parentheses and may itself hold spaces and ")", so the
    fields start after the last ")".
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            data = file.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 1:].split()


def process_identity(pid: int | None = None) -> str:
    """``"PID:STARTTIME"`` of a live process (default: this one), stable for its lifetime.

    STARTTIME is field 22 of /proc/PID/stat (clock ticks after boot): a later process that
    gets the same pid has another. Raises ``ProcessLookupError`` if there is no such process.
    """
    if pid is None:
        return _own_identity(os.getpid())
    fields = stat_fields(pid)
    if fields is None:
        raise ProcessLookupError(f"no process {pid}")
    return f"{pid}:{fields[19].decode()}"


@functools.cache
def _own_identity(pid: int) -> str:
    # Asked for every claim: read /proc once per process (the pid is the key, so a forked
    # child never reuses its parent's answer).
    return process_identity(pid)


def identity_alive(identity: str) -> bool:
    """Whether the process ``identity`` names still runs (not a zombie, not a recycled pid)."""
    pid_text, _, start = identity.partition(":")
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    fields = stat_fields(pid) if pid > 0 else None
    return fields is not None and fields[0] not in (b"Z", b"X") and fields[19].decode() == start
