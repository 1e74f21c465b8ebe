"""The command line as a lazy-loading group: listing the commands imports none of them, and
lists each as its own help would."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import click
import pytest

from pipeline.cli import COMMANDS, main

# What `pipeline --help` and completing a command name may import of ours and of the heavy
# libraries: the group alone.
HEAVY = ("trio", "yaml", "jsonschema", "jsonschema_rs", "jinja2", "httpx", "starlette",
         "sqlite3", "loguru", "cronsim")
PROBE = """
import atexit, json, sys
def report():
    print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {heavy})), file=sys.stderr)
atexit.register(report)
sys.argv = ['pipeline', *sys.argv[1:]]
from pipeline.cli import main
main()
"""


def imported(*args: str, env: dict[str, str] | None = None) -> tuple[str, list[str]]:
    code = PROBE.format(heavy=repr({"pipeline", *HEAVY}))
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout, json.loads(done.stderr.strip().splitlines()[-1])


def test_help_imports_no_command() -> None:
    out, modules = imported("--help")
    assert modules == ["pipeline", "pipeline.cli"]
    for name in COMMANDS:
        assert f"\n  {name} " in out


def test_completing_a_command_name_imports_no_command() -> None:
    out, modules = imported(env={"_PIPELINE_COMPLETE": "bash_complete",
                                 "COMP_WORDS": "pipeline r", "COMP_CWORD": "1"})
    assert modules == ["pipeline", "pipeline.cli"]
    assert out.split() == ["plain,rerun", "plain,reset", "plain,resume", "plain,run",
                           "plain,runs"]


def test_a_command_imports_its_family_only() -> None:
    _, modules = imported("validate", "--help")
    assert "pipeline.cli.jobs" in modules
    assert not {"trio", "sqlite3", "pipeline.store", "pipeline.cli.runs"} & set(modules)
    _, modules = imported("show", "--help")
    assert not {"yaml", "pipeline.spec", "pipeline.cli.jobs"} & set(modules)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_summary_is_what_the_command_says_of_itself(name: str) -> None:
    command = main.get_command(click.Context(main), name)
    assert command is not None and command.name == name
    stand_in = click.Command(name, help=COMMANDS[name].summary)
    for limit in (20, 45, 74, 200):
        assert stand_in.get_short_help_str(limit) == command.get_short_help_str(limit)


def test_help_reads_as_click_would_write_it_with_every_command_imported() -> None:
    ctx = click.Context(main, info_name="pipeline")
    lazy = click.HelpFormatter(width=80)
    main.format_commands(ctx, lazy)
    eager = click.HelpFormatter(width=80)
    click.Group.format_commands(main, ctx, eager)  # asks get_command: imports every command
    assert lazy.getvalue() == eager.getvalue()
    assert re.search(r"^  validate +Validate job files or directories", lazy.getvalue(), re.M)


def test_python_dash_m_runs_the_group() -> None:
    done = subprocess.run([sys.executable, "-m", "pipeline", "--version"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "pipeline, version" in done.stdout
