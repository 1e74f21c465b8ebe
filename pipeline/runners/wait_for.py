"""``uses: wait_for`` — wait until a path exists or a URL answers 2xx.

The condition is checked every ``interval``; ``stable_for`` asks that it hold that long without
change before the step succeeds: for a path, its size and modification time stay the same (a
file still being written is not taken); for a URL, every answer in that window is 2xx. After
``timeout`` (default 5m) the step fails with what was seen last.
"""

from __future__ import annotations

import math
import os
from collections.abc import Awaitable, Callable, Hashable, Mapping
from pathlib import Path
from typing import Any

import httpx
import trio

from pipeline.errors import RunnerError
from pipeline.notation import short_duration
from pipeline.runners import StepContext
from pipeline.runners.args import duration_arg
from pipeline.runners.http import describe_error, mask_url, ssl_context

DEFAULT_TIMEOUT = 300.0
DEFAULT_INTERVAL = 1.0
MIN_INTERVAL = 0.01  # `interval: 0` must not spin the daemon's loop
PROBE_TIMEOUT = 10.0  # one check of a URL

# A check says whether the condition holds, a value that changes whenever what it watches
# changes (for stable_for), and what it saw, in words, for the log and the final error.
Check = Callable[[], Awaitable[tuple[bool, Hashable, str]]]


async def run(args: Mapping[str, Any], ctx: StepContext) -> None:
    path, url = args.get("path"), args.get("url")
    if (path is None) == (url is None):
        raise RunnerError("give exactly one of path and url")
    timeout = duration_arg(args, "timeout", DEFAULT_TIMEOUT)
    interval = max(duration_arg(args, "interval", DEFAULT_INTERVAL), MIN_INTERVAL)
    stable_for = duration_arg(args, "stable_for", 0.0)
    for key, value in (("path", path), ("url", url)):
        if value is not None and (not isinstance(value, str) or not value):
            raise RunnerError(f"{key} must be a non-empty string, not {value!r}")
    async with httpx.AsyncClient(verify=ssl_context(None), follow_redirects=True,
                                 trust_env=False, timeout=None) as client:
        if isinstance(path, str):
            watch = Watch(path, check_path(resolve(path, ctx.cwd)), interval=interval,
                          stable_for=stable_for, log=ctx.log)
        else:
            assert isinstance(url, str)
            watch = Watch(mask_url(url), check_url(client, url), interval=interval,
                          stable_for=stable_for, log=ctx.log)
        with trio.move_on_after(timeout if timeout > 0 else math.inf):
            await watch.run()
            return
    raise RunnerError(f"gave up after {short_duration(timeout)}: {watch.what} {watch.describe()}")


class Watch:
    """Checks a condition every ``interval`` until it has held unchanged for ``stable_for``."""

    def __init__(self, what: str, check: Check, *, interval: float, stable_for: float,
                 log: Callable[[str], None]) -> None:
        self.what = what
        self.check = check
        self.interval = interval
        self.stable_for = stable_for
        self.log = log
        self.seen = "not checked yet"
        self.since: float | None = None  # when the condition last became true or changed

    def describe(self) -> str:
        if self.since is not None:
            return f"{self.seen}, but not unchanged for {short_duration(self.stable_for)}"
        return self.seen

    async def run(self) -> None:
        begin = trio.current_time()
        said = None
        last: Hashable = None
        told_stable = False
        while True:
            ok, state, self.seen = await self.check()
            now = trio.current_time()
            if not ok:
                self.since = None
            elif self.since is None or state != last:
                self.since = now
            last = state
            if self.seen != said:
                self.log(f"[wait_for] {self.what} {self.seen}")
                said = self.seen
            if self.since is None:
                await trio.sleep(self.interval)
                continue
            if now - self.since >= self.stable_for:
                self.log(f"[wait_for] {self.what} ready after {now - begin:.1f}s")
                return
            if not told_stable:
                self.log(f"[wait_for] {self.what} waiting until it has stayed so for "
                         f"{short_duration(self.stable_for)}")
                told_stable = True
            pause = min(self.interval, self.since + self.stable_for - now)
            await trio.sleep(max(pause, MIN_INTERVAL))


def resolve(path: str, cwd: str | None) -> Path:
    """``path`` with ``~`` expanded, relative to the step's working directory."""
    where = Path(os.path.expanduser(path))
    return Path(cwd) / where if cwd is not None else where  # an absolute `where` stays so


def check_path(path: Path) -> Check:
    async def check() -> tuple[bool, Hashable, str]:
        # In a thread: a stat on a hung network mount must not freeze the daemon.
        try:
            st = await trio.to_thread.run_sync(os.stat, path, abandon_on_cancel=True)
        except FileNotFoundError:
            return False, None, "does not exist"
        except OSError as exc:
            return False, None, f"cannot be read: {exc.strerror or exc}"
        return True, (st.st_size, st.st_mtime_ns, st.st_ino), "exists"

    return check


def check_url(client: httpx.AsyncClient, url: str) -> Check:
    async def check() -> tuple[bool, Hashable, str]:
        try:
            with trio.fail_after(PROBE_TIMEOUT):
                async with client.stream("GET", url) as response:
                    status = response.status_code
        except trio.TooSlowError:
            return False, None, f"no answer within {short_duration(PROBE_TIMEOUT)}"
        except httpx.HTTPError as exc:
            return False, None, f"failed: {describe_error(exc)}"
        return 200 <= status < 300, None, f"answered {status}"

    return check
