"""Compare models on the same deterministic sample of photos: what each wrote,
what each cost, and what each would cost for the whole folder."""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from . import pricing
from .gallery import GalleryItem, render
from .models import Model
from .pipeline import RunSettings, caption_paths
from .recipe import Recipe, recipe_for
from .report import RunSummary
from .scan import DEFAULT_MAX_FILE_BYTES, Found, scan
from .store import PHOTO_CAPTIONS_JOIN, Store

COLUMNS = ["model", "ok", "failed", "mean_input_tokens", "mean_output_tokens", "usd_per_image",
           "usd_per_1000", "projected_usd_all_photos", "median_latency_ms"]


def sample(roots: Sequence[str], n: int, include: Sequence[str] = (), exclude: Sequence[str] = (),
           max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> tuple[list[str], int]:
    """N photos chosen by a hash of their path (the same N every time), and how many there are in all."""
    found = [item.path for item in scan(roots, include, exclude, max_bytes=max_bytes) if isinstance(item, Found)]
    chosen = sorted(found, key=lambda p: hashlib.sha256(p.encode("utf-8")).hexdigest())[:n]
    return sorted(chosen), len(found)


@dataclass
class Comparison:
    rows: list[dict[str, Any]]
    captions: dict[str, dict[str, tuple[str, str | None]]]  # path -> model -> (status, text)
    paths: list[str]
    total_photos: int


def latest_captions(store: Store, paths: Sequence[str], recipe: Recipe) -> dict[str, dict[str, Any]]:
    """The newest caption per path made with this recipe (through content hash,
    so a copy of a captioned photo shows its caption)."""
    found: dict[str, dict[str, Any]] = {}
    for path in paths:
        row = next(iter(store.query(
            f"""SELECT c.* FROM {PHOTO_CAPTIONS_JOIN}
               WHERE i.path = ? AND c.recipe = ?
               ORDER BY c.id DESC LIMIT 1""",
            (path, recipe.key),
        )), None)
        if row is not None:
            found[path] = row
    return found


def model_row(model: str, rows: Sequence[dict[str, Any]], total_photos: int) -> dict[str, Any]:
    answered = [r for r in rows if r["status"] != "failed"]
    priced = [r["cost_usd"] for r in answered if r["cost_usd"] is not None]
    # Unpriced if any answer is: a partial sum would understate the cost.
    total = sum(priced) if priced and len(priced) == len(answered) else None
    per_1000 = pricing.per_thousand(total, len(answered))
    per_image = per_1000 / 1000 if per_1000 is not None else None
    durations = [r["duration_ms"] for r in answered if r["duration_ms"] is not None]
    return {
        "model": model,
        "ok": sum(r["status"] == "ok" for r in rows),
        "failed": sum(r["status"] != "ok" for r in rows),
        "mean_input_tokens": round(statistics.mean(r["input_tokens"] for r in answered), 1) if answered else None,
        "mean_output_tokens": round(statistics.mean(r["output_tokens"] for r in answered), 1) if answered else None,
        "usd_per_image": per_image,
        "usd_per_1000": per_1000,
        "projected_usd_all_photos": per_image * total_photos if per_image is not None else None,
        "median_latency_ms": statistics.median(durations) if durations else None,
    }


def compare(
    roots: Sequence[str],
    models: Sequence[Model],
    keys: dict[str, str | None],
    store: Store,
    settings: RunSettings,
    n: int,
    progress_factory: Callable[[int], Callable[[dict[str, Any]], None]] | None = None,
) -> tuple[Comparison, list[RunSummary]]:
    paths, total = sample(roots, n, settings.include, settings.exclude, settings.max_file_bytes)
    summaries = []
    for model in models:
        # Captions already in the database are reused; only missing ones are sent.
        run_settings = replace(settings, key=keys.get(model.model_id), include=(), exclude=())
        summaries.append(caption_paths(paths, model, store, run_settings, progress_factory))
    table: list[dict[str, Any]] = []
    captions: dict[str, dict[str, tuple[str, str | None]]] = {p: {} for p in paths}
    for model in models:
        recipe = recipe_for(model, settings.prompt, settings.system, settings.options, settings.max_side)
        found = latest_captions(store, paths, recipe)
        table.append(model_row(model.model_id, list(found.values()), total))
        for path, row in found.items():
            captions[path][model.model_id] = (row["status"], row["caption"] if row["status"] == "ok" else row["error"])
    return Comparison(table, captions, paths, total), summaries


def render_page(comparison: Comparison, models: Sequence[Model]) -> str:
    """The HTML page: thumbnails with every model's caption side by side, and the table."""
    items = [GalleryItem(path, comparison.captions[path]) for path in comparison.paths]
    title = f"captioner compare: {len(comparison.paths)} of {comparison.total_photos} photos"
    return render(title, items, [m.model_id for m in models], comparison.rows, COLUMNS)
