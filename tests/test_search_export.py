"""Finding and reusing captions: full-text search, read-only SQL, and exports other tools read."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess

import pytest
import sqlite_utils

from conftest import rows, run

CAPTIONS = {
    "rocket.jpg": "A Falcon 9 rocket on its launch pad at dusk, with butterflies painted on the tower.",
    "chelsea.png": "Close-up of a tabby cat's face with yellow-green eyes.",
    "coffee.png": "An espresso in a red cup on a wooden table; a butterfly-shaped spoon.",
    "pug.heic": "A fawn pug sitting in a plush dog bed.",
    "grace_hopper.jpg": "Portrait of a woman in a navy uniform with a T-shirt collar & \"cap\" <hat>.",
}


@pytest.fixture
def captioned(fake_openai, photos, db):
    """The sample photos captioned with hand-written captions (served by the fake)."""
    by_size = {}

    def answer(reply):
        label = reply["choices"][0]["message"]["content"]
        name = by_size.get(label.split()[-1], "")
        reply["choices"][0]["message"]["content"] = CAPTIONS.get(name, label)
        return reply

    from captioner.media import header_facts, sent_size
    for name in CAPTIONS:
        w, h, fmt, frames = header_facts(str(photos / name))
        by_size["%dx%d" % sent_size(w, h, fmt, frames, 1024)] = name
    fake_openai.answer_override = answer
    for extra in photos.iterdir():
        if extra.name not in CAPTIONS:
            extra.unlink()
    assert run("caption", photos, "-m", "gpt-4o-mini", "--db", db).exit_code == 0
    return photos


def search(db, *args):
    result = run("search", *args, "--db", db, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_search_stems_words(captioned, db):
    found = search(db, "butterfly")
    assert {r["path"].rsplit("/", 1)[-1] for r in found} == {"rocket.jpg", "coffee.png"}
    assert "**butterflies**" in next(r["snippet"] for r in found if r["path"].endswith("rocket.jpg"))


def test_search_ranks_and_filters(captioned, db):
    assert search(db, "pug")[0]["path"].endswith("pug.heic")
    assert search(db, "pug", "--since", "2023-02-21")[0]["taken_at"] == "2023-02-21T14:33:08"
    assert search(db, "pug", "--until", "2023-02-20") == []
    assert search(db, "pug", "-m", "gpt-4.1-nano") == []
    assert len(search(db, "a OR the", "--limit", "2")) == 2


def test_search_text_output_shows_path_model_date_and_snippet(captioned, db):
    out = run("search", "pug", "--db", db).output
    assert "pug.heic  (gpt-4o-mini, 2023-02-21)" in out and "fawn" in out


def test_search_syntax_error_is_a_clear_message(captioned, db):
    result = run("search", 'cat AND (', "--db", db)
    assert result.exit_code == 2
    assert "invalid search query" in result.output and "Traceback" not in result.output


def test_search_without_a_database_is_a_clear_error(tmp_path):
    result = run("search", "cat", "--db", tmp_path / "none.db")
    assert result.exit_code == 2 and "no database" in result.output


def test_sql_reads_and_formats(captioned, db):
    out = json.loads(run("sql", "SELECT path, camera, caption FROM photo_captions ORDER BY path", "--db", db,
                         "--json").output)
    assert len(out) == len(CAPTIONS)
    assert next(r for r in out if r["path"].endswith("pug.heic"))["camera"] == "Apple iPhone 13 Pro"
    text = run("sql", "SELECT count(*) AS n FROM captions", "--db", db).output
    assert text.split() == ["n", str(len(CAPTIONS))]
    parsed = list(csv.DictReader(io.StringIO(run("sql", "SELECT path, caption FROM captions JOIN images "
                                                        "ON images.id = captions.image_id", "--db", db,
                                                 "--csv").output)))
    assert {r["caption"] for r in parsed} == set(CAPTIONS.values())


@pytest.mark.parametrize("statement", [
    "DELETE FROM captions",
    "UPDATE captions SET caption = 'x'",
    "DROP TABLE captions",
    "INSERT INTO runs (model) VALUES ('x')",
    "PRAGMA query_only = 0",
    "ATTACH DATABASE 'other.db' AS other",
    "CREATE TABLE t (x)",
    "SELECT 1; DELETE FROM captions",
])
def test_sql_cannot_write(captioned, db, statement):
    before = rows(db, "SELECT count(*) AS n FROM captions")[0]["n"]
    result = run("sql", statement, "--db", db)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert rows(db, "SELECT count(*) AS n FROM captions")[0]["n"] == before
    assert rows(db, "SELECT count(*) AS n FROM runs")[0]["n"] == 1


def test_readme_example_queries_run(captioned, db):
    for query in [
        "SELECT path, caption FROM photo_captions WHERE gps_lat BETWEEN 44 AND 46 AND gps_lon BETWEEN 34 AND 36",
        "SELECT substr(captioned_at, 1, 7) AS month, round(sum(cost_usd), 4) AS usd FROM photo_captions GROUP BY month",
        "SELECT a.path, a.model, a.caption, b.model, b.caption FROM photo_captions a JOIN photo_captions b "
        "ON a.path = b.path AND a.model < b.model",
    ]:
        assert run("sql", query, "--db", db).exit_code == 0, query


def test_datasette_finds_the_full_text_index(captioned, db):
    # Datasette shows a search box on a table when sqlite-utils' detect_fts finds its FTS table.
    assert sqlite_utils.Database(db)["captions"].detect_fts() == "captions_fts"
    assert len(list(sqlite_utils.Database(db)["captions"].search("pug"))) == 1


# -- exports ---------------------------------------------------------------------

def test_xmp_sidecars_are_read_back_by_exiftool(captioned, db):
    if shutil.which("exiftool") is None:
        pytest.skip("exiftool (Debian libimage-exiftool-perl) not installed")
    result = run("export", "--db", db, "--format", "xmp")
    assert result.exit_code == 0 and f"{len(CAPTIONS)} written" in result.output
    for name, caption in CAPTIONS.items():
        sidecar = captioned / f"{name}.xmp"
        read = subprocess.run(["exiftool", "-s3", "-XMP-dc:Description", str(sidecar)],
                              capture_output=True, text=True, check=True).stdout.strip()
        assert read == caption
        described = subprocess.run(["exiftool", "-s3", "-XMP-tiff:ImageDescription", str(sidecar)],
                                   capture_output=True, text=True, check=True).stdout.strip()
        assert described == caption


def test_xmp_replace_naming(captioned, db):
    run("export", "--db", db, "--format", "xmp", "--sidecar-name", "replace")
    assert (captioned / "pug.xmp").exists() and not (captioned / "pug.heic.xmp").exists()


def test_existing_xmp_is_merged_keeping_its_other_fields(captioned, db):
    existing = captioned / "pug.heic.xmp"
    existing.write_text(
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
        'xmlns:dc="http://purl.org/dc/elements/1.1/" xmp:Rating="4">'
        '<dc:subject><rdf:Bag><rdf:li>dogs</rdf:li></rdf:Bag></dc:subject>'
        '<dc:description><rdf:Alt><rdf:li xml:lang="x-default">old text</rdf:li></rdf:Alt></dc:description>'
        '</rdf:Description></rdf:RDF></x:xmpmeta>')
    kept = run("export", "--db", db, "--format", "xmp")  # "old text" is a person's: kept by default
    assert kept.exit_code == 1 and "did not write (--overwrite replaces it)" in kept.output
    assert "old text" in existing.read_text()
    result = run("export", "--db", db, "--format", "xmp", "--overwrite")
    assert result.exit_code == 0 and "0 skipped" in result.output
    text = existing.read_text()
    assert 'xmp:Rating="4"' in text and "<rdf:li>dogs</rdf:li>" in text
    assert "old text" not in text and CAPTIONS["pug.heic"] in text
    if shutil.which("exiftool"):
        out = subprocess.run(["exiftool", "-s3", "-XMP-xmp:Rating", "-XMP-dc:Subject", "-XMP-dc:Description",
                              str(existing)], capture_output=True, text=True).stdout.split("\n")
        assert out[:3] == ["4", "dogs", CAPTIONS["pug.heic"]]


def test_unreadable_existing_sidecar_is_left_alone(captioned, db):
    existing = captioned / "pug.heic.xmp"
    existing.write_text("not xml at all <<<")
    result = run("export", "--db", db, "--format", "xmp")
    assert result.exit_code == 1 and "left untouched" in result.output
    assert existing.read_text() == "not xml at all <<<"


def test_txt_sidecars_and_collisions(captioned, db, fake_openai):
    shutil.copy(captioned / "chelsea.png", captioned / "rocket.png")  # rocket.jpg and rocket.png share rocket.txt
    run("caption", captioned, "-m", "gpt-4o-mini", "--db", db)
    result = run("export", "--db", db, "--format", "txt")
    assert result.exit_code == 1
    assert "rocket.txt would be shared by rocket.jpg, rocket.png" in result.output
    assert not (captioned / "rocket.txt").exists()
    assert (captioned / "pug.txt").read_text() == CAPTIONS["pug.heic"] + "\n"


def test_csv_and_jsonl_round_trip(captioned, db, tmp_path):
    run("export", "--db", db, "--format", "csv", "--out", tmp_path / "c.csv")
    run("export", "--db", db, "--format", "jsonl", "--out", tmp_path / "c.jsonl")
    from_csv = list(csv.DictReader((tmp_path / "c.csv").read_text(encoding="utf-8").splitlines()))
    from_jsonl = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text(encoding="utf-8").splitlines()]
    stored = rows(db, "SELECT i.path, c.model, c.caption, c.input_tokens, c.output_tokens, c.cost_usd, i.taken_at, "
                      "c.title, c.keywords, c.alt_text, c.data_json AS data "
                      "FROM captions c JOIN images i ON i.id = c.image_id ORDER BY i.path")
    assert from_jsonl == stored  # plain captions: no title, keywords, alt text or data
    assert [r["caption"] for r in from_csv] == [r["caption"] for r in stored]
    assert [float(r["cost_usd"]) for r in from_csv] == [r["cost_usd"] for r in stored]


def test_export_model_choice_and_newest_default(captioned, db, fake_gemini):
    run("caption", captioned / "pug.heic", "-m", "gemini-2.5-flash-lite", "--db", db)
    newest = [json.loads(x) for x in run("export", "--db", db, "--format", "jsonl").output.splitlines()]
    assert next(r for r in newest if r["path"].endswith("pug.heic"))["model"] == "gemini-2.5-flash-lite"
    chosen = [json.loads(x) for x in run("export", "--db", db, "--format", "jsonl", "-m", "gpt-4o-mini")
              .output.splitlines()]
    assert {r["model"] for r in chosen} == {"gpt-4o-mini"} and len(chosen) == len(CAPTIONS)


def test_exports_never_contain_keys(captioned, db, tmp_path):
    for fmt in ("csv", "jsonl", "html"):
        run("export", "--db", db, "--format", fmt, "--out", tmp_path / f"x.{fmt}")
        assert "sk-test" not in (tmp_path / f"x.{fmt}").read_text()
