"""What captioning would cost, before anything is sent.

For every image: the size `prepare` would send (from the file header only, no
decode), the provider's published image-token rule for that size (each
plugin's `Model.image_tokens`), the prompt, and an assumed answer length.
Priced per image with the same price lookup as real runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from . import pricing
from .defaults import DEFAULT_OUTPUT_TOKENS
from .media import ImageError, header_facts, sent_size
from .models import Model
from .plan import without_motion_parts
from .scan import DEFAULT_MAX_FILE_BYTES, Found, scan
from .schema import canonical, extra_output_tokens
from .video import (
    DEFAULT_MAX_VIDEO_SECONDS,
    VideoFacts,
    frame_count,
    frame_size,
    probe,
    send_mode,
    sheet_size,
)


@dataclass
class ModelEstimate:
    model: str
    images: int = 0  # photos and clips
    videos: int = 0
    unreadable: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = 0.0
    batch_cost_usd: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "images": self.images,
            "videos": self.videos,
            "unreadable": self.unreadable,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "input_tokens_per_image": round(self.input_tokens / self.images, 1) if self.images else None,
            "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 8),
            "cost_per_1000_images": None if self.cost_usd is None else pricing.per_thousand(self.cost_usd, self.images),
            "batch_cost_usd": None if self.batch_cost_usd is None else round(self.batch_cost_usd, 8),
        }


def image_headers(paths: Iterable[Found], threads: int = 8
                  ) -> list[tuple[int, int, str, int] | VideoFacts | None]:
    """Header facts for every file (a clip's from its container), None where unreadable
    (threads hide file-system latency)."""

    def facts(found: Found) -> tuple[int, int, str, int] | VideoFacts | None:
        try:
            return probe(found.path) if found.kind == "video" else header_facts(found.path)
        except ImageError:
            return None

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(facts, paths))


def input_tokens_for(model: Model, width: int, height: int, fmt: str, frames: int, max_side: int | None,
                     options: dict[str, str], prompt: str, system: str | None, schema: str | None = None) -> int:
    """`pricing.estimated_input_tokens` for an image known only by its header."""
    sent = sent_size(width, height, fmt, frames, max_side or model.max_side)
    return pricing.estimated_input_tokens(model, *sent, options, prompt, system, schema)


def clip_tokens(model: Model, facts: VideoFacts, max_side: int, options: dict[str, str], prompt: str,
                system: str | None, max_seconds: float, schema: str | None = None) -> tuple[int, int]:
    """(input tokens, of which audio) for a clip known by its container: what
    `prepare_video` will send this model, priced by the model's own rules."""
    mode = send_mode(model.accepts_video, model.max_images, options)
    count = frame_count(min(facts.duration_s, max_seconds) if mode.native else facts.duration_s, mode.frames)
    frames = [frame_size(facts, max_side)] * count
    return pricing.estimated_video_tokens(model, mode, min(facts.duration_s, max_seconds), facts.has_audio, frames,
                                          sheet_size(facts, count, max_side), options, prompt, system, schema)


def estimate(
    roots: Sequence[str],
    models: Sequence[Model],
    *,
    prompt: str,
    system: str | None = None,
    options: dict[str, str] | None = None,
    output_tokens: int = DEFAULT_OUTPUT_TOKENS,
    max_side: int | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
    video_prompt: str | None = None,
    max_video_seconds: float = DEFAULT_MAX_VIDEO_SECONDS,
    videos: bool = True,
    schema: dict[str, Any] | None = None,
) -> list[ModelEstimate]:
    """Predicted tokens and cost per model. A schema adds its own text to the
    input and its keys and extra fields to each answer."""
    options = options or {}
    schema_text = canonical(schema) if schema is not None else None
    output_tokens += extra_output_tokens(schema_text)
    found = without_motion_parts([item for item in scan(roots, include, exclude, max_bytes=max_bytes,
                                                        videos=videos) if isinstance(item, Found)])
    headers = image_headers(found)
    user_prices = pricing.load_user_prices()
    results = []
    for model in models:
        result = ModelEstimate(model.model_id)
        price_cache: dict[tuple[int, int], float | None] = {}
        for facts in headers:
            if facts is None:
                result.unreadable += 1
                continue
            audio = 0
            if isinstance(facts, VideoFacts):
                tokens, audio = clip_tokens(model, facts, max_side or model.max_side, options,
                                            video_prompt or prompt, system, max_video_seconds, schema_text)
                result.videos += 1
            else:
                tokens = input_tokens_for(model, *facts, max_side, options, prompt, system, schema_text)
            result.images += 1
            result.input_tokens += tokens
            result.output_tokens += output_tokens
            if (tokens, audio) not in price_cache:  # priced per image: tiers apply per request
                price_cache[(tokens, audio)] = pricing.price_request(
                    model, tokens, output_tokens, user_prices=user_prices, audio_tokens=audio
                ).cost_usd
            cost = price_cache[(tokens, audio)]
            result.cost_usd = None if cost is None or result.cost_usd is None else result.cost_usd + cost
        if result.cost_usd is not None and model.batch_discount:
            result.batch_cost_usd = result.cost_usd * model.batch_discount
        results.append(result)
    return results
