"""The baseline of pool hand-over: a bare ``trio.Semaphore`` of one slot.

    python tests/bench/bare_pool.py --jobs N --command CMD

N tasks, started at once, each take the semaphore, spawn ``bash -e -o pipefail -c
CMD`` (what a ``run:`` step is) with ``trio.run_process`` in a session of its own and
``PIPELINE_JOB`` set as pipeline sets it, and give the slot back when the process has been
reaped. The least a trio program that hands one slot from process to process can do; the
hand-over is read from the marks the command writes. Exits when every task is done.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess

import trio

SHELL = [shutil.which("bash") or "/bin/bash", "-e", "-o", "pipefail", "-c"]


async def main(jobs: int, command: str) -> None:
    slot = trio.Semaphore(1)
    base_env = dict(os.environ)

    async def run(index: int) -> None:
        async with slot:
            await trio.run_process([*SHELL, command],
                                   env={**base_env, "PIPELINE_JOB": f"hand-{index:04d}"},
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   start_new_session=True, check=False)

    async with trio.open_nursery() as nursery:
        for index in range(jobs):
            nursery.start_soon(run, index)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--command", required=True, help="the shell command each task runs")
    args = parser.parse_args()
    trio.run(main, args.jobs, args.command)
