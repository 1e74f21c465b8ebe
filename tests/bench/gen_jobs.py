"""Generate realistic, valid job files of about 40 lines, for benchmarks and tests.

    from gen_jobs import write_jobs
    paths = write_jobs(tmp_path, 1000)

Every file is different (names, schedules, step counts, shapes of the DAG) but deterministic
for a given ``n``, so runs of a benchmark compare like with like.
"""

from __future__ import annotations

import random
from pathlib import Path

_CRONS = ["30 2 * * *", "*/15 * * * *", "0 6 * * 1-5", "@hourly", "0 0 1 * *", "5 4 * * sun",
          "0 */2 * * *", "15 3 * * MON,THU"]
_EVERY = ["30s", "1m", "5m", "15m", "1h", "1h30m"]
_ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo"]


def job_text(index: int, rng: random.Random, *, schedule: str | None = None) -> str:
    """One job file of about 40 lines; ``schedule`` (YAML text) replaces its schedule."""
    name = f"job-{index:05d}"
    override = schedule
    if rng.random() < 0.5:
        schedule = (f"schedule:\n  cron: \"{rng.choice(_CRONS)}\"\n"
                    f"  timezone: {rng.choice(_ZONES)}\n  jitter: {rng.randint(0, 60)}s\n")
    else:
        schedule = f"schedule: every {rng.choice(_EVERY)}\n"
    if override is not None:  # drawn all the same, so the rest of the file stays as it was
        schedule = override
    lines = [
        "# yaml-language-server: $schema=../schemas/job.schema.json",
        f"name: {name}",
        f"description: Generated job number {index} for benchmarks",
        schedule.rstrip("\n"),
        f"concurrency: {rng.choice(['forbid', 'allow', 'queue', 'replace'])}",
        f"timeout: {rng.randint(5, 120)}m",
        f"retries: {{limit: {rng.randint(0, 3)}, delay: 10s, backoff: exponential, "
        "max_delay: 5m}",
        "env:",
        f"  TARGET: /tmp/bench/{name}",
        "params:",
        f"  keep_days: {{type: integer, default: {rng.randint(1, 30)}}}",
        "  target: {type: string, enum: [prod, staging], default: staging}",
        "steps:",
        "  - id: prepare",
        "    run: mkdir -p \"$TARGET\"",
    ]
    previous = "prepare"
    for number in range(rng.randint(2, 3)):
        sid = f"work_{number}"
        lines += [
            f"  - id: {sid}",
            f"    needs: [{previous}]",
            "    run: |",
            f"      echo \"{index}.{number}: ${{{{ job.name }}}} for ${{{{ params.target }}}}\"",
            "      echo \"done=yes\" >> \"$PIPELINE_OUTPUT\"",
            f"    timeout: {rng.randint(1, 30)}m",
        ]
        if rng.random() < 0.5:
            previous = sid
    lines += [
        "  - id: fan",
        "    needs: [prepare]",
        "    for_each: [a, b, c]",
        "    max_parallel: 2",
        "    exec: [echo, \"${{ item }}\"]",
        "  - id: pause",
        "    needs: [fan]",
        "    uses: sleep",
        "    with: {duration: 1s}",
        "on_failure:",
        "  - id: alert",
        f"    run: echo \"job {index} - run ${{{{ run.id }}}} failed\" >&2",
    ]
    return "\n".join(lines) + "\n"


def write_jobs(directory: Path, n: int, *, seed: int = 1,
               schedule: str | None = None) -> list[Path]:
    """Write ``n`` valid job files into ``directory`` (made if missing); return their paths.

    ``schedule`` (YAML text, e.g. ``'schedule: {cron: "0 0 1 1 *"}'``) replaces every job's
    schedule, for a benchmark that must load the jobs without their firing.
    """
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = []
    for index in range(n):
        path = directory / f"job-{index:05d}.yaml"
        path.write_text(job_text(index, rng, schedule=schedule), encoding="utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":
    import sys

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "bench-jobs")
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    print(f"wrote {len(write_jobs(target, count))} job files to {target}")
