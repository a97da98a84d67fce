"""Where captioner keeps its settings, and how keys are found.

Everything lives in one user directory (`CAPTIONER_USER_DIR` overrides it):
  keys.json           API keys, created with mode 0600
  default_model.txt   the model `caption` uses without -m
  prices.json         the user's own prices for custom or self-hosted models
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from .models import Model

DEFAULT_MODEL = "gemini-2.5-flash-lite"
DEFAULT_DB = "captions.db"


class ConfigError(Exception):
    """A problem the user must fix before anything runs (exit status 2)."""


def user_dir() -> Path:
    override = os.environ.get("CAPTIONER_USER_DIR")
    return Path(override) if override else Path(click.get_app_dir("captioner"))


def default_db() -> str:
    return os.environ.get("CAPTIONER_DB") or DEFAULT_DB


def keys_path() -> Path:
    return user_dir() / "keys.json"


def load_keys() -> dict[str, str]:
    path = keys_path()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read keys file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"keys file {path} is not a JSON object")
    return {str(k): str(v) for k, v in data.items()}


def save_key(name: str, value: str) -> Path:
    path = keys_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = load_keys()
    keys[name] = value
    # Create with 0600 from the start so the key is never readable by others, even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(keys, fh, indent=2)
    os.chmod(path, 0o600)
    return path


def resolve_key(model: Model, explicit: str | None = None) -> str | None:
    """`--key`, then the keys file, then the provider's usual env vars."""
    if explicit:
        return explicit
    if not model.needs_key:
        return None
    if model.key_name:
        stored = load_keys().get(model.key_name)
        if stored:
            return stored
    for var in model.key_env:
        value = os.environ.get(var)
        if value:
            return value
    return None


def missing_key_message(model: Model) -> str:
    env = " or ".join(model.key_env) or "a key"
    return (
        f"no API key for {model.model_id}: set {env} (or run `captioner keys set "
        f"{model.key_name}`); for a local model use -m ollama/NAME, and "
        "`captioner estimate PATH` previews the cost offline"
    )


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
