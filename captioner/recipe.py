"""A caption's recipe: everything that shapes the answer.

A caption's identity is the photo's content plus its recipe: the model, the
prompt (surrounding whitespace ignored), the system prompt, the options that
change the answer (not concurrency or timeouts) and the size the image is
sent at. The same recipe on the same photo is never paid for twice; change any
part and the photo is captioned again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from .models import Model


@dataclass(frozen=True)
class Recipe:
    model: str
    prompt: str
    system: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    max_side: int = 1024

    @property
    def key(self) -> str:
        """A short stable hash of the recipe, stored on every caption row."""
        canonical = json.dumps([self.model, self.prompt, self.system, sorted(self.options.items()), self.max_side],
                               ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

    @property
    def options_json(self) -> str:
        return json.dumps(self.options, sort_keys=True, ensure_ascii=False)

    def columns(self) -> dict[str, Any]:
        """The recipe as stored on a caption row."""
        return {"model": self.model, "prompt": self.prompt, "system": self.system,
                "options_json": self.options_json, "max_side": self.max_side, "recipe": self.key}


def recipe_for(model: Model, prompt: str, system: str | None, options: dict[str, str],
               max_side: int | None) -> Recipe:
    """The recipe a run of `model` uses; options that do not change the answer are left out."""
    neutral = {o.name for o in model.accepted_options or () if not o.shapes_answer}
    shaping = {k: str(v).strip() for k, v in options.items() if k not in neutral}
    return Recipe(model.model_id, prompt.strip(), (system or "").strip() or None, shaping,
                  max_side or model.max_side)
