"""Measurements taken from inside a fresh process, for ``tests.bench.profile``.

    python -m tests.bench.probes imports STATEMENT      CPU of every module's execution
    python -m tests.bench.probes run JOB STATE_DIR      the parts of one ``pipeline run``
    python -m tests.bench.probes bare JOB               bare_dag.py's imports and run, apart
    python -m tests.bench.probes validate DIR           the stages of ``jobset.load_jobs``
    python -m tests.bench.probes rss STATEMENT...       RSS after each import statement
    python -m tests.bench.probes jobs DIR               what loaded jobs hold (tracemalloc)
    python -m tests.bench.probes daemon JOBS STATE [WHAT_IF,... [SETTLE]]
                                                        RSS and pymalloc of a settled daemon
                                                        (WHAT_IF: names in ``WHAT_IF``, - none)

Each prints one JSON document on stdout (the commands' own output goes to stderr or
/dev/null). Times are CPU seconds (``time.process_time``) unless named wall: on a shared
machine the CPU a process spends moves much less than its wall-clock time. The probes only
watch: where they need to see inside a function they wrap it (``_timed``) in this process,
and ``daemon`` given what-if names patches the product in its own memory, to measure what a
change would save; nothing under ``pipeline/`` is edited.
"""

from __future__ import annotations

# Only what Python's start-up has already imported, at module level: whatever this module
# imported first would not be charged to the product (the ``imports`` probe) or would be
# counted in the baseline (``rss``). The rest is imported where it is used.
import os
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    import collections
    import importlib.machinery
    from collections.abc import Callable, Sequence
    from types import ModuleType
    from typing import Any

# -- imports: CPU of each module's own execution --------------------------------------------


class _Timing:
    """Finds what the other finders find, and times each module's ``exec_module``: its own
    CPU (without the modules it imports, which are timed on their own) and who imported it."""

    def __init__(self) -> None:
        self.own: dict[str, float] = {}
        self.inclusive: dict[str, float] = {}
        self.parent: dict[str, str | None] = {}
        self._stack: list[list[Any]] = []

    def find_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None = None,
                  ) -> importlib.machinery.ModuleSpec | None:
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        spec.loader = _TimedLoader(self, name, loader)  # type: ignore[assignment]
        return spec

    def enter(self, name: str) -> None:
        self.parent[name] = self._stack[-1][0] if self._stack else None
        self._stack.append([name, 0.0])

    def leave(self, name: str, spent: float) -> None:
        _, children = self._stack.pop()
        self.own[name] = self.own.get(name, 0.0) + spent - children
        self.inclusive[name] = spent
        if self._stack:
            self._stack[-1][1] += spent


class _TimedLoader:
    def __init__(self, timing: _Timing, name: str, loader: Any) -> None:
        self._timing, self._name, self._loader = timing, name, loader

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._loader, attr)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        module: ModuleType | None = self._loader.create_module(spec)
        return module

    def exec_module(self, module: ModuleType) -> None:
        self._timing.enter(self._name)
        start = time.process_time()
        try:
            self._loader.exec_module(module)
        finally:
            self._timing.leave(self._name, time.process_time() - start)


def imports(statement: str) -> dict[str, Any]:
    """Run ``statement`` (as ``__main__``) with every import timed. Also counts the
    dataclasses built while it ran and their CPU (``dataclass`` generates and ``exec``\\ s
    each class's methods: a fixed cost per class, paid at import)."""
    import contextlib
    import dataclasses

    built = [0, 0.0]
    process_class = dataclasses._process_class  # type: ignore[attr-defined]

    def counted(*args: Any, **kwargs: Any) -> Any:
        start = time.process_time()
        try:
            return process_class(*args, **kwargs)
        finally:
            built[0] += 1
            built[1] += time.process_time() - start

    dataclasses._process_class = counted  # type: ignore[attr-defined]
    timing = _Timing()
    sys.meta_path.insert(0, timing)
    start, wall = time.process_time(), time.perf_counter()
    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(sys.stderr):
        exec(compile(statement, "<statement>", "exec"), {"__name__": "__main__"})
    return {"cpu": time.process_time() - start, "wall": time.perf_counter() - wall,
            "own": timing.own, "inclusive": timing.inclusive, "parent": timing.parent,
            "dataclasses": built[0], "dataclass_cpu": built[1]}


