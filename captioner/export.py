"""Exports of stored captions for people and other tools: XMP sidecars that
photo apps read, .txt sidecars for training sets, CSV, JSON Lines, HTML."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from .gallery import GalleryItem, render_parts, thumbnail_uri, thumbnails_beside
from .schema import alt_text_of, keywords_of, title_of
from .store import PHOTO_CAPTIONS_JOIN, Store
from .text import for_csv, for_xml


def newest_captions(store: Store, model: str | None = None) -> Iterator[dict[str, Any]]:
    """One row per image path: its newest ok caption (for `model`, or from any
    model), through the content hash so copies of a photo share its caption."""
    model_filter = "AND c2.model = :model" if model else ""
    yield from store.query(
        f"""SELECT i.path, i.kind, i.duration_s, i.taken_at, i.width, i.height, i.camera_make, i.camera_model,
                   i.gps_lat, i.gps_lon,
                   c.model, c.prompt, c.caption, c.input_tokens, c.output_tokens, c.cost_usd, c.created_at,
                   c.title, c.keywords, c.alt_text, c.data_json
            FROM {PHOTO_CAPTIONS_JOIN}
            WHERE c.id = (
                SELECT c2.id FROM captions c2 JOIN images j2 ON j2.id = c2.image_id
                WHERE j2.sha256 = i.sha256 AND c2.status = 'ok' {model_filter}
                ORDER BY c2.id DESC LIMIT 1)
            ORDER BY i.path""",
        {"model": model} if model else {},
    )


def html_gallery(store: Store, model: str | None = None, paths: tuple[str, ...] = (),
                 page_path: str | None = None) -> tuple[str, int]:
    """The gallery page as one string (for stdout); `write_gallery` streams it to a file."""
    out = io.StringIO()
    count = write_gallery(store, out, model, paths, page_path)
    return out.getvalue(), count


def write_gallery(store: Store, out: TextIO, model: str | None = None, paths: tuple[str, ...] = (),
                  page_path: str | None = None) -> int:
    """Write the gallery page a photo at a time (its thumbnails go in a folder beside a page
    written to a file), so a library of any size takes the same memory."""
    count = sum(1 for _ in newest_rows(store, model, paths))
    items = (GalleryItem(r["path"], {r["model"]: ("ok", r["caption"])}, r.get("duration_s"))
             for r in newest_rows(store, model, paths))
    thumbnails = thumbnails_beside(page_path) if page_path else thumbnail_uri
    for part in render_parts(f"captioner gallery ({count} photos)", items, None, thumbnails=thumbnails):
        out.write(part + "\n")
    return count


def newest_rows(store: Store, model: str | None = None, paths: tuple[str, ...] = ()) -> Iterator[dict[str, Any]]:
    """`newest_captions` for these files or folders (all if none given), one row at a time."""
    wanted = [os.path.abspath(p) for p in paths]
    for row in newest_captions(store, model):
        if not wanted or any(row["path"] == w or row["path"].startswith(w.rstrip(os.sep) + os.sep) for w in wanted):
            yield row


# -- sidecars ------------------------------------------------------------------

NS = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
    "tiff": "http://ns.adobe.com/tiff/1.0/",
    "exif": "http://ns.adobe.com/exif/1.0/",
    "xml": "http://www.w3.org/XML/1998/namespace",
    "Iptc4xmpCore": "http://iptc.org/std/Iptc4xmpCore/1.0/xmlns/",
    # captioner's own field: the text it wrote, so a later export can tell its
    # words from a person's and never replace the latter.
    "captioner": "https://captioner.dev/ns/1.0/",
}
XPACKET_BEGIN = '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
XPACKET_END = '\n<?xpacket end="w"?>\n'
# Fields our caption goes into: dc:description is what Immich, digiKam, darktable,
# Lightroom and exiftool read as the description; tiff:ImageDescription mirrors
# the EXIF ImageDescription tag for tools that read that one.
CAPTION_FIELDS = ("{{{}}}description".format(NS["dc"]), "{{{}}}ImageDescription".format(NS["tiff"]))
WRITTEN_MARK = "{{{}}}writtenDescription".format(NS["captioner"])
# Structured answers: the title, the alt text (IPTC's accessibility field) and
# the keywords (dc:subject, what Lightroom, digiKam and Immich read as keywords).
TITLE = "{{{}}}title".format(NS["dc"])
ALT_TEXT = "{{{}}}AltTextAccessibility".format(NS["Iptc4xmpCore"])
SUBJECT = "{{{}}}subject".format(NS["dc"])
WRITTEN_TITLE = "{{{}}}writtenTitle".format(NS["captioner"])
WRITTEN_ALT_TEXT = "{{{}}}writtenAltText".format(NS["captioner"])
WRITTEN_KEYWORDS = "{{{}}}writtenKeywords".format(NS["captioner"])
LI = "{{{}}}li".format(NS["rdf"])
TABLE_FIELDS = ["path", "model", "caption", "input_tokens", "output_tokens", "cost_usd", "taken_at",
                "title", "keywords", "alt_text"]


@dataclass(frozen=True)
class Metadata:
    """What a sidecar says about one photo: the caption, and a structured answer's title, alt text and keywords."""

    description: str
    title: str | None = None
    alt_text: str | None = None
    keywords: tuple[str, ...] = ()

    @classmethod
    def of(cls, row: dict[str, Any]) -> Metadata:
        data = json.loads(row["data_json"]) if row.get("data_json") else None
        return cls(row["caption"], title_of(data), alt_text_of(data), tuple(keywords_of(data)))


