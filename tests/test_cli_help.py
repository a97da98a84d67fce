"""The command line explains itself: help on every command and option, and a reference that cannot drift."""

from __future__ import annotations

import subprocess
import sys

import click

from captioner.cli import cli

from conftest import REPO, run


def all_commands(group: click.Group, prefix: str = "captioner"):
    yield prefix, group
    context = click.Context(group)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        if isinstance(command, click.Group):
            yield from all_commands(command, f"{prefix} {name}")
        elif command is not None:
            yield f"{prefix} {name}", command


def test_every_command_and_option_has_help_text():
    missing = []
    for name, command in all_commands(cli):
        if not command.help:
            missing.append(name)
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden and not param.help:
                missing.append(f"{name} {param.opts[-1]}")
    assert missing == []


def test_dash_h_is_help():
    result = run("caption", "-h")
    assert result.exit_code == 0 and "Usage: " in result.output and "--max-cost" in result.output


def test_docs_cli_md_matches_the_help():
    check = subprocess.run([sys.executable, str(REPO / "scripts" / "cli_docs.py"), "--check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