# -- run: the parts of one `pipeline run` after its imports ---------------------------------


Parts = dict[str, list[float]]  # label -> [wall, cpu, calls]


def _timed(owner: Any, name: str, label: str, parts: Parts) -> None:
    """Wrap ``owner.name`` so that its calls add their wall and CPU time to ``parts[label]``
    (left alone if the product no longer has it)."""
    import functools

    original = getattr(owner, name, None)
    if original is None:
        return

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return original(*args, **kwargs)
        finally:
            part = parts.setdefault(label, [0.0, 0.0, 0])
            part[0] += time.perf_counter() - wall
            part[1] += time.process_time() - cpu
            part[2] += 1

    setattr(owner, name, wrapper)


LABELS = ("find_job: read, validate and build the job",
          "configure_logging: loguru's logger.add", "open the store (WAL, migrate)",
          "  of which migrate (a fresh state: every table)", "recover (dead nodes' runs)",
          "trio.run: the run itself", "close the store (WAL checkpoint)")


def run(job: str, state: str) -> dict[str, Any]:
    """One ``pipeline run`` in this process: its imports, then the command, and inside the
    command the functions where its time goes (wall and CPU of each)."""
    wall, cpu = time.perf_counter(), time.process_time()
    import contextlib
    import shutil

    import trio

    import pipeline.cli
    import pipeline.cli.run as cli_run
    import pipeline.cli.state as cli_state
    import pipeline.foreground  # (imported by the command: timed with the imports)
    from pipeline.store import sqlite as store_sqlite

    parts: Parts = {"imports": [time.perf_counter() - wall, time.process_time() - cpu, 1]}
    for label in LABELS:  # in this order in the table, whether called or not
        parts[label] = [0.0, 0.0, 0]
    _timed(cli_run, "find_job", "find_job: read, validate and build the job", parts)
    _timed(cli_state, "configure_logging", "configure_logging: loguru's logger.add", parts)
    _timed(store_sqlite.SqliteStore, "open", "open the store (WAL, migrate)", parts)
    _timed(store_sqlite, "migrate", "  of which migrate (a fresh state: every table)", parts)
    _timed(cli_state, "recover", "recover (dead nodes' runs)", parts)
    _timed(store_sqlite.SqliteStore, "close", "close the store (WAL checkpoint)", parts)
    _timed(trio, "run", "trio.run: the run itself", parts)
    shutil.rmtree(state, ignore_errors=True)
    wall, cpu = time.perf_counter(), time.process_time()
    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(sys.stderr):
        pipeline.cli.main(["run", job, "--state-dir", state])
    parts["command"] = [time.perf_counter() - wall, time.process_time() - cpu, 1]
    return parts


def bare(job: str) -> dict[str, Any]:
    """``bare_dag.py``'s imports and its run, apart."""
    wall, cpu = time.perf_counter(), time.process_time()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bare_dag  # type: ignore[import-not-found]

    parts: Parts = {"imports": [time.perf_counter() - wall, time.process_time() - cpu, 1]}
    sys.argv = ["bare_dag.py", job]
    wall, cpu = time.perf_counter(), time.process_time()
    bare_dag.main()
    parts["command"] = [time.perf_counter() - wall, time.process_time() - cpu, 1]
    return parts


# -- validate: the stages of jobset.load_jobs -----------------------------------------------


