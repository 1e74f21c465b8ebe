"""The watchdog beside a daemon: kill its steps' process groups when the daemon cannot.

Run as ``python -P _watchdog.py FENCE_AFTER GRACE`` in its own session, with its stdin a pipe
from the daemon. Standard library only, so it starts in a few milliseconds and shares nothing
with the daemon it watches. The daemon writes one line per message:

    add PGID        a step's process group exists
    remove PGID     it has ended (or been reaped)
    ping            the daemon's lease was just renewed

When the pipe closes (the daemon exited, or was killed with -9), every group still registered
gets SIGTERM, then SIGKILL after GRACE seconds, and the watchdog exits: no process outlives
its step for long even when the daemon could not clean up. When FENCE_AFTER is above zero (a
shared store, where another node may take the daemon's runs over once its lease expires) and no
ping came for FENCE_AFTER seconds, by this process's monotonic clock, the groups are killed the
same way (the daemon is frozen, partitioned, or cannot reach its database); the watchdog goes
on watching, since a daemon that comes back registers new groups.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time


def kill_groups(groups: set[int], grace: float) -> None:
    """SIGTERM every group, wait up to ``grace`` seconds for them to go, SIGKILL the rest."""
    alive = set()
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGTERM)
            alive.add(pgid)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        for pgid in list(alive):
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                alive.discard(pgid)
    for pgid in alive:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    groups.clear()


def main(argv: list[str]) -> int:
    fence_after, grace = float(argv[1]), float(argv[2])
    groups: set[int] = set()
    last_ping = time.monotonic()
    fenced = False
    buffered = b""
    fd = sys.stdin.fileno()
    while True:
        timeout = None
        if fence_after > 0 and not fenced:
            timeout = max(0.0, last_ping + fence_after - time.monotonic())
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            if groups:
                kill_groups(groups, grace)
            fenced = True  # until the next ping: the groups registered meanwhile are the new
            continue
        chunk = os.read(fd, 65536)
        if not chunk:  # the daemon is gone
            kill_groups(groups, grace)
            return 0
        buffered += chunk
        *lines, buffered = buffered.split(b"\n")
        for line in lines:
            word, _, value = line.decode("ascii", "replace").partition(" ")
            if word == "ping":
                last_ping = time.monotonic()
                fenced = False
            elif word == "add" and value.isdigit():
                groups.add(int(value))
            elif word == "remove" and value.isdigit():
                groups.discard(int(value))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
