"""Step 2: prepare an image for a model.

Open with Pillow (HEIC/HEIF through pillow-heif), apply EXIF orientation,
turn any pixel format into plain 8-bit RGB, shrink to the model's preferred
long side and re-encode as JPEG. EXIF facts are read here, once.

Runs in worker threads: Pillow releases the GIL while decoding and resizing.
"""

from __future__ import annotations

import hashlib
import io
import math
import warnings
from dataclasses import dataclass
from datetime import datetime

from PIL import Image, ImageOps, UnidentifiedImageError
import pillow_heif

pillow_heif.register_heif_opener()

JPEG_QUALITY = 85
# libheif applies the HEIF rotation itself; applying EXIF orientation again would double-rotate.
SELF_ORIENTED_FORMATS = {"HEIF", "AVIF"}
ANIMATED_FORMATS = {"GIF", "WEBP", "PNG"}
READ_CHUNK = 1 << 20


class ImageError(Exception):
    """This file cannot be turned into a picture to send (corrupt, truncated, too big)."""


@dataclass(frozen=True)
class ExifFacts:
    taken_at: str | None = None
    camera_make: str | None = None
    camera_model: str | None = None
    gps_lat: float | None = None
    gps_lon: float | None = None


@dataclass(frozen=True)
class PreparedImage:
    """The re-encoded JPEG and what we learnt about the original."""

    jpeg: bytes
    width: int  # original, as displayed (after orientation)
    height: int
    sent_width: int  # what the model receives
    sent_height: int
    format: str
    exif: ExifFacts


def read_file(path: str) -> tuple[bytes, str]:
    """The file's bytes and their sha256 (hex)."""
    digest = hashlib.sha256()
    buf = bytearray()
    with open(path, "rb") as fh:
        while chunk := fh.read(READ_CHUNK):
            digest.update(chunk)
            buf += chunk
    return bytes(buf), digest.hexdigest()


def prepare_image(data: bytes, max_side: int = 1024) -> PreparedImage:
    """Decode `data` and return a JPEG no larger than `max_side` on its long side."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns about odd EXIF; we cope below
            im = Image.open(io.BytesIO(data))
            return _prepare(im, max_side)
    except Image.DecompressionBombError as exc:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6
        raise ImageError(f"image too large to decode safely (over {limit:.0f} megapixels)") from exc
    except UnidentifiedImageError as exc:
        raise ImageError("not a readable image (corrupt or unsupported format)") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports truncated and corrupt data as OSError / SyntaxError.
        raise ImageError(f"cannot decode image: {exc}") from exc


def _prepare(im: Image.Image, max_side: int) -> PreparedImage:
    fmt = im.format or "unknown"
    exif = read_exif(im)
    orientation = 1 if fmt in SELF_ORIENTED_FORMATS else _orientation(im)
    width, height = im.size
    if orientation in (5, 6, 7, 8):
        width, height = height, width

    if fmt in ANIMATED_FORMATS and getattr(im, "n_frames", 1) > 1:
        picture = _contact_sheet(im, max_side)
    else:
        if fmt in ("JPEG", "MPO"):
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale: most of the prepare cost saved.
            im.draft(im.mode, _fit(im.size, max_side))
        im.load()
        if orientation != 1:
            im = ImageOps.exif_transpose(im)
        picture = to_rgb(im)
    picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=2.0)
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=JPEG_QUALITY)
    return PreparedImage(
        jpeg=out.getvalue(),
        width=width,
        height=height,
        sent_width=picture.width,
        sent_height=picture.height,
        format=fmt,
        exif=exif,
    )


def _fit(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    w, h = size
    scale = min(1.0, max_side / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(0x0112, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB, without clipping 16-bit data or
    leaving transparent areas black."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # A plain convert() clips 16-bit values to white; scale to 0..255 first.
        lo, hi = im.getextrema()
        top = 65535 if im.mode.startswith("I;16") else max(hi, 255)
        im = im.convert("F").point(lambda v: v * 255.0 / top).convert("L")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if im.mode != "RGB":
        im = im.convert("RGB")
    return im


def _contact_sheet(im: Image.Image, max_side: int) -> Image.Image:
    """Up to four frames of an animation on one 2x2 sheet, so a model sees
    more than an often blank first frame."""
    n = im.n_frames
    count = min(4, n)
    picks = sorted({round(i * (n - 1) / (count - 1)) for i in range(count)})
    cell = min(max_side // 2, max(im.size))
    frames = []
    for index in picks:
        im.seek(index)
        frame = to_rgb(im.copy())
        frame.thumbnail((cell, cell), Image.Resampling.LANCZOS)
        frames.append(frame)
    cols = 1 if len(frames) == 1 else 2
    rows = math.ceil(len(frames) / cols)
    sheet = Image.new("RGB", (cols * cell, rows * cell), (255, 255, 255))
    for i, frame in enumerate(frames):
        x = (i % cols) * cell + (cell - frame.width) // 2
        y = (i // cols) * cell + (cell - frame.height) // 2
        sheet.paste(frame, (x, y))
    return sheet


def read_exif(im: Image.Image) -> ExifFacts:
    """Date taken, camera and GPS position; anything unreadable becomes None."""
    try:
        exif = im.getexif()
        details = exif.get_ifd(0x8769)
        gps = exif.get_ifd(0x8825)
    except Exception:
        return ExifFacts()
    return ExifFacts(
        taken_at=_exif_datetime(details.get(0x9003) or details.get(0x9004) or exif.get(0x0132)),
        camera_make=_clean_text(exif.get(0x010F)),
        camera_model=_clean_text(exif.get(0x0110)),
        gps_lat=_gps_degrees(gps.get(2), gps.get(1), "N", "S", 90.0),
        gps_lon=_gps_degrees(gps.get(4), gps.get(3), "E", "W", 180.0),
    )


def _clean_text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = value.replace("\x00", "").strip()
    return value or None


def _exif_datetime(value: object) -> str | None:
    text = _clean_text(value)
    if not text:
        return None
    try:
        return datetime.strptime(text[:19], "%Y:%m:%d %H:%M:%S").isoformat()
    except ValueError:
        return None


def _gps_degrees(dms: object, ref: object, positive: str, negative: str, limit: float) -> float | None:
    ref_text = _clean_text(ref)
    if ref_text not in (positive, negative) or not isinstance(dms, tuple) or len(dms) != 3:
        return None
    try:
        degrees, minutes, seconds = (float(part) for part in dms)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    value = degrees + minutes / 60.0 + seconds / 3600.0
    if not math.isfinite(value) or value > limit:
        return None
    return round(-value if ref_text == negative else value, 7)
