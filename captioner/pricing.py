"""What a request cost, in USD.

Prices come from genai-prices and are applied to each request on its own
(tiered prices make a price on summed totals wrong). Before asking it, we
look in the user's price file (custom or self-hosted models) and fix the
names it matches wrongly with our own alias table. Local models cost $0.
An unknown price is None, never a silent $0.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .config import ConfigError, prices_path

if TYPE_CHECKING:
    from .models import Model

# Names genai-prices resolves to the wrong model, and what they really are.
# gemini-1.5-flash-8b is its own, cheaper model; genai-prices' prefix match
# would price it as gemini-1.5-flash (twice the price).
PRICE_ALIASES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^(models/)?gemini-1\.5-flash-8b(-\d+|-latest)?$"), "gemini-flash-1.5-8b"),
]

MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class RequestCost:
    cost_usd: float | None
    price_in_per_m: float | None
    price_out_per_m: float | None
    source: str  # "genai-prices", "user", "local", "unknown"

    @property
    def known(self) -> bool:
        return self.cost_usd is not None


UNKNOWN = RequestCost(None, None, None, "unknown")


def prompt_tokens(*texts: str | None) -> int:
    """Text tokens, about four characters each (the usual rule of thumb for English)."""
    return sum(math.ceil(len(t) / 4) for t in texts if t)


def estimated_input_tokens(model: Model, sent_width: int, sent_height: int, options: Mapping[str, Any],
                           prompt: str, system: str | None, schema: str | None = None) -> int:
    """Input tokens one request would be billed: the model's image rule on the
    size sent, plus the text. The one definition of "estimated input", used by
    `estimate`, the budget, and stored with every caption."""
    return model.image_tokens(sent_width, sent_height, options) + text_tokens(model, prompt, system, schema)


def schema_tokens(schema: str | None) -> int:
    """Input tokens a schema adds to a request (providers put it in the prompt)."""
    return math.ceil(len(schema) / 4) + 10 if schema else 0


def text_tokens(model: Model, prompt: str, system: str | None, schema: str | None) -> int:
    """The words of a request: prompt, system prompt, and a schema with what the
    provider adds to carry it (Anthropic's tool-use prompt)."""
    return prompt_tokens(prompt, system) + (schema_tokens(schema) + model.schema_overhead_tokens if schema else 0)


def estimated_video_tokens(model: Model, mode: Any, seconds: float, has_audio: bool,
                           frame_sizes: list[tuple[int, int]], sheet: tuple[int, int], options: Mapping[str, Any],
                           prompt: str, system: str | None, schema: str | None = None) -> tuple[int, int]:
    """(input tokens, of which audio) for a clip: watched by the model itself
    (`mode.native`), sent as several frames, or as one contact sheet."""
    text = text_tokens(model, prompt, system, schema)
    if mode.native:
        tokens, audio = model.video_tokens(seconds, has_audio and mode.keep_audio, options)
        return tokens + text, audio
    if mode.separate_frames:
        return sum(model.image_tokens(w, h, options) for w, h in frame_sizes) + text, 0
    return model.image_tokens(*sheet, options) + text, 0


def per_thousand(cost_usd: float | None, images: int) -> float | None:
    """Cost per 1,000 images: the one definition every report uses. None when
    nothing was priced or there is nothing to divide by."""
    if cost_usd is None or not images:
        return None
    return round(cost_usd / images * 1000, 6)


def price_ref(model_id: str) -> str:
    """The name to look up in genai-prices for this model id."""
    for pattern, target in PRICE_ALIASES:
        if pattern.match(model_id):
            return target
    return model_id


def load_user_prices() -> dict[str, dict[str, float]]:
    """`prices.json`: {"model-id": {"input": USD per 1M, "output": USD per 1M}} and/or
    {"model-id": {"per_image": USD}} (a self-hosted GPU's cost spread over the photos it captions)."""
    path = prices_path()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        prices = {}
        for name, p in data.items():
            entry = {"input": float(p.get("input", 0)), "output": float(p.get("output", 0)),
                     "per_image": float(p.get("per_image", 0))}
            if not any(key in p for key in ("input", "output", "per_image")):
                raise KeyError("input, output or per_image")
            if not all(math.isfinite(v) and v >= 0 for v in entry.values()):
                raise ValueError(f"{name}: prices must be finite and not negative")
            prices[str(name)] = entry
        return prices
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ConfigError(f"cannot read price file {path}: expected "
                          '{"model": {"input": USD_per_1M, "output": USD_per_1M}} or {"model": {"per_image": USD}} ('
                          f"{exc})") from exc


def price_request(
    model: Model,
    input_tokens: int,
    output_tokens: int,
    *,
    cache_read_tokens: int = 0,
    cache_write_tokens: int = 0,
    user_prices: dict[str, dict[str, float]] | None = None,
    audio_tokens: int = 0,
) -> RequestCost:
    """The cost of one request. `input_tokens` counts every input token,
    cached ones included; `cache_*` say how many of them were cache reads/writes."""
    user_prices = load_user_prices() if user_prices is None else user_prices
    user = user_prices.get(model.model_id)
    if user is not None:
        cost = (input_tokens * user["input"] + output_tokens * user["output"]) / 1_000_000 + user.get("per_image", 0)
        return RequestCost(cost, user["input"], user["output"], "user")
    if model.provider in ("local", "openai-compatible"):
        # Ollama, and self-hosted engines (vLLM, SGLang, llama.cpp) reached as openai/NAME: $0 unless priced.
        return RequestCost(0.0, 0.0, 0.0, "local")
    calc = _calc(model, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, audio_tokens)
    if calc is None:
        return UNKNOWN
    # The unit prices actually applied to this request (tiers included), so a
    # report can be redone from the row alone.
    price_in = float(calc.input_price * MILLION / input_tokens) if input_tokens else _unit(calc, "input")
    price_out = float(calc.output_price * MILLION / output_tokens) if output_tokens else _unit(calc, "output")
    return RequestCost(float(calc.total_price), price_in, price_out, "genai-prices")


def unit_prices(model: Model) -> tuple[float, float] | None:
    """Base USD per million input and output tokens, for listings and estimates."""
    cost = price_request(model, 1_000, 1_000)
    if cost.price_in_per_m is None or cost.price_out_per_m is None:
        return None
    return cost.price_in_per_m, cost.price_out_per_m


def _calc(model: Model, input_tokens: int, output_tokens: int, cache_read: int, cache_write: int,
          audio: int = 0) -> Any:
    from genai_prices import Usage, calc_price  # imported when a price is first needed (it loads its tables)

    usage = Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cache_read or None,
        cache_write_tokens=cache_write or None,
        input_audio_tokens=min(audio, input_tokens) or None,
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return calc_price(
                usage,
                price_ref(model.model_id),
                provider_id=model.provider,
                genai_request_timestamp=datetime.now(timezone.utc),
            )
    except (LookupError, ValueError):
        return None


def _unit(calc, which: str) -> float | None:
    price = getattr(calc.model_price, f"{which}_mtok", None)
    if price is None:
        return None
    if isinstance(price, (int, float, Decimal)):
        return float(price)
    base = getattr(price, "base", None)  # tiered price
    return float(base) if base is not None else None
