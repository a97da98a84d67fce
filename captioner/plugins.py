"""Plugin discovery: every model comes from a plugin. The built-in ones are
registered in-package; third-party ones are found through the `captioner`
entry-point group. Both implement the same hooks (`captioner.hookspecs`)."""

from __future__ import annotations

import functools
import importlib

import pluggy

from . import hookspecs
from .models import Model


class UnknownModel(LookupError):
    pass


DEFAULT_PLUGINS = (
    "captioner.default_plugins.openai_models",
    "captioner.default_plugins.anthropic_models",
    "captioner.default_plugins.gemini_models",
    "captioner.default_plugins.ollama_models",
    "captioner.default_plugins.local_models",
)


@functools.lru_cache(maxsize=1)
def plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("captioner")
    pm.add_hookspecs(hookspecs)
    for name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(name), name)
    # Registered after the built-ins, so a third-party plugin is asked first
    # for a name (pluggy calls the newest implementation first).
    pm.load_setuptools_entrypoints("captioner")
    return pm


def listed_models() -> list[Model]:
    """Every model the installed plugins list, in registration order."""
    models: list[Model] = []
    plugin_manager().hook.register_models(register=models.append)
    return models


def discovered_models() -> list[Model]:
    """Models the plugins find on servers right now (may use the network)."""
    found: list[Model] = []
    for models in plugin_manager().hook.discover_models():  # one list per plugin
        found.extend(models or [])
    return found


def get_model(name: str) -> Model:
    """The model for `name`: a listed id or alias first, then any plugin that
    claims the name (so unlisted snapshots and local models work)."""
    for model in listed_models():
        if name == model.model_id or name in model.aliases:
            return model
    model = plugin_manager().hook.model_for_name(name=name)
    if model is None:
        raise UnknownModel(
            f"unknown model {name!r}: see `captioner models`, use ollama/NAME for a local "
            "Ollama model or openai/NAME for any OpenAI-compatible server"
        )
    return model
