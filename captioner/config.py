"""Where captioner keeps its settings, and how keys are found.

Everything lives in one user directory (`CAPTIONER_USER_DIR` overrides it):
  keys.json           API keys, created with mode 0600
  default_model.txt   the model `caption` uses without -m
  prices.json         the user's own prices for custom or self-hosted models
  captions.db         the database, unless --db, $CAPTIONER_DB or ./captions.db says otherwise
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from .models import Model

DEFAULT_MODEL = "gemini-2.5-flash-lite"
# Without -m and a chosen default, the first of these whose key is set is used.
DEFAULT_CANDIDATES = ("gemini-2.5-flash-lite", "gpt-4.1-nano", "claude-haiku-4-5")
DEFAULT_DB = "captions.db"


class ConfigError(Exception):
    """A problem the user must fix before anything runs (exit status 2)."""


def user_dir() -> Path:
    override = os.environ.get("CAPTIONER_USER_DIR")
    return Path(override) if override else Path(click.get_app_dir("captioner"))


def default_db() -> str:
    """`$CAPTIONER_DB`, else a `captions.db` in the working folder if there is one,
    else `captions.db` in the user folder (as `llm` keeps its `logs.db`)."""
    if os.environ.get("CAPTIONER_DB"):
        return os.environ["CAPTIONER_DB"]
    if os.path.exists(DEFAULT_DB):
        return DEFAULT_DB
    return str(user_dir() / DEFAULT_DB)


def keys_path() -> Path:
    return user_dir() / "keys.json"


def normalize_key(value: str, source: str) -> str:
    """The key with surrounding whitespace removed (a CRLF `.env`, `$(cat file)`);
    a key with control or non-ASCII characters inside is refused with a message
    that names where it came from and never shows the key."""
    key = value.strip()
    bad = next((c for c in key if ord(c) < 0x21 or ord(c) > 0x7E), None)
    if bad is not None:
        kind = "a space or control character" if ord(bad) < 0x21 else "a non-ASCII character"
        raise ConfigError(f"the API key from {source} contains {kind}; copy it again")
    return key


WARNED_KEYS_FILES: set[str] = set()


def load_keys() -> dict[str, str]:
    path = keys_path()
    if not path.exists():
        return {}
    try:
        mode = path.stat().st_mode
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read keys file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"keys file {path} is not a JSON object")
    if mode & 0o077 and str(path) not in WARNED_KEYS_FILES:
        WARNED_KEYS_FILES.add(str(path))
        print(f"warning: keys file {path} can be read by other users; run: chmod 600 {path}", file=sys.stderr)
    return {str(k): str(v) for k, v in data.items()}


def save_key(name: str, value: str) -> Path:
    """Store a key. The file is written beside the old one and renamed over it,
    so a keys file that is a symlink is replaced, never written through."""
    path = keys_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = {} if path.is_symlink() else load_keys()
    keys[name] = normalize_key(value, "the input")
    # Created 0600 from the start so the key is never readable by others, even briefly.
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".keys-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(keys, fh, indent=2)
        os.chmod(temp, 0o600)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return path


def resolve_key(model: Model, explicit: str | None = None) -> str | None:
    """`--key`, then the keys file, then the provider's usual env vars."""
    found = key_and_source(model, explicit)
    return found[0] if found else None


def key_and_source(model: Model, explicit: str | None = None) -> tuple[str, str] | None:
    """The key and where it came from (`--key`, the keys file, an env var name)."""
    if explicit:
        return normalize_key(explicit, "--key"), "--key"
    if not model.needs_key:
        return None
    if model.key_name:
        stored = load_keys().get(model.key_name)
        if stored:
            return normalize_key(stored, f"the keys file ({keys_path()})"), "the keys file"
    for var in model.key_env:
        value = os.environ.get(var)
        if value and value.strip():
            return normalize_key(value, f"${var}"), var
    return None


def missing_key_message(model: Model, usable_instead: str | None = None) -> str:
    env = " or ".join(model.key_env) or "a key"
    if usable_instead:
        return (f"no API key for {model.model_id}: set {env} (or run `captioner keys set {model.key_name}`), "
                f"or use -m {usable_instead}, whose key is set")
    return (
        f"no API key for {model.model_id}: set {env} (or run `captioner keys set "
        f"{model.key_name}`); for a local model use -m ollama/NAME, and "
        "`captioner estimate PATH` previews the cost offline"
    )


def default_chosen() -> bool:
    """Whether the user picked a default model (`captioner models default NAME`)."""
    path = user_dir() / "default_model.txt"
    return path.exists() and bool(path.read_text().strip())


def get_default_model() -> str:
    path = user_dir() / "default_model.txt"
    if path.exists():
        name = path.read_text().strip()
        if name:
            return name
    return DEFAULT_MODEL


def set_default_model(name: str) -> None:
    path = user_dir() / "default_model.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(name + "\n")


def prices_path() -> Path:
    return user_dir() / "prices.json"