class UserText(ValueError):
    """A sidecar holds a description captioner did not write."""


@dataclass
class ExportReport:
    written: list[str] = field(default_factory=list)
    merged: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    dry_run: bool = False


@dataclass(frozen=True)
class SidecarOptions:
    out_dir: str | None = None
    replace_extension: bool = False
    overwrite: bool = False  # replace a description captioner did not write
    dry_run: bool = False


def sidecar_path(image_path: str, suffix: str, out_dir: str | None, replace_extension: bool,
                 base_dir: str | None = None) -> str:
    """Beside the photo, or under `out_dir` keeping the photo's sub-folders
    below `base_dir`, so two IMG_0001.jpg in different folders never collide."""
    folder, name = os.path.split(image_path)
    stem = os.path.splitext(name)[0] if replace_extension else name
    if out_dir is None:
        return os.path.join(folder, stem + suffix)
    relative = os.path.relpath(folder, base_dir) if base_dir else "."
    return os.path.normpath(os.path.join(out_dir, relative, stem + suffix))


Rows = Callable[[], Iterable[dict[str, Any]]]


def _plan(rows: Rows, suffix: str, out_dir: str | None, replace_extension: bool,
          report: ExportReport) -> Iterator[tuple[dict[str, Any], str]]:
    """Where each sidecar goes, a photo at a time. The rows are read again for each
    pass: the common folder (only with --out), the targets two photos would share
    (both are reported, neither written), then the writing; only the targets are
    held, never the captions."""
    base_dir: str | None = None
    shared: dict[str, int] = {}
    if out_dir:
        for row in rows():
            folder = os.path.dirname(row["path"])
            base_dir = folder if base_dir is None else os.path.commonpath([base_dir, folder])
    for row in rows():
        target = sidecar_path(row["path"], suffix, out_dir, replace_extension, base_dir)
        shared[target] = shared.get(target, 0) + 1
    owners: dict[str, list[str]] = {}
    for row in rows():
        target = sidecar_path(row["path"], suffix, out_dir, replace_extension, base_dir)
        if shared[target] > 1:
            owners.setdefault(target, []).append(row["path"])
        else:
            yield row, target
    for target, paths in owners.items():
        names = ", ".join(os.path.basename(p) for p in paths)
        for path in paths:
            report.skipped.append((path, f"{os.path.basename(target)} would be shared by {names}"))


def _lang_alt(tag: str, text: str) -> ET.Element:
    element = ET.Element(tag)
    alt = ET.SubElement(element, "{{{}}}Alt".format(NS["rdf"]))
    item = ET.SubElement(alt, "{{{}}}li".format(NS["rdf"]))
    item.set("{{{}}}lang".format(NS["xml"]), "x-default")
    item.text = for_xml(text)
    return element


def new_xmp(meta: Metadata) -> str:
    root = ET.Element("{{{}}}xmpmeta".format(NS["x"]))
    root.set("{{{}}}xmptk".format(NS["x"]), "captioner")
    rdf = ET.SubElement(root, "{{{}}}RDF".format(NS["rdf"]))
    description = ET.SubElement(rdf, "{{{}}}Description".format(NS["rdf"]))
    description.set("{{{}}}about".format(NS["rdf"]), "")
    _put_description(description, meta.description)
    _put_structured(description, meta, title=meta.title, alt_text=meta.alt_text, keywords=list(meta.keywords),
                    ours=list(meta.keywords))
    return _serialize(root, {})


