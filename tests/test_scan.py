"""Finding photos: by content, deterministic, safe with hidden files and symlink loops."""

from __future__ import annotations

import os
import shutil

import pytest

from captioner.scan import Found, Skipped, scan


@pytest.fixture
def lib(tmp_path):
    folder = tmp_path / "library"
    folder.mkdir()
    return folder


def found(root, **kw):
    return [os.path.relpath(i.path, root) for i in scan([root], **kw) if isinstance(i, Found)]


def test_photos_are_recognised_by_content_not_extension(lib, photos):
    shutil.copy(photos / "rocket.jpg", lib / "no_extension")
    (lib / "notes.jpg").write_text("this is not a photo")
    (lib / "album.jpg").mkdir()
    items = list(scan([lib]))
    assert [os.path.basename(i.path) for i in items if isinstance(i, Found)][:1] == ["no_extension"]
    assert Skipped(str(lib / "notes.jpg"), "not an image") in items


def test_hidden_files_and_folders_are_skipped(lib, photos):
    shutil.copy(photos / "rocket.jpg", lib / "._rocket.jpg")
    (lib / ".thumbnails").mkdir()
    shutil.copy(photos / "rocket.jpg", lib / ".thumbnails" / "rocket.jpg")
    shutil.copy(photos / "rocket.jpg", lib / "rocket.jpg")
    assert found(lib) == ["rocket.jpg"]


def test_walk_is_recursive_and_sorted(lib, photos):
    for rel in ("b/2.jpg", "a/z.jpg", "a/y/1.jpg", "c.jpg"):
        (lib / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(photos / "rocket.jpg", lib / rel)
    assert found(lib) == ["a/y/1.jpg", "a/z.jpg", "b/2.jpg", "c.jpg"]


def test_symlink_loops_end(lib, photos):
    (lib / "sub").mkdir()
    shutil.copy(photos / "rocket.jpg", lib / "sub" / "rocket.jpg")
    os.symlink("..", lib / "sub" / "loop")
    os.symlink(lib / "b", lib / "a")
    os.symlink(lib / "a", lib / "b")
    os.symlink("missing.jpg", lib / "dangling.jpg")
    items = list(scan([lib]))
    assert [os.path.relpath(i.path, lib) for i in items if isinstance(i, Found)] == ["sub/rocket.jpg"]


def test_include_and_exclude_match_relative_paths_and_names(lib, photos):
    for rel in ("2024/a.jpg", "2024/b.png", "raw/c.jpg"):
        (lib / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(photos / "rocket.jpg", lib / rel)
    assert found(lib, include=["*.jpg"]) == ["2024/a.jpg", "raw/c.jpg"]
    assert found(lib, exclude=["raw/*"]) == ["2024/a.jpg", "2024/b.png"]


def test_done_files_are_not_read(lib, photos):
    shutil.copy(photos / "rocket.jpg", lib / "rocket.jpg")
    os.chmod(lib / "rocket.jpg", 0o644)
    items = list(scan([lib], is_done=lambda path, size, mtime: True))
    assert items == [Skipped(str(lib / "rocket.jpg"), "done")]


def test_non_utf8_file_name_is_skipped_with_a_reason(lib, photos):
    name = os.path.join(os.fsencode(lib), b"caf\xe9.jpg")
    with open(name, "wb") as fh:
        fh.write((photos / "rocket.jpg").read_bytes())
    (item,) = list(scan([lib]))
    assert isinstance(item, Skipped) and "UTF-8" in item.reason
    item.path.encode("utf-8")  # printable
