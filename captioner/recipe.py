"""A caption's recipe: everything that shapes the answer.

A caption's identity is the photo's content plus its recipe: the model, the
prompt (surrounding whitespace ignored), the system prompt, the options that
change the answer (not concurrency or timeouts), the size the image is
sent at, and the schema a structured answer must follow. The same recipe on
the same photo is never paid for twice; change any part (a template that sets
a different schema or prompt included) and the photo is captioned again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
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
    schema: str | None = None  # canonical JSON text (`captioner.schema.canonical`)

    @property
    def key(self) -> str:
        """A short stable hash of the recipe, stored on every caption row."""
        parts: list[Any] = [self.model, self.prompt, self.system, sorted(self.options.items()), self.max_side]
        if self.schema is not None:
            parts.append(self.schema)  # appended only when set: plain recipes keep the keys they always had
        canonical = json.dumps(parts, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

    @property
    def options_json(self) -> str:
        return json.dumps(self.options, sort_keys=True, ensure_ascii=False)

    def columns(self) -> dict[str, Any]:
        """The recipe as stored on a caption row."""
        return {"model": self.model, "prompt": self.prompt, "system": self.system,
                "options_json": self.options_json, "max_side": self.max_side, "recipe": self.key,
                "schema_json": self.schema}


def recipe_for(model: Model, prompt: str, system: str | None, options: dict[str, str],
               max_side: int | None, schema: str | None = None) -> Recipe:
    """The recipe a run of `model` uses; options that do not change the answer are left out."""
    neutral = {o.name for o in model.accepted_options or () if not o.shapes_answer}
    shaping = {k: str(v).strip() for k, v in options.items() if k not in neutral}
    return Recipe(model.model_id, prompt.strip(), (system or "").strip() or None, shaping,
                  max_side or model.max_side, schema)


PROMPT_VARIABLE = re.compile(r"\{(filename|folder|taken_at|camera|gps)\}")


def render_prompt(prompt: str, path: str, exif: Any) -> str:
    """The prompt with {filename}, {folder}, {taken_at}, {camera} and {gps} filled
    in from the file and its metadata ("unknown" where the file does not say).
    Other braces are left as they are, so a prompt may show JSON."""
    if "{" not in prompt:
        return prompt
    make = (getattr(exif, "camera_make", None) or "").strip()
    model = (getattr(exif, "camera_model", None) or "").strip()
    camera = model if make and model.lower().startswith(make.lower()) else f"{make} {model}".strip()
    lat, lon = getattr(exif, "gps_lat", None), getattr(exif, "gps_lon", None)
    values = {
        "filename": os.path.basename(path),
        "folder": os.path.basename(os.path.dirname(os.path.abspath(path))),
        "taken_at": getattr(exif, "taken_at", None) or "unknown",
        "camera": camera or "unknown",
        "gps": f"{lat:.5f}, {lon:.5f}" if lat is not None and lon is not None else "unknown",
    }
    return PROMPT_VARIABLE.sub(lambda m: values[m.group(1)], prompt)
