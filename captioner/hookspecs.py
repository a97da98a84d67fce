"""Hook specifications: what a captioner plugin can implement."""

from __future__ import annotations

from typing import Callable

import pluggy

hookspec = pluggy.HookspecMarker("captioner")
hookimpl = pluggy.HookimplMarker("captioner")


@hookspec
def register_models(register: Callable) -> None:
    """Call `register(model)` for every model this plugin lists."""


@hookspec(firstresult=True)
def model_for_name(name: str):
    """Return a Model for a name not in any plugin's list (e.g. `ollama/llava`,
    a dated snapshot), or None if this plugin does not serve it."""


@hookspec
def discover_models():
    """Return models found on a server right now (e.g. Ollama's /api/tags).
    Called only by `captioner models`, never on the captioning path."""