def _put_description(description: ET.Element, caption: str) -> None:
    for tag in CAPTION_FIELDS:
        description.append(_lang_alt(tag, caption))
    description.set(WRITTEN_MARK, for_xml(caption))


def _put_structured(description: ET.Element, meta: Metadata, *, title: str | None, alt_text: str | None,
                    keywords: list[str], ours: list[str]) -> None:
    """The title, alt text and keyword bag to write, captioner's own marked as
    such (so a later export can tell them from a person's); `ours` are the
    keywords captioner added, not those a person had already."""
    if title:
        description.append(_lang_alt(TITLE, title))
    if meta.title and title == meta.title:
        description.set(WRITTEN_TITLE, for_xml(meta.title))
    if alt_text:
        description.append(_lang_alt(ALT_TEXT, alt_text))
    if meta.alt_text and alt_text == meta.alt_text:
        description.set(WRITTEN_ALT_TEXT, for_xml(meta.alt_text))
    if keywords:
        subject = ET.SubElement(description, SUBJECT)
        bag = ET.SubElement(subject, "{{{}}}Bag".format(NS["rdf"]))
        for keyword in keywords:
            ET.SubElement(bag, LI).text = for_xml(keyword)
    if ours:
        description.set(WRITTEN_KEYWORDS, for_xml(json.dumps(ours, ensure_ascii=False)))


def _texts(description: ET.Element, tag: str) -> list[str]:
    """Every value a description element holds for `tag` (as an attribute, a language alternative or a bag)."""
    found = [description.attrib[tag]] if tag in description.attrib else []
    for element in description.findall(tag):
        found += [(li.text or "") for li in element.iter(LI)]
    return [text.strip() for text in found if text.strip()]


def _written_keywords(descriptions: list[ET.Element]) -> set[str]:
    written: set[str] = set()
    for d in descriptions:
        try:
            values = json.loads(d.attrib.get(WRITTEN_KEYWORDS, "[]"))
        except ValueError:
            values = []
        written |= {str(v).casefold() for v in values if isinstance(v, str)} if isinstance(values, list) else set()
    return written


def _kept_field(descriptions: list[ET.Element], tag: str, mark: str, ours: str | None, overwrite: bool) -> str | None:
    """What a title or alt-text field should say: a person's text is kept (unless
    `overwrite`); captioner's own earlier text gives way to the new one."""
    written = {d.attrib[mark].strip() for d in descriptions if d.attrib.get(mark, "").strip()}
    theirs = [t for d in descriptions for t in _texts(d, tag) if t not in written]
    if theirs and not overwrite:
        return theirs[0]
    return ours


def merge_xmp(existing: str, meta: Metadata, overwrite: bool = False) -> str:
    """Put the caption (and a structured answer's title, alt text and keywords)
    into an existing sidecar, keeping every other field and prefix.

    A description captioner did not write (it differs from the text captioner
    recorded it wrote, or captioner never wrote one) is a person's words: it is
    kept and `UserText` raised, unless `overwrite`. A person's title and alt
    text are kept too; keywords are merged, a person's never dropped (the ones
    captioner wrote before and no longer gives are replaced)."""
    prefixes = {prefix: uri for _, (prefix, uri) in ET.iterparse(io.StringIO(existing), events=("start-ns",))}
    root = ET.fromstring(existing.encode("utf-8"))
    rdf = root if root.tag == "{{{}}}RDF".format(NS["rdf"]) else root.find("{{{}}}RDF".format(NS["rdf"]))
    if rdf is None:
        raise ValueError("no rdf:RDF element")
    descriptions = rdf.findall("{{{}}}Description".format(NS["rdf"]))
    ours = {text.strip() for d in descriptions for text in [d.attrib.get(WRITTEN_MARK, "")] if text.strip()}
    theirs = {text for d in descriptions for tag in CAPTION_FIELDS for text in _texts(d, tag)} - ours
    if not ours and root.get("{{{}}}xmptk".format(NS["x"])) == "captioner":
        theirs = set()  # a sidecar captioner made before it marked its words

    if theirs and not overwrite:
        raise UserText("it holds a description captioner did not write (--overwrite replaces it)")
    title = _kept_field(descriptions, TITLE, WRITTEN_TITLE, meta.title, overwrite)
    alt_text = _kept_field(descriptions, ALT_TEXT, WRITTEN_ALT_TEXT, meta.alt_text, overwrite)
    written_before = _written_keywords(descriptions)
    keywords: dict[str, str] = {}
    for d in descriptions:
        for keyword in _texts(d, SUBJECT):
            if keyword.casefold() not in written_before:
                keywords.setdefault(keyword.casefold(), keyword)
    persons = set(keywords)
    for keyword in meta.keywords:
        keywords.setdefault(keyword.casefold(), keyword)
    for description in descriptions:
        for tag in (*CAPTION_FIELDS, TITLE, ALT_TEXT, SUBJECT):
            for old in description.findall(tag):
                description.remove(old)
            description.attrib.pop(tag, None)
        for mark in (WRITTEN_MARK, WRITTEN_TITLE, WRITTEN_ALT_TEXT, WRITTEN_KEYWORDS):
            description.attrib.pop(mark, None)
    target = descriptions[0] if descriptions else ET.SubElement(rdf, "{{{}}}Description".format(NS["rdf"]))
    target.attrib.setdefault("{{{}}}about".format(NS["rdf"]), "")
    _put_description(target, meta.description)
    _put_structured(target, meta, title=title, alt_text=alt_text, keywords=list(keywords.values()),
                    ours=[k for k in meta.keywords if k.casefold() not in persons])
    return _serialize(root, prefixes)


