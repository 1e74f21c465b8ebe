"""Peer baseline of fire lateness: APScheduler 3's BackgroundScheduler, whole process.

    python tests/bench/aps_loop.py --jobs N --out FILE [--command CMD]

N jobs on an IntervalTrigger of one second, all starting on the same whole second, run by the
default executor (a pool of 10 threads). Each job's actual start is recorded as the executor's
worker thread begins it, beside the scheduled run time APScheduler hands that thread. With
``--command``, each job runs ``bash -e -o pipefail -c CMD`` with ``subprocess.run`` in that
thread (its own session, ``PIPELINE_FIRE_TIME`` set to the scheduled time as pipeline sets
it), as an APScheduler user would. Prints "ready" once started; on SIGTERM writes
[[scheduled, started], ...] (epoch seconds) to FILE.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from apscheduler.executors import pool
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

samples: list[tuple[float, float]] = []
_run_job = pool.run_job
SHELL = [shutil.which("bash") or "/bin/bash", "-e", "-o", "pipefail", "-c"]
fire_of = threading.local()  # the scheduled time of the job this worker thread runs


def timed_run_job(job: Any, jobstore_alias: str, run_times: list[datetime],
                  logger_name: str) -> Any:
    """What the pool's worker thread calls for each job: note when it really began."""
    started = time.time()
    samples.extend((t.timestamp(), started) for t in run_times)
    fire_of.time = run_times[-1]
    return _run_job(job, jobstore_alias, run_times, logger_name)


def nothing() -> None:
    pass


def spawn(command: str) -> None:
    env = {**os.environ, "PIPELINE_FIRE_TIME": fire_of.time.astimezone(UTC).isoformat()}
    subprocess.run([*SHELL, command], env=env, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, start_new_session=True, check=False)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--command", default=None, help="run this shell command per fire")
    args = parser.parse_args()
    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # the scheduler's threads inherit this
    pool.run_job = timed_run_job
    scheduler = BackgroundScheduler(timezone=UTC)
    first = datetime.fromtimestamp(math.floor(time.time()) + 2, UTC)
    for job in range(args.jobs):
        scheduler.add_job(nothing if args.command is None else spawn,
                          IntervalTrigger(seconds=1, start_date=first, timezone=UTC),
                          args=() if args.command is None else (args.command,),
                          id=f"job-{job}", misfire_grace_time=30)
    scheduler.start()
    print("ready", flush=True)
    signal.sigwait(stop)
    scheduler.shutdown(wait=False)
    args.out.write_text(json.dumps(list(samples)))
