"""``bin/bench``: run the benchmarks, print the tables, write BENCHMARKS.md.

    bin/bench                 everything, peers included (installed on first use), ≈ 30 min
    bin/bench --quick         fewer repetitions, 10 s firing windows, peers only if installed
    bin/bench --only real     one group (or several: --only real,burst,cpu); see GROUPS
    bin/bench --only torture  the fault harnesses and the loader fuzzer at full size
    bin/bench --only files    files dropped into a watched folder at once
    bin/bench --only pools    a pool's slot handed from step to step
    bin/bench --only pages    the status pages' server time over 100,000 runs
    bin/bench --only cluster  three nodes on PostgreSQL: 200 faults, load, statements, ceiling
    bin/bench --only pools --update   and its section in BENCHMARKS.md, the rest kept as it is
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from tests.bench import (
    cluster,
    dags,
    filewatch,
    pages,
    pools,
    report,
    serve,
    startup,
    steps,
    torture,
    validate,
)
from tests.bench.harness import (
    ROOT,
    BenchError,
    Children,
    Context,
    Row,
    load_average,
    machine,
    product_fingerprint,
    product_version,
    say,
    text_table,
)
from tests.bench.peers import ensure_own_venvs, ensure_peers

# In the order they run: cpu reuses what firing, real and burst measured before it.
GROUPS = ("startup", "validate", "dag", "memory", "api", "pages", "firing", "real", "burst",
          "cpu", "files", "pools", "cluster", "torture")
# In the order the report shows them, with their headings.
SECTIONS = (
    ("real", "Real steps, steady load: 100 jobs every second"),
    ("burst", "Burst: 1,000 real steps due at one instant"),
    ("cpu", "CPU per fire"),
    ("firing", "Fire lateness with steps that start no process"),
    ("dag", "Whole-process DAGs and start-up"),
    ("validate", "Validation"),
    ("startup", "CLI start-up"),
    ("memory", "Memory"),
    ("api", "HTTP API under load"),
    ("pages", "Status pages: 1,000 jobs, 100,000 runs"),
    ("files", "File arrival: files dropped at once"),
    ("pools", "Pool hand-over: a slot freed, the next waiter's step started"),
    ("cluster", "Cluster mode: three nodes on PostgreSQL"),
    ("torture", "Fault harnesses and fuzzing at full size"),
)


def interrupted(signum: int, _: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bin/bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer repetitions, 10 s windows, no peer installs")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated groups among {', '.join(GROUPS)}")
    parser.add_argument("--no-peers", action="store_true",
                        help="skip Luigi, Prefect, Airflow, Dagster and cron")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the report (default: BENCHMARKS.md for a full "
                             "run of every group, nowhere otherwise)")
    parser.add_argument("--update", action="store_true",
                        help="replace (or add) the sections of the groups run in "
                             "BENCHMARKS.md (or --out), each saying when and how it was "
                             "measured; the rest of the report stays as it was")
    args = parser.parse_args(argv)
    if args.update and args.quick:
        parser.error("--update writes the report: not with --quick's shorter runs")
    if args.only is None:  # --quick leaves out the torture runs (they take ~10 minutes)
        args.only = ",".join(g for g in GROUPS if not (args.quick and g == "torture"))
    groups = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        parser.error(f"unknown group(s): {', '.join(unknown)}")
    out = args.out
    full = set(groups) == set(GROUPS) and not args.no_peers
    if out is None and not args.quick and (full or args.update):
        out = ROOT / "BENCHMARKS.md"

    # Ctrl-C, SIGTERM and SIGHUP all end the harness through `finally`, so no child outlives
    # it (SIGINT too, even when the shell that started us in the background ignored it).
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupted)
    children = Children()
    tmp = Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    (tmp / "logs").mkdir()
    ctx = Context(quick=args.quick, tmp=tmp, children=children, peers=not args.no_peers)
    started, load_before = time.monotonic(), load_average()
    rows: dict[str, list[Row]] = {}
    notes: list[str] = []
    # What each group added to the details and commands, and how long it took (--update).
    said: dict[str, tuple[list[str], list[str], float]] = {}
    try:
        info, fingerprint = machine(), product_fingerprint()
        if "dag" in groups and ctx.peers:
            peers = ensure_peers(ctx, install=not args.quick)
            ensure_own_venvs(ctx, peers, install=not args.quick)
        else:
            peers = ensure_peers(ctx, install=False)
            peers.versions.clear()
        runs: dict[str, Callable[[], list[Row]]] = {
            "startup": lambda: startup.run(ctx),
            "validate": lambda: validate.run(ctx),
            "dag": lambda: dags.run(ctx, peers),
            "memory": lambda: serve.memory(ctx),
            "api": lambda: serve.api(ctx),
            "pages": lambda: pages.run(ctx),
            "firing": lambda: serve.lateness(ctx),
            "real": lambda: steps.real(ctx, cron=ctx.peers),
            "burst": lambda: steps.burst(ctx, cron=ctx.peers),
            "cpu": lambda: steps.cpu(ctx),
            "files": lambda: filewatch.run(ctx),
            "pools": lambda: pools.run(ctx),
            "cluster": lambda: cluster.run(ctx),
            "torture": lambda: torture.run(ctx),
        }
        for group in GROUPS:
            if group in groups:
                details, commands = len(ctx.details), len(ctx.commands)
                began = time.monotonic()
                found = runs[group]()
                say(text_table(found) + "\n")
                rows[group] = found
                said[group] = (ctx.details[details:], ctx.commands[commands:],
                               time.monotonic() - began)
        if "dag" in groups and ctx.peers:
            notes += peers.notes()  # after the DAGs: a peer that failed to set up says why
    except KeyboardInterrupt:
        say("\nbench: interrupted; ending every process it started")
        return 130
    except BenchError as exc:
        say(f"bench: {exc}")
        print(text_table([row for found in rows.values() for row in found]))
        return 1
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C must not stop the clean-up
        children.close()
        shutil.rmtree(tmp, ignore_errors=True)
    sections = [(title, rows[group]) for group, title in SECTIONS if group in rows]
    for title, found in sections:
        print(f"\n{title}\n{text_table(found)}", flush=True)
    took = time.monotonic() - started
    command_line = "bin/bench" + "".join(f" {shlex.quote(a)}"
                                         for a in (argv if argv is not None else sys.argv[1:]))
    if product_fingerprint() != fingerprint:
        # The product changed under the run (another session committed or edited): say so
        # rather than credit one version with another's figures.
        info["pipeline"] += (f" at the start, {product_version()} at the end: the product "
                             "changed during the run; re-run on a still tree")
        say(f"bench: warning: {info['pipeline']}")
    if out is not None and args.update and not full:
        document = out.read_text() if out.exists() else ""
        titles = dict(SECTIONS)
        order = [group for group, _ in SECTIONS]
        for group in (g for g in order if g in rows):
            details, commands, spent = said[group]
            text = report.section(group, titles[group], rows[group], machine=info,
                                  command_line=command_line, took=spent,
                                  load=(load_before, load_average()), details=details,
                                  commands=commands)
            later = [titles[g] for g in order[order.index(group) + 1:]]
            document = report.splice(document, group, titles[group], text, later)
        out.write_text(document)
        say(f"bench: updated the section(s) of {', '.join(rows)} in {out}")
    elif out is not None:
        out.write_text(report.render(ctx, sections, info, command_line, took,
                                     (load_before, load_average()), notes))
        say(f"bench: wrote {out}")
    missed = [r for _, found in sections for r in found if r.met is False]
    say(f"bench: {len(missed)} target(s) missed" if missed else "bench: every target met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
