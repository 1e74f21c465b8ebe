"""The baseline of fire lateness: a bare trio loop over a heap of fire times.

    python tests/bench/bare_loop.py --jobs N --out FILE [--command CMD] [--at EPOCH]

N jobs fire every second, all at the same instant (whole seconds, as ``every: 1s`` does), or,
with ``--at``, once each, all at that instant (a burst, as N jobs with the same ``at:`` do).
The loop sleeps until the earliest fire, then starts one task per due fire. Without
``--command`` the task only records when it started: the least a scheduler that runs each fire
as a task can do. With ``--command`` the task then spawns ``bash -e -o pipefail -c CMD`` (what
a ``run:`` step is) with ``trio.run_process`` in a session of its own, with
``PIPELINE_FIRE_TIME`` set as pipeline sets it: the least a trio scheduler that runs each fire
as a process can do. Prints "ready" once firing; on SIGTERM writes [[scheduled, started],
...] (epoch seconds, the task's start) to FILE.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import shutil
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import trio

SHELL = [shutil.which("bash") or "/bin/bash", "-e", "-o", "pipefail", "-c"]


async def fire_forever(jobs: int, samples: list[tuple[float, float]], command: str | None,
                       at: float | None) -> None:
    first = at if at is not None else float(math.floor(time.time()) + 2)
    heap = [(first, job) for job in range(jobs)]
    base_env = dict(os.environ)

    async def run(fire: float) -> None:
        samples.append((fire, time.time()))
        if command is not None:
            env = {**base_env,
                   "PIPELINE_FIRE_TIME": datetime.fromtimestamp(fire, UTC).isoformat()}
            await trio.run_process([*SHELL, command], env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, start_new_session=True,
                                   check=False)

    async with trio.open_nursery() as nursery:
        while heap:
            await trio.sleep_until(trio.current_time() + heap[0][0] - time.time())
            now = time.time()
            while heap and heap[0][0] <= now:
                fire, job = heapq.heappop(heap)
                nursery.start_soon(run, fire)
                if at is None:
                    heapq.heappush(heap, (fire + 1.0, job))
        await trio.sleep_forever()  # a burst is over: idle until told to stop


async def main(jobs: int, command: str | None, at: float | None) -> list[tuple[float, float]]:
    samples: list[tuple[float, float]] = []
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fire_forever, jobs, samples, command, at)
            print("ready", flush=True)
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()
    return samples


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--command", default=None, help="spawn this shell command per fire")
    parser.add_argument("--at", type=float, default=None,
                        help="fire every job once, at this epoch second")
    args = parser.parse_args()
    args.out.write_text(json.dumps(trio.run(main, args.jobs, args.command, args.at)))
