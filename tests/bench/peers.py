"""The peers measured beside pipeline on the same DAGs: Luigi and Prefect 3.

They never go into the project's environment: ``bin/bench`` makes a virtual environment of
their own, ``.bench-venv`` in the checkout, from the same interpreter as ``.venv``, and runs
them there as whole processes. A peer that cannot be installed is reported as such and the
benchmarks carry on without it.
"""

from __future__ import annotations

import json
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


@dataclass
class Peers:
    versions: dict[str, str] = field(default_factory=dict)  # installed peer -> version
    missing: dict[str, str] = field(default_factory=dict)  # peer -> why it is not measured

    def has(self, name: str) -> bool:
        return name in self.versions


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


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines()
             if line.strip() and not line.startswith("WARNING")]
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

