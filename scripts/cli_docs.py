"""Write docs/cli.md from the commands' own --help, or check it is up to date.

    python scripts/cli_docs.py          # rewrite docs/cli.md
    python scripts/cli_docs.py --check  # exit 1 if docs/cli.md differs (CI runs this)
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from click.testing import CliRunner

from captioner.cli import cli

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
HEADER = """# Command-line reference

Generated from `captioner --help` by `python scripts/cli_docs.py`; CI fails if it drifts.
"""


def commands(group: click.Group, prefix: list[str]) -> list[list[str]]:
    """Every command path under `group`, depth first, in the order `--help` lists them."""
    found = [prefix]
    context = click.Context(group, info_name=" ".join(prefix))
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        if command is None or command.hidden:
            continue
        if isinstance(command, click.Group):
            found.extend(commands(command, [*prefix, name]))
        else:
            found.append([*prefix, name])
    return found


def render() -> str:
    runner = CliRunner()
    parts = [HEADER]
    for path in commands(cli, ["captioner"]):
        result = runner.invoke(cli, [*path[1:], "--help"], prog_name="captioner", terminal_width=100)
        if result.exit_code != 0:
            raise SystemExit(f"{' '.join(path)} --help failed: {result.output}")
        parts.append(f"\n## {' '.join(path)}\n\n```\n{result.output.rstrip()}\n```\n")
    return "".join(parts)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not DOC.exists() or DOC.read_text(encoding="utf-8") != text:
            print(f"{DOC} is out of date: run python scripts/cli_docs.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text, encoding="utf-8")
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
