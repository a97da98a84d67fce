"""HTML pages: thumbnails and captions side by side, readable on a phone.

Captions are untrusted model output: every piece of text goes through
`html.escape`, and the page carries a Content-Security-Policy that allows no
scripts at all. Thumbnails are embedded for small pages; a gallery written to
a file puts them in a folder beside it, loaded lazily, so a 10,000-photo page
stays small.
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .media import ImageError, prepare_image, read_file
from .scan import sniff_video
from .video import poster_jpeg

THUMB_SIDE = 320

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 1rem; color: #222; max-width: 70rem; }
table.costs { border-collapse: collapse; margin-bottom: 2rem; font-size: 13px; }
table.costs th, table.costs td { border: 1px solid #ccc; padding: .3rem .6rem; text-align: right; }
table.costs th:first-child, table.costs td:first-child { text-align: left; }
.photo { display: grid; grid-template-columns: minmax(0, 340px) 1fr; gap: 1rem; border-top: 1px solid #ddd;
         padding: 1rem 0; }
.photo img { max-width: 100%; height: auto; max-height: 320px; }
.table-wrap { overflow-x: auto; }
@media (max-width: 40rem) { .photo { grid-template-columns: 1fr; } body { margin: .5rem; } }
.path { font: 12px monospace; color: #666; word-break: break-all; }
.caption { margin: .2rem 0 .8rem; }
.model { font-weight: 600; font-size: 13px; color: #555; }
.status { color: #a00; }
.poster { position: relative; display: inline-block; }
.badge { position: absolute; right: .3rem; bottom: .3rem; background: rgba(0,0,0,.7); color: #fff;
         font: 12px monospace; padding: 0 .3rem; border-radius: .2rem; }
"""


@dataclass
class GalleryItem:
    path: str
    captions: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # model -> (status, text)
    duration_s: float | None = None  # a clip's length, shown as a badge on its poster frame


Thumbnails = Callable[[str], "str | None"]


def thumbnail_jpeg(path: str) -> bytes | None:
    """A small JPEG of a photo, or of a clip's middle frame (its poster)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(32)
        if sniff_video(head):
            return poster_jpeg(path, THUMB_SIDE)
        data, _ = read_file(path)
        return prepare_image(data, THUMB_SIDE).jpeg
    except (OSError, ImageError):
        return None


def thumbnail_uri(path: str) -> str | None:
    """The thumbnail embedded in the page (for small pages)."""
    jpeg = thumbnail_jpeg(path)
    return None if jpeg is None else "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def thumbnails_beside(page_path: str) -> Thumbnails:
    """Thumbnails written to `<page>_files/` beside the page, linked relatively."""
    stem = os.path.splitext(os.path.basename(page_path))[0] + "_files"
    folder = os.path.join(os.path.dirname(os.path.abspath(page_path)), stem)
    count = 0

    def write(path: str) -> str | None:
        nonlocal count
        jpeg = thumbnail_jpeg(path)
        if jpeg is None:
            return None
        os.makedirs(folder, exist_ok=True)
        count += 1
        name = f"{count:06d}.jpg"
        with open(os.path.join(folder, name), "wb") as fh:
            fh.write(jpeg)
        return f"{stem}/{name}"

    return write


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.6f}".rstrip("0").rstrip(".")
    return html.escape(str(value))


def render(title: str, items: Iterable[GalleryItem], models: Sequence[str] | None,
           table: Sequence[dict[str, Any]] = (), columns: Sequence[str] = (),
           thumbnails: Thumbnails = thumbnail_uri) -> str:
    return "\n".join(render_parts(title, items, models, table, columns, thumbnails))


def render_parts(title: str, items: Iterable[GalleryItem], models: Sequence[str] | None,
                 table: Sequence[dict[str, Any]] = (), columns: Sequence[str] = (),
                 thumbnails: Thumbnails = thumbnail_uri) -> Iterator[str]:
    """The page a piece at a time (a photo per piece), so it can be written as it is made.
    `models` orders each photo's captions (None: in the order the photo has them)."""
    yield from [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<meta http-equiv=\"Content-Security-Policy\" "
        "content=\"default-src 'none'; img-src data: 'self'; style-src 'unsafe-inline'\">",
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if table:
        yield ('<div class="table-wrap"><table class="costs"><tr>'
               + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>")
        for row in table:
            yield "<tr>" + "".join(f"<td>{_cell(row.get(c))}</td>" for c in columns) + "</tr>"
        yield "</table></div>"
    for item in items:
        parts: list[str] = []
        uri = thumbnails(item.path)
        alt = next((text for status, text in item.captions.values() if status == "ok" and text),
                   os.path.basename(item.path))
        image = (f'<img src="{html.escape(uri)}" alt="{html.escape(alt[:300])}" loading="lazy">' if uri
                 else "<p>(no preview)</p>")
        if item.duration_s is not None:
            seconds = round(item.duration_s)
            badge = f'<span class="badge">▶ {seconds // 60}:{seconds % 60:02d}</span>'
            image = f'<span class="poster">{image}{badge}</span>'
        parts.append(f'<div class="photo"><div>{image}<div class="path">{html.escape(item.path)}</div></div><div>')
        order = list(item.captions) if models is None else (
            [m for m in models if m in item.captions] if not table else list(models))
        for model in order:
            status, text = item.captions.get(model, ("missing", None))
            parts.append(f'<div class="model">{html.escape(model)}</div>')
            if status == "ok":
                parts.append(f'<p class="caption">{html.escape(text or "")}</p>')
            else:
                parts.append(f'<p class="caption status">{html.escape(status)}: {html.escape(text or "")}</p>')
        parts.append("</div></div>")
        yield "\n".join(parts)
    yield "</body></html>"