def validate(directory: str, reps: int = 5) -> dict[str, Any]:
    """CPU of ``jobset.load_jobs`` over DIR and of its stages (medians of ``reps`` loads, after
    one that builds the validators), against libyaml's own parse of the same files."""
    import statistics
    from pathlib import Path

    import yaml

    from pipeline import build, checks, jobset, schema, spec, yamlsafe

    path = Path(directory)
    parts: Parts = {}
    loader = yamlsafe.LOADER
    _timed(yamlsafe, "parse", "parse: yamlsafe (compose, then values with positions)", parts)
    _timed(loader, "get_single_node", "  of which compose: libyaml's nodes with marks", parts)
    _timed(schema.Validators, "is_valid", "schema: jsonschema_rs is_valid", parts)
    _timed(checks, "check", "checks: what a schema cannot express", parts)
    _timed(spec, "build_job", "build_job: the frozen Job", parts)
    _timed(jobset, "_settings_among", "read: the files' bytes (and the settings file)", parts)
    _timed(spec, "find_job_files", "find_job_files: the directory listing", parts)
    _ = build  # build_job is looked up through spec, where load_file calls it
    jobset.load_jobs([path])
    totals: list[float] = []
    runs: list[Parts] = []
    for _rep in range(reps):
        parts.clear()
        start = time.process_time()
        jobset.load_jobs([path])
        totals.append(time.process_time() - start)
        runs.append({k: list(v) for k, v in parts.items()})
    files = sorted(path.glob("*.yaml"))
    floor, composed = [], []
    for _rep in range(reps):
        start = time.process_time()
        for file in files:
            yaml.load(file.read_bytes(), Loader=yaml.CSafeLoader)
        floor.append(time.process_time() - start)
        start = time.process_time()
        for file in files:
            yaml.compose(file.read_bytes(), Loader=yaml.CSafeLoader)
        composed.append(time.process_time() - start)
    stages = {label: statistics.median(r.get(label, [0.0, 0.0])[1] for r in runs)
              for label in runs[0]}
    return {"files": len(files), "load_jobs": statistics.median(totals), "stages": stages,
            "floor": statistics.median(floor), "compose": statistics.median(composed)}


# -- memory ---------------------------------------------------------------------------------


def _status() -> dict[str, float]:
    import re

    with open("/proc/self/status") as file:
        text = file.read()
    return {key: int(match[1]) / 1024 for key in ("VmRSS", "RssAnon", "RssFile", "VmHWM")
            if (match := re.search(key + r":\s+(\d+)", text))}


def rss(statements: Sequence[str]) -> list[dict[str, float]]:
    """RSS (MiB: all, anonymous, file-backed) before and after each import statement."""
    found = [_status()]
    for statement in statements:
        exec(statement, {})
        found.append(_status())
    return found


def jobs(directory: str) -> dict[str, Any]:
    """What 1,000 loaded jobs hold: tracemalloc's count of what loading leaves alive (the
    jobs, the files' bytes, the lru caches of the project's modules), and a walk over the
    jobs' objects: their sizes by type, the ``document`` trees, and how many of their strings
    are equal copies (keys and values apart)."""
    import gc
    import tracemalloc
    from pathlib import Path

    from pipeline import spec

    paths = sorted(Path(directory).glob("*.yaml"))
    spec.load_job(paths[0])  # the validators and the imports are not the jobs' memory
    gc.collect()
    tracemalloc.start(1)
    start = tracemalloc.get_traced_memory()[0]
    data = [p.read_bytes() for p in paths]
    read = tracemalloc.get_traced_memory()[0]
    loaded = [spec.load_job(p, data=d) for p, d in zip(paths, data, strict=True)]
    gc.collect()
    built = tracemalloc.get_traced_memory()[0]
    caches = {f"{v.__module__}.{v.__qualname__}": v
              for m in list(sys.modules.values()) if m.__name__.startswith("pipeline")
              for v in vars(m).values() if hasattr(v, "cache_info")}
    entries = {name: cache.cache_info().currsize for name, cache in caches.items()
               if cache.cache_info().currsize}
    for cache in caches.values():
        cache.cache_clear()
    gc.collect()
    cleared = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    walked = _Walk()
    documents = sum(walked.size(job.document) for job in loaded)
    for job in loaded:
        walked.size(job)
    first = loaded[0]
    step = first.steps[0]
    return {
        "jobs": len(loaded), "bytes_kept": read - start, "jobs_and_caches": built - read,
        "caches": built - cleared, "cache_entries": entries,
        "walked": walked.total, "documents": documents,
        "by_type": dict(walked.by_type.most_common(10)),
        "counts": dict(walked.counts.most_common(10)),
        "key_strings": sum(walked.keys.values()), "key_distinct": len(walked.keys),
        "key_copies": sum((n - 1) * sys.getsizeof(s) for s, n in walked.keys.items()),
        "value_strings": sum(walked.values.values()), "value_distinct": len(walked.values),
        "value_copies": sum((n - 1) * sys.getsizeof(s) for s, n in walked.values.items()),
        "step_fields": len(vars(step)), "step_dict": sys.getsizeof(vars(step)),
        "step_object": sys.getsizeof(step),
        "steps_a_job": sum(len(j.steps) + len(j.on_success) + len(j.on_failure)
                           + len(j.finally_) for j in loaded) / len(loaded),
    }


