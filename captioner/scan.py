"""Step 1: find the photos under the roots.

Files are recognised by their first bytes, never by extension: a JPEG with no
extension is a photo, a text file called `x.jpg` is not. Hidden files and
folders (`.*`, including macOS `._*` AppleDouble files) are skipped. Folder
symlinks are followed, but each real folder is visited once, so a link cycle
cannot loop, and a link that leads outside the roots is reported, not
followed. Only regular files are opened (a FIFO called `b.jpg` would block
for ever), and only up to a size cap. Every file passed over comes back as
`Skipped` with its true reason. The order is deterministic (sorted names,
depth first).
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

# Far above any real photo (a 200-megapixel HEIC is about 100 MB); `--max-file-size` changes it.
DEFAULT_MAX_FILE_BYTES = 512 * 1024 * 1024
DEFAULT_MAX_VIDEO_BYTES = 64 * 1024**3
NOT_IMAGE, EMPTY, DONE = "not an image", "empty file", "done"
HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"}


# ISO base media (MP4/MOV/3GP) brands that are video; audio-only brands (M4A, M4B) are not.
AUDIO_BRANDS = {b"M4A ", b"M4B ", b"M4P ", b"F4A ", b"F4B "}
QUICKTIME_ATOMS = {b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}


def sniff_video(head: bytes) -> str | None:
    """The video container these leading bytes announce, or None."""
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in HEIF_BRANDS or brand in AUDIO_BRANDS:
            return None
        return "MOV" if brand == b"qt  " else "MP4"
    if head[4:8] in QUICKTIME_ATOMS:
        return "MOV"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "MKV"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "AVI"
    return None


def sniff_format(head: bytes) -> str | None:
    """The image format these leading bytes announce, or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS:
        return "AVIF" if head[8:12] in (b"avif", b"avis") else "HEIF"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[:2] == b"BM" and len(head) >= 26:
        return "BMP"
    return None


@dataclass(frozen=True)
class Found:
    """A file under a root that may be a photo or a video clip."""

    path: str
    size: int
    mtime: float
    kind: str = "image"  # or "video"


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


def _matches(rel: str, patterns: Iterable[str]) -> bool:
    """Glob match on the relative path or the name, ignoring case (`*.heic`
    matches `IMG_1.HEIC`: cameras and phones write extensions either way)."""
    rel = rel.lower()
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(rel, p.lower()) or fnmatch.fnmatchcase(name, p.lower()) for p in patterns)


def _inside(path: str, real_roots: tuple[str, ...]) -> bool:
    real = os.path.realpath(path)
    return any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in real_roots)


def _walk(root: Path, seen_dirs: set[tuple[int, int]], real_roots: tuple[str, ...]
          ) -> Iterator[os.DirEntry | Skipped]:
    """Sorted depth-first walk yielding file entries (and folders it could not
    read); each real directory once."""
    try:
        st = root.stat()
    except OSError:
        return
    key = (st.st_dev, st.st_ino)
    if key in seen_dirs:
        return
    seen_dirs.add(key)
    try:
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        yield Skipped(os.path.abspath(root), f"cannot read folder: {exc.strerror or exc}")
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_symlink() and not _inside(entry.path, real_roots):
            yield Skipped(os.path.abspath(entry.path), "link to outside the folders given (not followed)")
            continue
        try:
            is_dir = entry.is_dir(follow_symlinks=True)
        except OSError:
            is_dir = False
        if is_dir:
            yield from _walk(Path(entry.path), seen_dirs, real_roots)
        else:
            yield entry


def scan(
    roots: Iterable[str | os.PathLike],
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    is_done: Callable[[str, int, float], bool] | None = None,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
    videos: bool = True,
    max_video_bytes: int = DEFAULT_MAX_VIDEO_BYTES,
) -> Iterator[Found | Skipped]:
    """Yield every candidate photo (and video clip, unless `videos` is False)
    under `roots` as `Found`, and everything passed over for a reason the user
    may want to know as `Skipped`.

    `is_done(path, size, mtime)` lets the caller say a file is already handled;
    such files are skipped before their bytes are read.
    """
    include, exclude = tuple(include), tuple(exclude)
    root_paths = [Path(root) for root in roots]
    real_roots = tuple(os.path.realpath(root) for root in root_paths)
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[str] = set()
    for root in root_paths:
        if root.is_dir():
            entries: Iterable[os.DirEntry | Path | Skipped] = _walk(root, seen_dirs, real_roots)
            base = root
        else:
            entries = [root]
            base = root.parent
        for entry in entries:
            if isinstance(entry, Skipped):
                yield entry
                continue
            path = os.path.abspath(entry.path if isinstance(entry, os.DirEntry) else entry)
            if path in seen_files:
                continue
            seen_files.add(path)
            rel = os.path.relpath(path, base).replace(os.sep, "/")
            if include and not _matches(rel, include):
                continue
            if exclude and _matches(rel, exclude):
                continue
            yield from _check(path, is_done, max_bytes, videos, max_video_bytes)


def _check(path: str, is_done: Callable[[str, int, float], bool] | None, max_bytes: int, videos: bool = True,
           max_video_bytes: int = 0) -> Iterator[Found | Skipped]:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        yield Skipped(path.encode("utf-8", "backslashreplace").decode(), "file name is not valid UTF-8")
        return
    try:
        st = os.stat(path)
    except OSError as exc:
        yield Skipped(path, f"cannot read: {exc.strerror or exc}")
        return
    if not stat.S_ISREG(st.st_mode):
        yield Skipped(path, "not a regular file")
        return
    if is_done is not None and is_done(path, st.st_size, st.st_mtime):
        yield Skipped(path, DONE)
        return
    try:
        with open(path, "rb") as fh:
            head = fh.read(32)
    except OSError as exc:
        yield Skipped(path, f"cannot read: {exc.strerror or exc}")
        return
    kind = "image" if sniff_format(head) else "video" if sniff_video(head) else None
    if kind is None:
        yield Skipped(path, NOT_IMAGE if head else EMPTY)
        return
    if kind == "video" and not videos:
        yield Skipped(path, "video (--no-videos)")
        return
    # A video is read in pieces, never whole, so its cap is the larger one.
    limit = max(max_bytes, max_video_bytes) if kind == "video" else max_bytes
    if st.st_size > limit:
        yield Skipped(path, f"larger than the {limit / 2**20:,.0f} MB limit (--max-file-size)")
        return
    yield Found(path, st.st_size, st.st_mtime, kind)
