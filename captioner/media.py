"""Step 2: prepare an image for a model.

Open with Pillow (HEIC/HEIF through pillow-heif), apply EXIF orientation,
turn any pixel format into plain 8-bit RGB, shrink to the model's preferred
long side and re-encode as JPEG. EXIF facts are read here, once.

Runs in worker threads: Pillow releases the GIL while decoding and resizing.
"""

from __future__ import annotations

import errno
import hashlib
import io
import math
import warnings
from dataclasses import dataclass
from datetime import datetime

import pillow_heif
from PIL import Image, ImageOps, UnidentifiedImageError

pillow_heif.register_heif_opener()

JPEG_QUALITY = 85
# 216 KB of JPEG is 288 KB of base64: with the JSON around it, a request stays under 300 KB.
MAX_JPEG_BYTES = 216_000
# libheif applies the HEIF rotation itself; applying EXIF orientation again would double-rotate.
SELF_ORIENTED_FORMATS = {"HEIF", "AVIF"}
ANIMATED_FORMATS = {"GIF", "WEBP", "PNG"}
READ_CHUNK = 1 << 20
DRAFT_TOLERANCE = 0.95


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


def read_file(path: str, max_bytes: int | None = None) -> tuple[bytes, str]:
    """The file's bytes and their sha256 (hex). A file that has grown past
    `max_bytes` since it was scanned is an OSError, not a memory blow-up."""
    digest = hashlib.sha256()
    buf = bytearray()
    with open(path, "rb") as fh:
        while chunk := fh.read(READ_CHUNK):
            digest.update(chunk)
            buf += chunk
            if max_bytes is not None and len(buf) > max_bytes:
                raise OSError(errno.EFBIG, "file is larger than the size limit (--max-file-size)")
    return bytes(buf), digest.hexdigest()


def file_sha256(path: str) -> str:
    """The sha256 of a file read in pieces (for video clips, which are never read whole)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def prepare_image(data: bytes, max_side: int = 1024) -> PreparedImage:
    """Decode `data` and return a JPEG no larger than `max_side` on its long side."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns about odd EXIF; we cope below
            im = Image.open(io.BytesIO(data))
            if im.format == "JPEG" and im.info.get("progressive") and _draft_scale(im.size, max_side) >= 4:
                cut = without_refinement_scans(data)
                if len(cut) < len(data):
                    im = Image.open(io.BytesIO(cut))
            return _prepare(im, max_side)
    except Image.DecompressionBombError as exc:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6
        raise ImageError(f"image too large to decode safely (over {limit:.0f} megapixels)") from exc
    except UnidentifiedImageError as exc:
        raise ImageError("not a readable image (corrupt or unsupported format)") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports truncated and corrupt data as OSError / SyntaxError.
        raise ImageError(f"cannot decode image: {exc}") from exc


@dataclass(frozen=True)
class _Shown:
    """How an opened image is shown: after orientation, by format and frame count."""

    width: int
    height: int
    format: str
    frames: int
    orientation: int


def _shown(im: Image.Image) -> _Shown:
    fmt = im.format or "unknown"
    orientation = 1 if fmt in SELF_ORIENTED_FORMATS else _orientation(im)
    width, height = im.size
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    frames = getattr(im, "n_frames", 1) if fmt in ANIMATED_FORMATS else 1
    return _Shown(width, height, fmt, frames, orientation)


def _prepare(im: Image.Image, max_side: int) -> PreparedImage:
    shown = _shown(im)
    fmt, orientation, width, height = shown.format, shown.orientation, shown.width, shown.height
    exif = read_exif(im)
    if shown.frames > 1:
        picture = _contact_sheet(im, max_side)
    else:
        if fmt in ("JPEG", "MPO"):
            im.draft(im.mode, _draft_size(im.size, max_side))
        im.load()
        if orientation != 1:
            im = ImageOps.exif_transpose(im)
        picture = to_rgb(im)
    picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=2.0)
    jpeg = encode_jpeg(picture)
    return PreparedImage(
        jpeg=jpeg,
        width=width,
        height=height,
        sent_width=picture.width,
        sent_height=picture.height,
        format=fmt,
        exif=exif,
    )


