"""``pipeline completion``: the shell's completion script (click's own machinery)."""

from __future__ import annotations

import click

from pipeline.cli import main


@click.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the completion script for SHELL: job names, run ids and step ids on Tab.

    \b
    bash:  echo 'eval "$(pipeline completion bash)"' >> ~/.bashrc
    zsh:   echo 'eval "$(pipeline completion zsh)"' >> ~/.zshrc
    fish:  pipeline completion fish > ~/.config/fish/completions/pipeline.fish
    """
    from click.shell_completion import get_completion_class

    completer = get_completion_class(shell)
    assert completer is not None  # the choice is click's own shells
    click.echo(completer(main, {}, "pipeline", "_PIPELINE_COMPLETE").source())