class _Walk:
    """Sizes (``sys.getsizeof``) of every object reachable from what it is given, each once:
    the project's instances (and their ``__dict__``), containers, mapping proxies (and the
    dicts behind them), strings; enum members, types and modules are shared and left out."""

    def __init__(self) -> None:
        import collections
        import enum

        self.total = 0
        self.by_type: collections.Counter[str] = collections.Counter()
        self.counts: collections.Counter[str] = collections.Counter()
        self.keys: collections.Counter[str] = collections.Counter()
        self.values: collections.Counter[str] = collections.Counter()
        self._seen: set[int] = {id(None), id(True), id(False)}
        for module in list(sys.modules.values()):
            for value in list(vars(module).values()):
                if isinstance(value, type) and issubclass(value, enum.Enum):
                    self._seen.update(id(member) for member in value)

    def _add(self, obj: object, kind: str) -> None:
        size = sys.getsizeof(obj)
        self.total += size
        self.by_type[kind] += size
        self.counts[kind] += 1

    def size(self, root: object) -> int:
        before = self.total
        stack: list[Any] = [root]
        while stack:
            obj = stack.pop()
            if id(obj) in self._seen or isinstance(obj, type | type(sys)) or callable(obj):
                continue
            self._seen.add(id(obj))
            kind = type(obj).__name__
            if isinstance(obj, str):
                self._add(obj, "str")
                self.values[obj] += 1
                continue
            if type(obj).__name__ == "mappingproxy" or isinstance(obj, dict):
                inner = dict(obj)
                self._add(obj, kind)
                if kind == "mappingproxy":  # the dict behind it: the proxy's only content
                    self._add(inner, "dict")
                for key in obj:
                    if isinstance(key, str) and id(key) not in self._seen:
                        self._seen.add(id(key))
                        self._add(key, "str")
                        self.keys[key] += 1
                stack.extend(obj.values())
            elif isinstance(obj, list | tuple | set | frozenset):
                self._add(obj, kind)
                stack.extend(obj)
            elif hasattr(obj, "__dict__") and type(obj).__module__.startswith("pipeline"):
                self._add(obj, kind)
                self._add(vars(obj), "(instance __dict__)")
                stack.extend(vars(obj).values())
            else:
                self._add(obj, kind)
        return self.total - before


# What-if patches for the ``daemon`` probe: each stands for a change to the product, applied
# in memory, so that the RSS it would save is measured rather than guessed.
def _intern_keys() -> None:
    from pipeline import yamlsafe

    mapping = yamlsafe._Builder.mapping

    def interned(self: Any, node: Any, depth: int) -> dict[str, Any]:
        return {sys.intern(k) if k.__class__ is str else k: v
                for k, v in mapping(self, node, depth).items()}

    yamlsafe._Builder.mapping = interned  # type: ignore[method-assign]


