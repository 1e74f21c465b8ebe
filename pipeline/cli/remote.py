"""Commands that talk to a running daemon through its API: trigger, stop; and the token
options they (and serve) take."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from pipeline.cli import Settings, complete_job, complete_run, dirs, fail, pass_settings
from pipeline.cli.text import check_run_id, echo_json, parse_kv


def token_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--token`` and ``--token-file``, for ``read_token`` to make one token of."""
    command = click.option(
        "--token-file", type=click.Path(), envvar="PIPELINE_TOKEN_FILE",
        metavar="PATH", help="Read the API token from PATH (env PIPELINE_TOKEN_FILE).",
    )(command)
    return click.option(
        "--token", envvar="PIPELINE_TOKEN", default=None, metavar="TOKEN",
        help="The API's bearer token (env PIPELINE_TOKEN). On the command line every user of "
             "the machine can read it in `ps`: prefer --token-file or the environment.",
    )(command)


def read_token(token: str | None, token_file: str | None) -> str | None:
    """The token from ``--token`` or ``--token-file`` (or their variables).

    One given on the command line wins over the other's variable; both on the command line
    (or both variables) is a usage error, rather than a guess at which one was meant.
    """
    if token_file is None:
        return token or None
    if token:
        ctx = click.get_current_context()
        given = ctx.get_parameter_source("token") is ParameterSource.COMMANDLINE
        if given == (ctx.get_parameter_source("token_file") is ParameterSource.COMMANDLINE):
            raise click.UsageError("give --token or --token-file (PIPELINE_TOKEN or "
                                   "PIPELINE_TOKEN_FILE), not both")
        if given:
            return token
    try:
        text = Path(token_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        fail(f"cannot read the token file {token_file}: {reason}", 2)
    found = text.strip()
    if not found:
        fail(f"the token file {token_file} is empty", 2)
    if "\n" in found:
        fail(f"the token file {token_file} holds more than one line; it should hold the token "
             "alone", 2)
    return found


def server_options(command: Any) -> Any:
    command = click.option("--server", metavar="URL", envvar="PIPELINE_SERVER",
                           help="The daemon's address [default: the one it recorded in the "
                                "state directory].")(command)
    return token_options(command)


@click.command()
@click.argument("job", shell_complete=complete_job)
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE",
              help="A parameter (repeatable).")
@click.option("--wait", is_flag=True, help="Wait for the run to end; exit 1 unless it "
                                           "succeeded.")
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's answer as JSON.")
@server_options
@dirs
@pass_settings
def trigger(settings: Settings, job: str, params: tuple[str, ...], wait: bool, as_json: bool,
            server: str | None, token: str | None, token_file: str | None) -> None:
    """Ask the daemon to run JOB now; print the run id.

    Exit status: 0 started (with --wait: succeeded), 1 refused, unknown job, no daemon or (with
    --wait) the run did not succeed, 2 bad parameters.
    """
    from pipeline import client  # httpx: not for `serve`, which takes its token options here

    token = read_token(token, token_file)
    base = client.server_url(settings.state_dir, server)
    answer = client.trigger(base, token, job, parse_kv(params), wait=wait)
    run_id = answer.get("run_id") or answer.get("id")
    if as_json:
        echo_json(answer)
    else:
        click.echo(run_id)
    if wait:
        reason = f" ({answer['reason']})" if answer.get("reason") else ""
        click.echo(f"run {run_id} {answer.get('status')}{reason}", err=True)
        if answer.get("status") != "succeeded":
            sys.exit(1)


@click.command()
@click.argument("run_id", shell_complete=complete_run)
@server_options
@dirs
@pass_settings
def stop(settings: Settings, run_id: str, server: str | None, token: str | None,
         token_file: str | None) -> None:
    """Ask the daemon to cancel RUN_ID. Exit status: 0 stopping, 1 unknown or not running."""
    from pipeline import client

    token = read_token(token, token_file)
    client.stop(client.server_url(settings.state_dir, server), token, check_run_id(run_id))
    click.echo(f"run {run_id}: stopping", err=True)
