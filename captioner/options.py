"""Typed model options: what `-o KEY VALUE` may say to a model.

Each model declares its options (name, type, range or choices, help), as `llm`
does with its `Options` classes. The command line checks every `-o` pair
against that list before any image is read, so `-o max_tokens abc` is one
clear line, not a failed request per photo.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class OptionError(ValueError):
    """An `-o` key the model does not know, or a value it cannot take."""


@dataclass(frozen=True)
class Option:
    """One option a model accepts.

    kind: "int", "float", "str", "bool" or "json" (any JSON value, sent as is).
    """

    name: str
    kind: str
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    # False for options that do not change the answer (how long a server keeps
    # a model loaded): they are not part of a caption's recipe.
    shapes_answer: bool = True

    def parse(self, raw: str) -> Any:
        """The typed value of `raw`, or OptionError saying what is allowed."""
        value: Any
        if self.kind == "int":
            try:
                value = int(raw.strip())
            except ValueError:
                raise OptionError(f"-o {self.name} needs a whole number, not {raw!r}") from None
        elif self.kind == "float":
            try:
                value = float(raw)
            except ValueError:
                raise OptionError(f"-o {self.name} needs a number, not {raw!r}") from None
            if not math.isfinite(value):
                raise OptionError(f"-o {self.name} needs a finite number, not {raw!r}")
        elif self.kind == "bool":
            lowered = raw.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise OptionError(f"-o {self.name} needs true or false, not {raw!r}")
            value = lowered in ("true", "1", "yes", "on")
        elif self.kind == "json":
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
        else:
            value = raw
        if self.choices and str(value).lower() not in self.choices:
            raise OptionError(f"-o {self.name} must be one of {', '.join(self.choices)}, not {raw!r}")
        if self.minimum is not None and value < self.minimum:
            raise OptionError(f"-o {self.name} must be at least {_number(self.minimum)}, not {raw!r}")
        if self.maximum is not None and value > self.maximum:
            raise OptionError(f"-o {self.name} must be at most {_number(self.maximum)}, not {raw!r}")
        return value.lower() if self.choices and isinstance(value, str) else value

    def describe(self) -> str:
        """`kind, range or choices`, for listings."""
        if self.choices:
            return "|".join(self.choices)
        bounds = ""
        if self.minimum is not None or self.maximum is not None:
            low = _number(self.minimum) if self.minimum is not None else ""
            high = _number(self.maximum) if self.maximum is not None else ""
            bounds = f" {low}..{high}"
        return self.kind + bounds

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.kind, "help": self.help, "minimum": self.minimum,
                "maximum": self.maximum, "choices": list(self.choices) or None}


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def validate(model_id: str, declared: Sequence[Option] | None, given: Mapping[str, str]) -> dict[str, Any]:
    """Typed values for `given`; OptionError (one line, listing the valid
    options) for an unknown key or a bad value. A model that declares no
    options (`None`, a plugin from before typed options) takes any key."""
    if declared is None:
        return dict(given)
    by_name = {option.name: option for option in declared}
    values: dict[str, Any] = {}
    for name, raw in given.items():
        option = by_name.get(name)
        if option is None:
            valid = ", ".join(sorted(by_name)) or "none"
            raise OptionError(f"{model_id} has no option {name!r}; valid options: {valid}")
        values[name] = option.parse(raw)
    return values


# Options most chat models share; plugins pick the ones their API has.
MAX_TOKENS = Option("max_tokens", "int", "Most output tokens per caption (bounds the --max-cost reservation)",
                    minimum=1, maximum=65536)
TEMPERATURE = Option("temperature", "float", "Sampling temperature", minimum=0, maximum=2)
TOP_P = Option("top_p", "float", "Nucleus sampling probability mass", minimum=0, maximum=1)
TOP_K = Option("top_k", "int", "Sample from the K most likely tokens", minimum=1, maximum=1000)
SEED = Option("seed", "int", "Random seed, for repeatable answers where the server supports it")

# Video clips (see captioner.video): how many frames, and for models that watch video, how.
VIDEO_FRAMES = Option("video_frames", "int", "Video clips: frames sampled across the clip (several images where the "
                      "model takes them, else one contact sheet)", minimum=1, maximum=16)
VIDEO_AUDIO = Option("video_audio", "str", "Video clips: send the sound too (on) or not (off)", choices=("on", "off"))
VIDEO_MODE = Option("video_mode", "str", "Video clips: send the clip itself (native) or frames (frames)",
                    choices=("native", "frames"))
