"""The baseline of fire lateness: a bare trio loop over a heap of fire times.

    python tests/bench/bare_loop.py --jobs N --out FILE

N jobs fire every second, all at the same instant (whole seconds, as ``every: 1s`` does). The
loop sleeps until the earliest fire, then starts one task per due fire, and the task only
records when it started: the least a scheduler that runs each fire as a task can do. Prints
"ready" once firing; on SIGTERM writes [[scheduled, started], ...] (epoch seconds) to FILE.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import signal
import time
from pathlib import Path

import trio


async def fire_forever(jobs: int, samples: list[tuple[float, float]]) -> None:
    first = float(math.floor(time.time()) + 2)
    heap = [(first, job) for job in range(jobs)]

    async def run(fire: float) -> None:
        samples.append((fire, time.time()))

    async with trio.open_nursery() as nursery:
        while True:
            await trio.sleep_until(trio.current_time() + heap[0][0] - time.time())
            now = time.time()
            while heap[0][0] <= now:
                fire, job = heapq.heappop(heap)
                nursery.start_soon(run, fire)
                heapq.heappush(heap, (fire + 1.0, job))


async def main(jobs: int) -> list[tuple[float, float]]:
    samples: list[tuple[float, float]] = []
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fire_forever, jobs, samples)
            print("ready", flush=True)
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()
    return samples


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.write_text(json.dumps(trio.run(main, args.jobs)))
