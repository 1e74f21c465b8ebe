"""``pipeline serve``: the daemon, as a node of its store, with its HTTP endpoint."""

from __future__ import annotations

import re
from functools import partial
from typing import Any

import click
import trio

from pipeline import daemon
from pipeline.cli import Settings, configure_logging, dirs, fail, pass_settings
from pipeline.cli.remote import read_token, token_options
from pipeline.errors import PipelineError, UsageError
from pipeline.nodes import this_node
from pipeline.notation import parse_duration
from pipeline.statedir import lock_state_dir
from pipeline.store import open_store
from pipeline.store.records import NodeInfo


def node_options(name: str | None, labels: str, roles: str, max_runs: int | None,
                 listen: str | None) -> NodeInfo:
    """This daemon as a node, from its options; a usage error for a bad label or role."""
    found: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in labels.split(","))):
        key, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", key.strip()):
            raise UsageError(f"--labels: {pair!r} is not KEY=VALUE (a key is letters, digits, "
                             "'_', '.', '-')")
        found[key.strip()] = value.strip()
    chosen = frozenset(filter(None, (r.strip() for r in roles.split(","))))
    unknown = chosen - {"scheduler", "runner", "http"}
    if unknown or not chosen:
        raise UsageError(f"--roles: {', '.join(sorted(unknown)) or 'none given'}; the roles "
                         "are scheduler, runner and http")
    if name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
        raise UsageError(f"--node-name: {name!r} is not a name (letters, digits, '_', '.', "
                         "'-')")
    return this_node(name=name, roles=chosen, labels=found, max_runs=max_runs, listen=listen)


def check_jobs_dir(settings: Settings) -> None:
    """Exit 2 unless the jobs directory is a directory: a typo must not serve nothing."""
    jobs_dir = settings.jobs_dir
    if not jobs_dir.exists():
        fail(f"the jobs directory {jobs_dir} does not exist (give --jobs-dir or set "
             "PIPELINE_JOBS_DIR)", 2)
    if not jobs_dir.is_dir():
        fail(f"the jobs directory {jobs_dir} is not a directory", 2)


@click.command()
@click.option("--grace", default="30s", show_default=True, metavar="DURATION",
              help="After SIGTERM/SIGINT, how long active runs get to finish before they are "
                   "stopped and recorded as interrupted (each step's process group then gets "
                   "SIGTERM, and SIGKILL after the step's own grace, 10s by default).")
@click.option("--listen", envvar="PIPELINE_LISTEN", default="127.0.0.1:8765", show_default=True,
              metavar="HOST:PORT", help="HTTP address of the status page and API.")
@click.option("--no-http", is_flag=True, help="Serve no HTTP endpoint.")
@click.option("--read-only", is_flag=True,
              help="Serve the status page and API for looking only: the pages show no "
                   "control, and every POST and DELETE is refused (403).")
@token_options
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"],
                                               case_sensitive=False), default="INFO",
              show_default=True)
@click.option("--node-name", metavar="NAME", envvar="PIPELINE_NODE_NAME",
              help="This node's name, for people [default: host name and a short id].")
@click.option("--labels", metavar="K=V,...", envvar="PIPELINE_LABELS", default="",
              help="Labels of this node; jobs with `runs_on` run only on nodes that carry "
                   "theirs.")
@click.option("--roles", metavar="ROLES", envvar="PIPELINE_ROLES",
              default="scheduler,runner,http", show_default=True,
              help="What this node does: scheduler (makes fires), runner (runs runs), http.")
@click.option("--lease", default="30s", show_default=True, metavar="DURATION",
              help="A node that has not renewed its lease for this long is lost; its runs "
                   "are interrupted (or retried) within lease + 5s.")
@click.option("--max-runs", type=click.IntRange(1), default=None,
              help="Runs this node holds at once [default: unlimited].")
@dirs
@pass_settings
def serve(settings: Settings, grace: str, listen: str, no_http: bool, read_only: bool,
          token: str | None,
          token_file: str | None, log_format: str, log_level: str, node_name: str | None,
          labels: str, roles: str, lease: str, max_runs: int | None) -> None:
    """Run the daemon: load and watch the jobs directory, fire schedules, serve HTTP.

    The HTTP address is bound first: if it is taken, serve says so and exits 1 having
    written nothing. With --store, the daemon is one node of a cluster sharing that
    PostgreSQL database (CONTRACT §9).
    """
    settings.plugins = True  # files may start using a plug-in runner at any time

    configure_logging(log_level.upper(), log_format)
    try:
        grace_s = parse_duration(grace)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--grace") from None
    try:
        lease_s = parse_duration(lease)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--lease") from None
    node = node_options(node_name, labels, roles, max_runs, None if no_http else listen)
    if "http" not in node.roles:
        no_http = True
    token = read_token(token, token_file)
    if "scheduler" in roles or settings.jobs_dir.exists():
        check_jobs_dir(settings)  # a runner-only node runs runs from their records
    serve_http = None
    sock = None
    if not no_http:
        # The web stack (starlette, hypercorn) only for a node that serves HTTP.
        from pipeline.http import check_listen, listen_socket
        from pipeline.http import serve_http as http_server

        check_listen(listen, token)
        try:
            sock = listen_socket(listen)
        except PipelineError:
            other = daemon.read_daemon_file(settings.state_dir)
            if other is not None:  # the likelier story: say that one
                raise PipelineError(f"another pipeline daemon (pid {other.get('pid')}) is using "
                                    f"the state directory {settings.state_dir}") from None
            raise

        async def serve_http(d: daemon.Daemon, *, task_status: Any) -> None:
            await http_server(d, listen=listen, token=token, sock=sock, read_only=read_only,
                              task_status=task_status)

    try:
        with lock_state_dir(settings.state_dir):
            store = open_store(settings.state_dir, settings.store_url, lease=lease_s)
            try:
                trio.run(partial(daemon.serve, jobs_dir=settings.jobs_dir,
                                 state_dir=settings.state_dir, store=store,
                                 runners=settings.runners(), grace=grace_s,
                                 serve_http=serve_http, listen=None if no_http else listen,
                                 node=node, lease=lease_s))
            finally:
                store.close()
    finally:
        if sock is not None:
            sock.close()  # unless the HTTP server took it over (and closed it itself)
