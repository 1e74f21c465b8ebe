"""Commands about the store and its nodes: nodes, migrate."""

from __future__ import annotations

import click

from pipeline.cli import Settings, configure_logging, dirs, fail, pass_settings
from pipeline.cli.state import has_state, open_state
from pipeline.cli.text import echo_json, table
from pipeline.nodes import node_views
from pipeline.store import open_store


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@dirs
@pass_settings
def nodes(settings: Settings, as_json: bool) -> None:
    """The nodes of the store: roles, labels, last heartbeat, active runs, version, and
    whether each one's jobs directory matches what the cluster fires."""
    if not has_state(settings):
        fail(f"no nodes yet: there is no state directory {settings.state_dir}")
    with open_state(settings) as store:
        views = node_views(store.nodes(), store.now())
    if as_json:
        echo_json(views)
        return
    if not views:
        click.echo("no nodes")
        return
    table([(v["name"], v["id"][:8], v["state"], ",".join(v["roles"]),
            ",".join(f"{k}={x}" for k, x in v["labels"].items()) or "-",
            f"{v['heartbeat_age_s']:.1f}s ago" if v["heartbeat_age_s"] is not None else "-",
            str(v["active_runs"]), v["version"] or "-",
            {True: "yes", False: "DIFFERS", None: "-"}[v["jobs_match"]])
           for v in views],
          ["NAME", "ID", "STATE", "ROLES", "LABELS", "HEARTBEAT", "RUNS", "VERSION", "JOBS"])


@click.command()
@dirs
@pass_settings
def migrate(settings: Settings) -> None:
    """Create or upgrade the store's tables (serve does it too, at start)."""
    configure_logging(fmt="cli")
    settings.state_dir.mkdir(parents=True, exist_ok=True) if not settings.store_url else None
    store = open_store(settings.state_dir, settings.store_url)
    try:
        version = store.schema_version()
    finally:
        store.close()
    click.echo(f"the store is at schema version {version}")