def header_facts(path: str) -> tuple[int, int, str, int]:
    """Displayed width, height, format and frame count from the file header,
    without decoding pixels (for estimates over whole libraries)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                shown = _shown(im)
    except Image.DecompressionBombError as exc:
        raise ImageError("image too large to decode safely") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"not a readable image: {exc}") from exc
    return shown.width, shown.height, shown.format, shown.frames


def _draft_scale(size: tuple[int, int], max_side: int) -> int:
    """The factor (1, 2, 4 or 8) libjpeg's draft mode shrinks a JPEG of this size by."""
    draft_w, draft_h = _draft_size(size, max_side)
    scale = min(size[0] // draft_w, size[1] // draft_h)
    return next(s for s in (8, 4, 2, 1) if scale >= s)


def without_refinement_scans(data: bytes) -> bytes:
    """A progressive JPEG cut before its first AC refinement scan, and ended there.

    A progressive JPEG sends coarse coefficients first and their low bits in
    later "refinement" scans; decoded at 1/4 scale or smaller those bits change
    nothing visible, but libjpeg must still entropy-decode them, which is most
    of the work. Markers are walked one by one; anything not understood (not
    progressive, a segment running past the end, no refinement scan) returns
    `data` unchanged, so the worst case is the full decode."""
    size = len(data)
    if data[:2] != b"\xff\xd8":
        return data
    pos, progressive = 2, False
    while pos + 4 <= size:
        if data[pos] != 0xFF:
            return data
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9 or 0xD0 <= marker <= 0xD7 or marker in (0x01, 0xD8):
            return data
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        end = pos + 2 + length
        if length < 2 or end > size:
            return data
        if marker == 0xC2:
            progressive = True
        elif marker in (0xC0, 0xC1, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            return data  # baseline, lossless or arithmetic-coded: left to libjpeg as it is
        if marker == 0xDA:
            if not progressive or length < 6:
                return data
            components = data[pos + 4]
            if length != 6 + 2 * components:
                return data
            start, approximation = data[pos + 5 + 2 * components], data[pos + 7 + 2 * components]
            if start > 0 and approximation >> 4 > 0:  # AC, successive-approximation refinement
                return data[:pos] + b"\xff\xd9"
            pos = _after_entropy_data(data, end)
            if pos < 0:
                return data
            continue
        pos = end
    return data


def _after_entropy_data(data: bytes, pos: int) -> int:
    """Where the marker after a scan's entropy-coded data starts (-1 if the data runs to the end)."""
    while True:
        found = data.find(b"\xff", pos)
        if found < 0 or found + 1 >= len(data):
            return -1
        following = data[found + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
            pos = found + (2 if following != 0xFF else 1)
            continue
        return found


def sent_size(width: int, height: int, fmt: str, frames: int, max_side: int) -> tuple[int, int]:
    """The pixel size `prepare_image` sends for an image of this displayed size,
    computed the way Pillow's draft and thumbnail compute it."""
    if frames > 1:
        cell = min(max_side // 2, max(width, height))
        count = min(4, frames)
        return (cell if count == 1 else 2 * cell), math.ceil(count / 2 if count > 1 else 1) * cell
    if fmt in ("JPEG", "MPO"):
        scale = _draft_scale((width, height), max_side)
        width, height = -(-width // scale), -(-height // scale)
    return _thumbnail_size(width, height, max_side)


def _thumbnail_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Pillow's `Image.thumbnail` size rule for a square bounding box."""
    if max_side >= width and max_side >= height:
        return width, height
    aspect = width / height
    x = y = max_side
    if x / y >= aspect:
        x = max(min(math.floor(y * aspect), math.ceil(y * aspect), key=lambda n: abs(aspect - n / y)), 1)
    else:
        y = max(min(math.floor(x / aspect), math.ceil(x / aspect),
                    key=lambda n: 0 if n == 0 else abs(aspect - x / n)), 1)
    return x, y


def encode_jpeg(picture: Image.Image) -> bytes:
    """JPEG at quality 85, stepping quality down for the rare photo (fine
    noise, foliage) that would still make the request over ~300 KB in base64."""
    for quality in (JPEG_QUALITY, 75, 65, 55, 45):
        out = io.BytesIO()
        picture.save(out, "JPEG", quality=quality)
        if out.tell() <= MAX_JPEG_BYTES:
            break
    return out.getvalue()


def _draft_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """The size to ask libjpeg for: it decodes at 1/2, 1/4 or 1/8 scale for a
    fraction of the cost. We accept a result up to 5% under max_side, so the
    common 4032x3024 phone photo decodes at 1/4 (1008 px) instead of 1/2."""
    w, h = size
    for scale in (8, 4, 2):
        if max(w, h) / scale >= DRAFT_TOLERANCE * max_side:
            return max(1, w // scale), max(1, h // scale)
    return size


def _orientation(im: Image.Image) -> int:
    if im.format == "PNG" and "exif" not in im.info:
        # Pillow decodes the whole PNG looking for an eXIf chunk after the
        # pixels; orientation there is rare, and "headers only" must stay so.
        return 1
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
        _, hi = im.getextrema()
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
    n: int = getattr(im, "n_frames", 1)
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
