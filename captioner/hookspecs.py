"""Hook specifications: what a captioner plugin can implement.

A plugin is a module with functions marked `@hookimpl`; it is found through
the `captioner` entry-point group (see docs/plugins.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .models import Model

hookspec = pluggy.HookspecMarker("captioner")
hookimpl = pluggy.HookimplMarker("captioner")


@hookspec
def register_models(register: Callable[[Model], None]) -> None:
    """Call `register(model)` for every model this plugin lists."""


@hookspec(firstresult=True)
def model_for_name(name: str) -> Model | None:
    """Return a Model for a name not in any plugin's list (e.g. `ollama/llava`,
    a dated snapshot), or None if this plugin does not serve it."""


@hookspec
def discover_models() -> list[Model]:
    """Return models found on a server right now (e.g. Ollama's /api/tags).
    Called only by `captioner models`, never on the captioning path."""
    return []
