"""The peers measured beside pipeline on the same DAGs: Luigi, Prefect 3, Airflow 2.10, Dagster.

They never go into the project's environment (and ``bin/test`` never installs them): ``bin/bench``
makes virtual environments of their own, from the same interpreter as ``.venv``, and runs them
there as whole processes. Luigi and Prefect share ``.bench-venv`` in the checkout; Airflow and
Dagster, which pin much of what they import, each get one under the cache directory
(``$PIPELINE_BENCH_CACHE``, default ``~/.cache/pipeline-bench``), shared by every checkout.
Airflow is installed as its documentation says, with the official constraints file for its
version and this Python; where that file cannot be downloaded (``$PIPELINE_BENCH_AIRFLOW_
CONSTRAINTS`` may name a local copy), it is installed without, and the report says so. A peer
that cannot be installed is reported as such and the benchmarks carry on without it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.bench.harness import CHILD_ENV, ROOT, Context, run_timed, say, wait_until

PEER_VENV = ROOT / ".bench-venv"
PEER_PYTHON = PEER_VENV / "bin" / "python"
REQUIREMENTS = {"luigi": "luigi>=3.5,<4", "prefect": "prefect>=3,<4"}
INSTALL_TIMEOUT = 900.0

CACHE = Path(os.environ.get("PIPELINE_BENCH_CACHE")
             or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
             / "pipeline-bench")
AIRFLOW_VERSION = "2.10.5"
AIRFLOW_CONSTRAINTS = ("https://raw.githubusercontent.com/apache/airflow/"
                       "constraints-{version}/constraints-{python}.txt")


@dataclass(frozen=True)
class OwnVenv:
    """A peer with a virtual environment of its own under CACHE."""

    name: str  # as the peer is called in the report
    distribution: str  # whose version is reported
    requirement: str
    directory: str  # under CACHE
    constraints: str = ""  # URL template of a constraints file ({version}, {python})

    @property
    def venv(self) -> Path:
        return CACHE / self.directory

    @property
    def bin(self) -> Path:
        return self.venv / "bin"


OWN_VENVS = (
    OwnVenv("airflow", "apache-airflow", f"apache-airflow=={AIRFLOW_VERSION}", "airflow-2.10",
            AIRFLOW_CONSTRAINTS),
    OwnVenv("dagster", "dagster", "dagster>=1.8,<2", "dagster"),
)
STAMP = ".pipeline-bench.json"  # written once an install succeeded: its version and how


@dataclass
class Peers:
    versions: dict[str, str] = field(default_factory=dict)  # installed peer -> version
    missing: dict[str, str] = field(default_factory=dict)  # peer -> why it is not measured
    where: dict[str, str] = field(default_factory=dict)  # peer -> its environment, and how

    def has(self, name: str) -> bool:
        return name in self.versions

    def notes(self) -> list[str]:
        return ([f"Peer {name} {version} measured in {self.where.get(name, '.bench-venv')}."
                 for name, version in sorted(self.versions.items())]
                + [f"Peer {name} not measured: {why}."
                   for name, why in sorted(self.missing.items())])


def installed() -> dict[str, str]:
    """The peers importable in the peers' environment, with their versions."""
    if not PEER_PYTHON.exists():
        return {}
    probe = ("import importlib.metadata as m, importlib.util as u, json\n"
             f"names = {sorted(REQUIREMENTS)!r}\n"
             "print(json.dumps({n: m.version(n) for n in names if u.find_spec(n)}))")
    done = subprocess.run([str(PEER_PYTHON), "-c", probe], capture_output=True, text=True,
                          check=False, timeout=60)
    return json.loads(done.stdout) if done.returncode == 0 else {}


def ensure_peers(ctx: Context, *, install: bool) -> Peers:
    """Find the peers, installing the missing ones first when ``install``."""
    peers = Peers(versions=installed())
    wanted = [name for name in REQUIREMENTS if name not in peers.versions]
    if wanted and not install:
        for name in wanted:
            peers.missing[name] = "not installed in .bench-venv (--quick installs nothing)"
        return peers
    if wanted and not PEER_PYTHON.exists():
        say(f"bench: creating {PEER_VENV.relative_to(ROOT)} for the peers")
        # The interpreter .venv was made from, so every contender runs on the same Python.
        base: str = getattr(sys, "_base_executable", sys.executable)
        made = run_timed(ctx.children, [base, "-m", "venv", PEER_VENV],
                         log=ctx.log("peers-venv"), check=False)
        if made.status != 0:
            for name in wanted:
                peers.missing[name] = f"cannot create {PEER_VENV.name}: " + _last_line(
                    ctx.log("peers-venv"))
            return peers
    for name in wanted:
        say(f"bench: installing {REQUIREMENTS[name]} into {PEER_VENV.name} (once)")
        log = PEER_VENV / f"pip-{name}.log"
        done = run_timed(ctx.children, [PEER_PYTHON, "-m", "pip", "install", "--quiet",
                                        REQUIREMENTS[name]], log=log, check=False)
        if done.status != 0:
            peers.missing[name] = f"pip install {REQUIREMENTS[name]} failed: {_last_line(log)}"
    peers.versions = installed()
    for name in wanted:
        if name not in peers.versions and name not in peers.missing:
            peers.missing[name] = "installed, but it does not import"
    return peers


