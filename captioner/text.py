"""Sanitisers for text that came from a model or a file name and goes somewhere
it could do harm: a terminal (escape sequences), XML (characters XML 1.0
forbids make a sidecar ill-formed) or a spreadsheet (formula injection)."""

from __future__ import annotations

import re

# C0 controls, DEL and C1 controls: what a terminal may act on.
TERMINAL_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Characters XML 1.0 does not allow at all.
XML_FORBIDDEN = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# A cell starting with one of these is run as a formula by spreadsheet apps.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def for_terminal(text: str, keep_newlines: bool = False) -> str:
    """Control characters shown as visible escapes (`\\x1b`), never sent raw."""

    def visible(match: re.Match[str]) -> str:
        char = match.group()
        if char == "\n" and keep_newlines:
            return char
        if char in "\n\t":
            return " "
        return f"\\x{ord(char):02x}"

    return TERMINAL_CONTROLS.sub(visible, text)


def for_xml(text: str) -> str:
    """Text with the characters XML 1.0 forbids removed."""
    return XML_FORBIDDEN.sub("", text)


def for_csv(value: object) -> object:
    """A cell value that a spreadsheet will show as text, not run as a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value
