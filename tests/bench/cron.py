"""Debian's cron daemon as a contender: the same commands, fired on a minute.

cron(8) reads fixed paths (/etc/crontab, /etc/cron.d, /var/spool/cron/crontabs, its pid file in
/run), so it runs in a mount namespace of its own (``unshare --mount``) where those paths are
the benchmark's: /etc/cron.d is a directory of the scratch area holding one file per burst,
/etc/crontab an empty file, the spool and /run empty tmpfs mounts. The machine's own crontabs
are neither run nor touched, a cron already running elsewhere does not matter, and everything
goes away with the process: nothing to clean up but the scratch directory.

This needs root (mounts), ``unshare`` (util-linux) and the ``cron`` package
(``apt-get install cron``); ``unavailable()`` says what is missing.

cron(8) wakes once a minute, one second after the minute at the earliest (it sleeps
``target − now + 1`` whole seconds), then forks every due job in turn; each child opens a PAM
session and runs ``/bin/sh -c`` (here ``SHELL=/bin/bash``). That is how the figures are made:
the fire time is the minute, the start is the command's own clock.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tests.bench.harness import Context

# Inside the namespace: the scratch cron.d over the real one, empty stand-ins for the rest.
NAMESPACE_SCRIPT = """\
set -e
mount --bind "$1/cron.d" /etc/cron.d
mount --bind "$1/crontab" /etc/crontab
mount -t tmpfs -o mode=1730 pipeline-bench-spool /var/spool/cron/crontabs
mount -t tmpfs -o mode=755 pipeline-bench-run /run
exec cron -f -L 0
"""
MARGIN = 8.0  # seconds: cron must be up and have read its files before the first minute


@dataclass(frozen=True)
class Burst:
    """``jobs`` copies of ``command`` due on the minute starting at epoch second ``minute``;
    ``out`` is the file the command appends to (the caller reads it)."""

    minute: int
    jobs: int
    command: str
    out: Path


def unavailable() -> str | None:
    """Why cron cannot be measured here, or None if it can."""
    if shutil.which("cron") is None:
        return "the cron package is not installed (apt-get install cron)"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    if os.geteuid() != 0:
        return "cron needs root to run on a private crontab (a mount namespace)"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"],
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"cannot make a mount namespace: {probe.stderr.strip() or probe.returncode}"
    for path in ("/etc/cron.d", "/etc/crontab", "/var/spool/cron/crontabs"):
        if not os.path.exists(path):
            return f"{path} does not exist"
    return None


def next_minutes(count: int, *, after: float | None = None) -> list[int]:
    """``count`` consecutive minute boundaries (epoch seconds), the first at least MARGIN
    seconds away."""
    now = time.time() if after is None else after
    first = (int(now) // 60 + 1) * 60
    if first - now < MARGIN:
        first += 60
    return [first + 60 * i for i in range(count)]


def crontab(burst: Burst) -> str:
    """A /etc/cron.d file (it names the user) firing ``burst`` once, in local time as cron
    reads it. ``%`` is special in a crontab command, so it is escaped."""
    local = time.localtime(burst.minute)
    when = f"{local.tm_min} {local.tm_hour} {local.tm_mday} {local.tm_mon} *"
    fire = datetime.fromtimestamp(burst.minute, UTC).isoformat()
    command = burst.command.replace("%", "\\%")
    lines = ["SHELL=/bin/bash", "PATH=/usr/local/bin:/usr/bin:/bin",
             f"PIPELINE_FIRE_TIME={fire}", "MAILTO=\"\""]
    lines += [f"{when} root {command}"] * burst.jobs
    return "\n".join(lines) + "\n"


@contextmanager
def open_cron(ctx: Context, bursts: Sequence[Burst], name: str) -> Iterator[None]:
    """cron, in the foreground in a mount namespace of its own, with ``bursts`` as its only
    crontabs, for the time of the block."""
    work = ctx.tmp / name
    (work / "cron.d").mkdir(parents=True)
    (work / "crontab").write_text("")
    for index, burst in enumerate(bursts):
        path = work / "cron.d" / f"pipeline-bench-{index}"  # cron.d names: no dots
        path.write_text(crontab(burst))
        path.chmod(0o644)
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", NAMESPACE_SCRIPT,
            "sh", str(work)]
    ctx.command(f"unshare --mount --propagation private sh -c '<bind {ctx.show([work])}"
                "/cron.d over /etc/cron.d, an empty /etc/crontab, tmpfs spool and /run>; "
                "exec cron -f -L 0' &")
    log = ctx.log(name)
    with log.open("wb") as out:
        proc = ctx.children.start(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        time.sleep(1.0)
        if proc.poll() is not None:
            raise CronError(f"cron exited {proc.returncode}: "
                            + log.read_text(errors="replace").strip()[-500:])
        yield
    finally:
        ctx.children.end(proc, grace=5)


class CronError(Exception):
    """cron could not be started in its namespace."""

