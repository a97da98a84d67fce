"""Saved recipes: a template names a prompt, system prompt, schema, model and
options, so `-t photo-metadata` asks for the same thing every time.

Templates are YAML files in the `templates` folder of captioner's user folder
(as `llm` keeps its own). Four are built in; a file of the same name replaces
a built-in one. Values given on the command line win over the template's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import config
from .defaults import DEFAULT_PROMPT

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
KEYS = ("prompt", "system", "schema", "model", "options")

BUILT_IN: dict[str, dict[str, Any]] = {
    "describe": {"prompt": DEFAULT_PROMPT},
    "alt-text": {
        "prompt": "Write alt text for this image for someone who cannot see it: one sentence, at most 125 "
                  "characters, saying what matters in it. Do not start with 'Image of' or 'Photo of'.",
    },
    "keywords": {
        "prompt": "List keywords a person would search their photo library with to find this photo: "
                  "subjects, setting, activity, season, colours, mood. Lower case, singular nouns where "
                  "possible, no duplicates.",
        "schema": "keywords list[str]: 5 to 15 search keywords in lower case",
    },
    "photo-metadata": {
        "prompt": "Describe this photo for a photo library. The file is {filename} in the folder {folder}, "
                  "taken {taken_at} with {camera} at {gps}; use these facts only where they help, and do not "
                  "speculate.",
        "schema": "\n".join([
            "title: a short title, at most eight words, no full stop",
            "description: one or two factual sentences: the main subject, the setting, and any legible text",
            "keywords list[str]: 5 to 15 search keywords in lower case",
            "alt_text: alt text for someone who cannot see it, at most 125 characters",
        ]),
    },
}


class TemplateError(ValueError):
    """A template that cannot be found or read; the message says why, in one line."""


@dataclass(frozen=True)
class Template:
    name: str
    prompt: str | None = None
    system: str | None = None
    schema: Any = None  # concise text or a JSON schema mapping (`captioner.schema.schema_from_value`)
    model: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    built_in: bool = False


def templates_dir() -> Path:
    return config.user_dir() / "templates"


def path_for(name: str) -> Path:
    check_name(name)
    return templates_dir() / f"{name}.yaml"


def check_name(name: str) -> None:
    if not NAME.match(name):
        raise TemplateError(f"template name {name!r} may use letters, digits, '-', '_' and '.' only")


def names() -> list[str]:
    """Every template: the built-in ones and the user's files."""
    found = {p.stem for p in templates_dir().glob("*.yaml")} if templates_dir().is_dir() else set()
    return sorted(found | set(BUILT_IN))


def load(name: str) -> Template:
    """A template by name: the user's file if there is one, else the built-in one."""
    path = path_for(name)
    if path.is_file():
        return from_text(name, _read(path), str(path))
    if name in BUILT_IN:
        return _from_mapping(name, BUILT_IN[name], "built-in", built_in=True)
    raise TemplateError(f"no template named {name!r} (see `captioner templates list`)")


def text_of(name: str) -> str:
    """The template as YAML: its file, or the built-in one written out."""
    path = path_for(name)
    if path.is_file():
        return _read(path)
    if name in BUILT_IN:
        return dump(BUILT_IN[name])
    raise TemplateError(f"no template named {name!r} (see `captioner templates list`)")


def dump(values: dict[str, Any]) -> str:
    import yaml

    return str(yaml.safe_dump(values, sort_keys=False, allow_unicode=True, width=100))


def from_text(name: str, text: str, where: str) -> Template:
    import yaml

    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TemplateError(f"{where} is not valid YAML ({str(exc).splitlines()[0]})") from exc
    return _from_mapping(name, values if values is not None else {}, where)


def _from_mapping(name: str, values: Any, where: str, built_in: bool = False) -> Template:
    if not isinstance(values, dict):
        raise TemplateError(f"{where}: a template is a mapping of {', '.join(KEYS)}")
    unknown = sorted(str(k) for k in values if k not in KEYS)
    if unknown:
        raise TemplateError(f"{where}: unknown key {unknown[0]!r} (a template may set {', '.join(KEYS)})")
    for key in ("prompt", "system", "model"):
        if values.get(key) is not None and not isinstance(values[key], str):
            raise TemplateError(f"{where}: {key} must be text")
    options = values.get("options") or {}
    if not isinstance(options, dict):
        raise TemplateError(f"{where}: options must be a mapping of option names to values")
    return Template(name, values.get("prompt"), values.get("system"), values.get("schema"), values.get("model"),
                    {str(k): str(v) for k, v in options.items()}, built_in)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"cannot read {path}: {exc}") from exc
