"""Self-contained HTML pages: thumbnails embedded, captions side by side.

Captions are untrusted model output: every piece of text goes through
`html.escape`, and the page carries a Content-Security-Policy that allows no
scripts at all.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .media import ImageError, prepare_image, read_file

THUMB_SIDE = 320

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2rem; color: #222; }
table.costs { border-collapse: collapse; margin-bottom: 2rem; font-size: 13px; }
table.costs th, table.costs td { border: 1px solid #ccc; padding: .3rem .6rem; text-align: right; }
table.costs th:first-child, table.costs td:first-child { text-align: left; }
.photo { display: grid; grid-template-columns: 340px 1fr; gap: 1rem; border-top: 1px solid #ddd; padding: 1rem 0; }
.photo img { max-width: 320px; max-height: 320px; }
.path { font: 12px monospace; color: #666; word-break: break-all; }
.caption { margin: .2rem 0 .8rem; }
.model { font-weight: 600; font-size: 13px; color: #555; }
.status { color: #a00; }
"""


@dataclass
class GalleryItem:
    path: str
    captions: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # model -> (status, text)


def thumbnail_uri(path: str) -> str | None:
    try:
        data, _ = read_file(path)
        jpeg = prepare_image(data, THUMB_SIDE).jpeg
    except (OSError, ImageError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.6g}"
    return html.escape(str(value))


def render(title: str, items: Sequence[GalleryItem], models: Sequence[str],
           table: Sequence[dict[str, Any]] = (), columns: Sequence[str] = ()) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" "
        "content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">",
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if table:
        parts.append('<table class="costs"><tr>' + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>")
        for row in table:
            parts.append("<tr>" + "".join(f"<td>{_cell(row.get(c))}</td>" for c in columns) + "</tr>")
        parts.append("</table>")
    for item in items:
        uri = thumbnail_uri(item.path)
        image = f'<img src="{uri}" alt="">' if uri else "<p>(no preview)</p>"
        parts.append(f'<div class="photo"><div>{image}<div class="path">{html.escape(item.path)}</div></div><div>')
        for model in [m for m in models if m in item.captions] if not table else models:
            status, text = item.captions.get(model, ("missing", None))
            parts.append(f'<div class="model">{html.escape(model)}</div>')
            if status == "ok":
                parts.append(f'<p class="caption">{html.escape(text or "")}</p>')
            else:
                parts.append(f'<p class="caption status">{html.escape(status)}: {html.escape(text or "")}</p>')
        parts.append("</div></div>")
    parts.append("</body></html>")
    return "\n".join(parts)