def ensure_own_venvs(ctx: Context, peers: Peers, *, install: bool) -> None:
    """Find (or, when ``install``, make) the peers with environments of their own; record them
    in ``peers``. Failures are recorded, never raised."""
    for peer in OWN_VENVS:
        stamp = peer.venv / STAMP
        if not stamp.exists() and install:
            failure = _install_own(ctx, peer)
            if failure:
                say(f"bench: {peer.name} not measured: {failure}")
                peers.missing[peer.name] = failure
        if stamp.exists():
            found = json.loads(stamp.read_text())
            peers.versions[peer.name] = found["version"]
            peers.where[peer.name] = f"{_shown(peer.venv)} ({found['how']})"
        elif peer.name not in peers.missing:
            peers.missing[peer.name] = (f"not installed in {_shown(peer.venv)} (--quick installs "
                                        "nothing)")


def _install_own(ctx: Context, peer: OwnVenv) -> str:
    """Install ``peer`` into its environment; what went wrong, or "" if nothing did."""
    log = ctx.log(f"peer-{peer.name}-install")
    if not (peer.bin / "python").exists():
        say(f"bench: creating {_shown(peer.venv)} for {peer.name}")
        peer.venv.parent.mkdir(parents=True, exist_ok=True)
        base: str = getattr(sys, "_base_executable", sys.executable)
        made = run_timed(ctx.children, [base, "-m", "venv", peer.venv], log=log, check=False)
        if made.status != 0:
            return f"cannot create {_shown(peer.venv)}: {_last_line(log)}"
    how = "pip install " + peer.requirement
    extra: list[str | Path] = []
    if peer.constraints:
        constraints, why = _constraints(peer)
        if constraints is not None:
            extra = ["--constraint", constraints]
            how += " with the official constraints file"
        else:
            how += f" without the official constraints file ({why})"
    say(f"bench: installing {peer.requirement} into {_shown(peer.venv)} (once, a few minutes)")
    done = run_timed(ctx.children, [peer.bin / "python", "-m", "pip", "install", "--quiet",
                                    peer.requirement, *extra], log=log, check=False)
    if done.status != 0:
        return f"{how} failed: {_last_line(log)}"
    version = ("import importlib.metadata as m; "
               f"print(m.version({peer.distribution!r}))")
    probe = subprocess.run([str(peer.bin / "python"), "-c", version], capture_output=True,
                           text=True, check=False, timeout=120)
    if probe.returncode != 0:
        return "installed, but its version cannot be read"
    (peer.venv / STAMP).write_text(json.dumps({"version": probe.stdout.strip(), "how": how}))
    return ""


def _constraints(peer: OwnVenv) -> tuple[Path | None, str]:
    """The constraints file for ``peer`` and the venv's Python: a local copy named by
    $PIPELINE_BENCH_AIRFLOW_CONSTRAINTS, the cached download, or a fresh download."""
    local = os.environ.get("PIPELINE_BENCH_AIRFLOW_CONSTRAINTS")
    if local:
        return (Path(local), "") if Path(local).is_file() else (None, f"no file {local}")
    python = subprocess.run([str(peer.bin / "python"), "-c",
                             "import sys; print('%d.%d' % sys.version_info[:2])"],
                            capture_output=True, text=True, check=True).stdout.strip()
    url = peer.constraints.format(version=AIRFLOW_VERSION, python=python)
    cached = CACHE / f"constraints-{peer.name}-{AIRFLOW_VERSION}-{python}.txt"
    if cached.exists():
        return cached, ""
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            cached.write_bytes(answer.read())
    except (urllib.error.URLError, OSError) as exc:
        return None, f"{url} unreachable: {getattr(exc, 'reason', exc)}"
    return cached, ""


def _shown(path: Path) -> str:
    home = str(Path.home())
    return "~" + str(path)[len(home):] if str(path).startswith(home + "/") else str(path)


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines()
             if line.strip() and not line.startswith(("WARNING", "[notice]"))]
    return lines[-1].strip() if lines else "no output"


def prefect_env(home: Path) -> dict[str, str]:
    """Prefect's settings for the benchmark: its own home (database, profiles) in the scratch
    directory, no telemetry, and no server unless the caller adds PREFECT_API_URL."""
    env = {k: v for k, v in CHILD_ENV.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), DO_NOT_TRACK="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def prefect_server(ctx: Context, home: Path) -> Iterator[Mapping[str, str]]:
    """A local ``prefect server`` for the time of the block; yields the flows' environment."""
    env = prefect_env(home)
    port = free_port()
    argv: list[str | Path] = [PEER_VENV / "bin" / "prefect", "server", "start",
                              "--host", "127.0.0.1", "--port", str(port), "--no-ui",
                              "--analytics-off"]
    ctx.command(ctx.show(argv, {"PREFECT_HOME": str(home)}).replace(str(port), "PORT") + " &")
    log = ctx.log("prefect-server")
    with log.open("wb") as out:
        server = ctx.children.start(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_until(lambda: _healthy(url), timeout=180, what="prefect server start",
                   proc=server, log=log)
        yield {**env, "PREFECT_API_URL": url}
    finally:
        ctx.children.end(server, grace=15)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False