def _intern_values() -> None:
    from pipeline import yamlsafe

    plain = yamlsafe._plain

    def interned(value: str) -> Any:
        result = plain(value)
        return sys.intern(result) if result.__class__ is str and len(result) < 40 else result

    yamlsafe._plain = interned


def _small_caches() -> None:
    import functools

    from pipeline import expr

    expr.references = functools.lru_cache(maxsize=64)(expr.references.__wrapped__)
    expr._split = functools.lru_cache(maxsize=64)(expr._split.__wrapped__)


def _drop_sources() -> None:
    from pipeline import watch

    remember = watch.Catalog._remember

    def dropped(self: Any) -> None:
        remember(self)
        for seen in self._seen.values():
            seen.source = None

    watch.Catalog._remember = dropped  # type: ignore[method-assign]


WHAT_IF: dict[str, tuple[str, Callable[[], None]]] = {
    "intern-keys": ("mapping keys interned as YAML is read (yamlsafe)", _intern_keys),
    "intern-values": ("plain scalars under 40 characters interned", _intern_values),
    "small-caches": ("expr.references and expr._split cached 64 deep, not 4,096 / 1,024",
                     _small_caches),
    "drop-sources": ("the watcher forgets each file's bytes once it has remembered them",
                     _drop_sources),
}


def daemon(jobs_dir: str, state: str, what_if: Sequence[str], settle: float) -> dict[str, Any]:
    """``pipeline serve --no-http`` in this process; ``settle`` s after it is up (daemon.json),
    its RSS, pymalloc's arenas and the collector's state."""
    import contextlib
    import gc
    import signal
    import threading
    from pathlib import Path

    for name in what_if:
        WHAT_IF[name][1]()
    found: dict[str, Any] = {}

    def watch() -> None:
        while not (Path(state) / "daemon.json").exists():
            time.sleep(0.1)
        time.sleep(settle)
        found.update(_status())
        found.update(_pymalloc())
        found["gc_frozen"] = gc.get_freeze_count()
        found["gc_threshold"] = gc.get_threshold()
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()
    import pipeline.cli

    with contextlib.suppress(SystemExit):
        pipeline.cli.main(["serve", "--no-http", "--jobs-dir", jobs_dir, "--state-dir", state])
    return found


def _pymalloc() -> dict[str, int]:
    """pymalloc's arenas (1 MiB each) and the bytes in their used and free blocks, from
    ``sys._debugmallocstats`` (which writes to the C stderr)."""
    import re

    read, write = os.pipe()
    saved = os.dup(2)
    os.dup2(write, 2)
    try:
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(write)
        os.close(saved)
    chunks = []
    while chunk := os.read(read, 1 << 16):
        chunks.append(chunk)
    os.close(read)
    text = b"".join(chunks).decode()

    def number(label: str) -> int:
        match = re.search(re.escape(label) + r"\s*=\s*([\d,]+)", text)
        return int(match[1].replace(",", "")) if match else 0

    return {"arenas": number("# arenas allocated current"),
            "used_blocks": number("# bytes in allocated blocks"),
            "free_blocks": number("# bytes in available blocks")}


# -- the command line -----------------------------------------------------------------------


def main(argv: Sequence[str]) -> int:
    import contextlib

    what, *args = argv
    result: Any
    # The product's own prints go to stderr: stdout carries the one JSON document.
    with contextlib.redirect_stdout(sys.stderr):
        if what == "imports":
            result = imports(args[0])
        elif what == "run":
            result = run(args[0], args[1])
        elif what == "bare":
            result = bare(args[0])
        elif what == "validate":
            result = validate(args[0])
        elif what == "rss":
            result = rss(args)
        elif what == "jobs":
            result = jobs(args[0])
        elif what == "daemon":
            names = args[2].split(",") if len(args) > 2 and args[2] != "-" else []
            result = daemon(args[0], args[1], names, float(args[3]) if len(args) > 3 else 5.0)
        else:
            print(f"unknown probe {what!r}", file=sys.stderr)
            return 2
    import json

    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
