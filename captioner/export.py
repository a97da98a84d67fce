"""Exports of stored captions for people and other tools."""

from __future__ import annotations

from typing import Any, Iterator

from .gallery import GalleryItem, render
from .store import Store


def newest_captions(store: Store, model: str | None = None) -> Iterator[dict[str, Any]]:
    """One row per image path: its newest ok caption (for `model`, or from any
    model), through the content hash so copies of a photo share its caption."""
    model_filter = "AND c.model = :model" if model else ""
    yield from store.query(
        f"""SELECT i.path, i.taken_at, i.width, i.height, i.camera_make, i.camera_model, i.gps_lat, i.gps_lon,
                   c.model, c.prompt, c.caption, c.input_tokens, c.output_tokens, c.cost_usd, c.created_at
            FROM images i
            JOIN captions c ON c.id = (
                SELECT c2.id FROM images j JOIN captions c2 ON c2.image_id = j.id
                WHERE j.sha256 = i.sha256 AND c2.status = 'ok' {model_filter.replace('c.', 'c2.')}
                ORDER BY c2.id DESC LIMIT 1)
            ORDER BY i.path""",
        {"model": model} if model else {},
    )


def html_gallery(store: Store, model: str | None = None) -> tuple[str, int]:
    rows = list(newest_captions(store, model))
    items = [GalleryItem(r["path"], {r["model"]: ("ok", r["caption"])}) for r in rows]
    models = sorted({r["model"] for r in rows})
    page = render(f"captioner gallery ({len(items)} photos)", items, models)
    return page, len(items)
