"""Load for the HTTP API: CONCURRENCY clients send ``GET PATH`` to BASE (a loopback address)
until REQUESTS have been answered or SECONDS have passed, whichever comes first.

    python tests/bench/api_load.py BASE PATH --concurrency 8 --requests 2000 --seconds 10

Prints {"seconds": elapsed, "latencies_ms": [...], "errors": n} as JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import time

import httpx
import trio


async def load(base: str, path: str, concurrency: int, requests: int,
               seconds: float) -> dict[str, object]:
    latencies: list[float] = []
    errors = 0
    left = requests

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal left, errors
        while left > 0:
            left -= 1
            sent = time.perf_counter()
            answer = await client.get(path)
            await answer.aread()
            latencies.append((time.perf_counter() - sent) * 1000)
            errors += answer.status_code != 200

    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:
                for _ in range(concurrency):
                    nursery.start_soon(client_loop, client)
    return {"seconds": time.perf_counter() - start, "latencies_ms": latencies,
            "errors": errors}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("path")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    if not args.base.startswith(("http://127.", "http://localhost", "http://[::1]")):
        parser.error("only a server on this machine's loopback address may be loaded")
    print(json.dumps(trio.run(load, args.base, args.path, args.concurrency, args.requests,
                              args.seconds)))