def _serialize(root: ET.Element, prefixes: dict[str, str]) -> str:
    for prefix, uri in {**{k: v for k, v in NS.items() if k != "xml"}, **prefixes}.items():
        if prefix and prefix != "xml":
            ET.register_namespace(prefix, uri)
    ET.indent(root, space=" ")
    return XPACKET_BEGIN + ET.tostring(root, encoding="unicode") + XPACKET_END


def write_xmp(rows: Rows, options: SidecarOptions) -> ExportReport:
    report = ExportReport(dry_run=options.dry_run)
    for row, target in _plan(rows, ".xmp", options.out_dir, options.replace_extension, report):
        if os.path.exists(target):
            try:
                with open(target, encoding="utf-8") as fh:
                    text = merge_xmp(fh.read(), Metadata.of(row), options.overwrite)
            except UserText as exc:
                report.skipped.append((row["path"], f"{os.path.basename(target)} kept: {exc}"))
                continue
            except (ET.ParseError, ValueError, UnicodeDecodeError) as exc:
                report.skipped.append((row["path"], f"existing {os.path.basename(target)} is not readable XMP"
                                                    f" ({exc}); left untouched"))
                continue
        else:
            text = new_xmp(Metadata.of(row))
        _write_sidecar(target, text, row["path"], report)
    return report


def write_txt(rows: Rows, options: SidecarOptions) -> ExportReport:
    """Training-set sidecars: the caption alone in a .txt with the image's stem."""
    report = ExportReport(dry_run=options.dry_run)
    for row, target in _plan(rows, ".txt", options.out_dir, True, report):
        _write_sidecar(target, row["caption"].strip() + "\n", row["path"], report)
    return report


def _write_sidecar(target: str, text: str, photo: str, report: ExportReport) -> None:
    existed = os.path.exists(target)
    try:
        if not report.dry_run:
            _atomic_write(target, text)
    except OSError as exc:
        report.skipped.append((photo, f"cannot write {target}: {exc.strerror or exc}"))
        return
    (report.merged if existed else report.written).append(target)


def _atomic_write(target: str, text: str) -> None:
    """Write beside the target under a fresh random name (created exclusively,
    so a planted file or symlink is never written through), then rename."""
    folder = os.path.dirname(target) or "."
    os.makedirs(folder, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=".captioner-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def table_text(rows: Iterable[dict[str, Any]], fmt: str) -> str:
    """CSV or JSON Lines of the newest captions, as one string."""
    out = io.StringIO()
    write_table(rows, fmt, out)
    return out.getvalue()


def write_table(rows: Iterable[dict[str, Any]], fmt: str, out: TextIO) -> int:
    """CSV or JSON Lines, written a row at a time; returns how many rows."""
    count = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=TABLE_FIELDS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: for_csv(v) for k, v in row.items()})
            count += 1
        return count
    for row in rows:
        record = {k: row.get(k) for k in TABLE_FIELDS}
        data = json.loads(row["data_json"]) if row.get("data_json") else None
        record["keywords"] = keywords_of(data) or None  # a list here, not the column's joined text
        record["data"] = data
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        count += 1
    return count
