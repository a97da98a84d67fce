"""Hostile local conditions: full disks, locked and foreign databases, odd files,
planted links, control characters, odd arguments, signals, stale claims, odd keys."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from PIL import Image
from test_faults import captioner_process, distinct_photos, env_for, wait_for_captions

import captioner.store as store_module
from captioner import pipeline
from captioner.plugins import get_model
from captioner.recipe import recipe_for
from captioner.store import Store

from conftest import rows, run

# -- the database ------------------------------------------------------------------


def test_a_full_disk_stops_sending_keeps_paid_answers_and_the_next_run_stores_them(fake_openai, photos, db):
    Store(str(db)).close()
    store = Store(str(db))
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    # SQLITE_FULL after a few rows: the database may not grow past this many
    # pages, and each long caption needs pages of its own.
    store.conn.execute(f"PRAGMA max_page_count = {pages + 6}")

    def long_caption(reply):
        reply["choices"][0]["message"]["content"] += " and more" * 400
        return reply

    fake_openai.answer_override = long_caption
    settings = pipeline.RunSettings(key="sk-test", concurrency=2)
    summary = pipeline.caption_paths([str(photos)], get_model("gpt-4o-mini"), store, settings)
    store.close()
    assert summary.status == "failed" and "full" in summary.message
    assert "paid answers kept in" in summary.message
    sent = len(fake_openai.image_requests)
    assert sent < len(list(photos.iterdir()))  # stopped sending at the first refused write
    result = run("caption", photos, "-m", "gpt-4o-mini", "--db", db, "--json")  # the disk has room again
    assert result.exit_code == 0, result.output
    answers = rows(db, "SELECT i.sha256 FROM captions c JOIN images i ON i.id = c.image_id")
    assert len(answers) == len(fake_openai.image_requests)  # every paid answer stored, none paid twice
    assert len({a["sha256"] for a in answers}) == len(answers)
    assert not Path(str(db) + ".recovery.jsonl").exists()
    assert [r["status"] for r in rows(db, "SELECT status FROM runs ORDER BY id")] == ["failed", "completed"]


def test_a_write_lock_held_by_another_process_stops_the_run_cleanly(fake_openai, photos, db, monkeypatch):
    Store(str(db)).close()
    store = Store(str(db))
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_MS", 300)
    store.conn.execute("PRAGMA busy_timeout = 300")
    blocker = sqlite3.connect(db, isolation_level=None)
    events = []

    def progress(event):
        events.append(event)
        if event.get("advance") and not blocker.in_transaction:
            blocker.execute("BEGIN IMMEDIATE")  # another process takes the write lock and keeps it

    settings = pipeline.RunSettings(key="sk-test", concurrency=2)
    summary = pipeline.caption_paths([str(photos)], get_model("gpt-4o-mini"), store, settings,
                                     progress_factory=lambda total: progress)
    assert summary.status == "failed" and "locked" in summary.message
    blocker.execute("ROLLBACK")
    blocker.close()
    store.close()
    run("caption", photos, "-m", "gpt-4o-mini", "--db", db)
    answers = rows(db, "SELECT DISTINCT image_id FROM captions")
    assert len(answers) == len(rows(db, "SELECT id FROM captions")) == len(fake_openai.image_requests)


def test_a_database_from_a_newer_captioner_is_refused_before_anything_is_sent(fake_openai, photos, db):
    Store(str(db)).close()
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO _migrations (id, name, applied_at) VALUES (99, 'from the future', '')")
    before = db.read_bytes()
    result = run("caption", photos, "-m", "gpt-4o-mini", "--db", db)
    assert result.exit_code == 2 and "newer captioner" in result.output
    assert fake_openai.received == [] and db.read_bytes() == before


def test_another_applications_database_is_refused_and_left_alone(fake_openai, photos, tmp_path):
    other = tmp_path / "notes.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    before = other.read_bytes()
    result = run("caption", photos, "-m", "gpt-4o-mini", "--db", other)
    assert result.exit_code == 2 and "not a captioner database" in result.output
    assert other.read_bytes() == before and not Path(str(other) + "-wal").exists()
    assert run("cost", "--db", other).exit_code == 2


@pytest.mark.parametrize("name", ["my#photos.db", "what?.db", "100%.db"])
def test_read_only_commands_open_any_file_name(name, fake_openai, photos, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", name).exit_code == 0
    listing = sorted(p.name for p in tmp_path.iterdir())
    for command in (["cost"], ["search", "photo"], ["sql", "SELECT count(*) FROM captions"],
                    ["export", "--format", "csv"]):
        result = run(*command, "--db", name)
        assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == listing  # no stray `my` file, no -wal/-shm


def test_read_only_commands_create_no_wal_or_shm_files(fake_openai, photos, db):
    run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", db)
    assert not Path(str(db) + "-wal").exists()
    run("cost", "--db", db)
    run("sql", "SELECT 1", "--db", db)
    assert not Path(str(db) + "-wal").exists() and not Path(str(db) + "-shm").exists()


# -- files ---------------------------------------------------------------------------


def test_a_fifo_named_like_a_photo_is_skipped_not_waited_on(photos, tmp_path, db):
    os.mkfifo(photos / "b.jpg")
    for command in (["estimate", photos, "-m", "gpt-4.1-nano", "--json"],):
        done = subprocess.run([sys.executable, "-m", "captioner", *map(str, command)], capture_output=True,
                              text=True, timeout=30, env={**os.environ})
        assert done.returncode == 0, done.stderr
    result = run("caption", photos, "-m", "ollama/llava:7b", "--db", db, "--json", "--limit", "0")
    skipped = {Path(s["path"]).name: s["reason"] for s in json.loads(result.output)["skipped"]}
    assert skipped["b.jpg"] == "not a regular file"


def test_a_file_over_the_size_cap_is_never_read(fake_openai, photos, tmp_path, db):
    huge = photos / "huge.jpg"
    with open(huge, "wb") as fh:
        fh.write(b"\xff\xd8\xff\xe0" + b"\0" * 16)
        fh.truncate(300 * 2**20)  # sparse: 300 MB on paper, nothing on disk
    result = run("caption", photos, "-m", "gpt-4o-mini", "--db", db, "--max-file-size", "100", "--json")
    skipped = {Path(s["path"]).name: s["reason"] for s in json.loads(result.output)["skipped"]}
    assert skipped["huge.jpg"] == "larger than the 100 MB limit (--max-file-size)"
    assert len(fake_openai.image_requests) == len(list(photos.iterdir())) - 1


def test_estimate_reads_png_headers_without_decoding_pixels(photos, monkeypatch):
    from PIL import PngImagePlugin

    def no_decoding(self):
        raise AssertionError("estimate decoded a PNG")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", no_decoding)
    result = run("estimate", photos / "coffee.png", photos / "chelsea.png", "-m", "gpt-4.1-nano", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[0]["images"] == 2


def test_an_unreadable_folder_is_reported(photos, monkeypatch, db):
    private = photos / "private"
    private.mkdir()
    real_scandir = os.scandir

    def scandir(path):
        if Path(path) == private:
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    result = run("caption", photos, "-m", "ollama/llava:7b", "--db", db, "--limit", "0", "--json")
    skipped = {Path(s["path"]).name: s["reason"] for s in json.loads(result.output)["skipped"]}
    assert skipped["private"] == "cannot read folder: Permission denied"


def test_a_link_out_of_the_folder_is_reported_not_followed(fake_openai, photos, tmp_path, db):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(photos / "rocket.jpg", outside / "secret.jpg")
    (photos / "link").symlink_to(outside)
    (photos / "secret_link.jpg").symlink_to(outside / "secret.jpg")
    result = run("caption", photos, "-m", "gpt-4o-mini", "--db", db, "--json")
    skipped = {Path(s["path"]).name: s["reason"] for s in json.loads(result.output)["skipped"]}
    assert skipped["link"] == skipped["secret_link.jpg"] == "link to outside the folders given (not followed)"
    assert "link to outside the folders given" in run("caption", photos, "-m", "gpt-4o-mini", "--db", db).output


# -- exports -------------------------------------------------------------------------


def caption_with(fake_openai, photos, db, text):
    def answer(reply):
        reply["choices"][0]["message"]["content"] = text
        return reply

    fake_openai.answer_override = answer
    assert run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", db).exit_code == 0


def test_a_planted_temp_symlink_cannot_redirect_an_export(fake_openai, photos, tmp_path, db):
    caption_with(fake_openai, photos, db, "A rocket.")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (photos / "rocket.jpg.xmp.captioner-tmp").symlink_to(victim)
    (photos / "rocket.txt.captioner-tmp").symlink_to(victim)
    assert run("export", "--db", db, "--format", "xmp").exit_code == 0
    assert run("export", "--db", db, "--format", "txt").exit_code == 0
    assert victim.read_text() == "precious"
    assert "A rocket." in (photos / "rocket.jpg.xmp").read_text()


def test_control_characters_in_a_caption_keep_a_merged_sidecar_well_formed(fake_openai, photos, db):
    caption_with(fake_openai, photos, db, "A rocket\x07 on a pad\x1b[31m.")
    sidecar = photos / "rocket.jpg.xmp"
    sidecar.write_text('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
                       'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" '
                       'xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Rating="5"/></rdf:RDF></x:xmpmeta>')
    assert run("export", "--db", db, "--format", "xmp").exit_code == 0
    text = sidecar.read_text()
    ET.fromstring(text.split("?>", 1)[1].rsplit("<?xpacket", 1)[0])  # well-formed
    assert 'xmp:Rating="5"' in text and "A rocket on a pad[31m." in text


def test_csv_cells_that_look_like_formulas_are_made_text(fake_openai, photos, db, tmp_path):
    caption_with(fake_openai, photos, db, '=HYPERLINK("http://evil.example","click")')
    run("export", "--db", db, "--format", "csv", "--out", tmp_path / "c.csv")
    assert "'=HYPERLINK" in (tmp_path / "c.csv").read_text()
    assert "'=HYPERLINK" in run("sql", "SELECT caption FROM captions", "--db", db, "--csv").output


def test_search_and_sql_never_print_terminal_escapes(fake_openai, photos, db):
    caption_with(fake_openai, photos, db, "A rocket \x1b]0;pwned\x07 at dusk \x1b[2J.")
    for command in (["search", "rocket"], ["sql", "SELECT caption FROM captions"]):
        output = run(*command, "--db", db).output
        assert "\x1b" not in output and "\x07" not in output and "rocket" in output


@pytest.mark.parametrize("out", ["missing/folder", "a_file.txt", "/dev/null"])
def test_export_sidecars_need_a_folder(out, fake_openai, photos, db, tmp_path, monkeypatch):
    caption_with(fake_openai, photos, db, "A rocket.")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file.txt").write_text("x")
    result = run("export", "--db", db, "--format", "xmp", "--out", out)
    if out == "missing/folder":
        assert result.exit_code == 0 and (tmp_path / "missing/folder/rocket.jpg.xmp").exists()
    else:
        assert result.exit_code == 2 and "is not a folder" in result.output


def test_export_to_a_folder_or_a_missing_folder_is_one_line(fake_openai, photos, db, tmp_path):
    caption_with(fake_openai, photos, db, "A rocket.")
    assert "is a folder" in run("export", "--db", db, "--format", "csv", "--out", tmp_path).output
    result = run("export", "--db", db, "--format", "csv", "--out", tmp_path / "nope" / "c.csv")
    assert result.exit_code == 2 and "no such folder" in result.output


def test_compare_checks_the_html_path_before_paying(fake_openai, fake_gemini, photos, db):
    result = run("compare", photos, "-m", "gpt-4o-mini", "-m", "gemini-2.5-flash-lite", "--db", db,
                 "--html", "/nonexistent/x.html")
    assert result.exit_code == 2 and "no such folder" in result.output
    assert fake_openai.received == [] and fake_gemini.received == []


# -- arguments -------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--max-cost", "nan"], "not a finite number"),
    (["--timeout", "nan"], "not a finite number"),
    (["--rpm", "nan"], "not a finite number"),
    (["--rpm", "1e-300"], "0.1"),
    (["-m", ""], "-m needs a model name"),
    (["-m", "gpt-4.1-nano\r\nX-Evil: 1"], "contains control characters"),
    (["-p", "caf\udce9"], "not valid UTF-8"),
    (["-p", "x" * 30_000], "at most 20,000"),
    (["-o", "max_completion_tokens", "100000"], "has no option 'max_completion_tokens'"),
    (["-o", "model", "gpt-4.1"], "has no option 'model'"),
    (["-o", "max_tokens", "1.5"], "needs a whole number"),
    (["-o", "max_tokens", "-5"], "must be at least 1"),
], ids=lambda v: str(v)[:30])
def test_bad_arguments_are_one_line_before_anything_is_sent(args, message, fake_openai, photos, db):
    full = ["caption", photos, "--db", db, *args]
    if "-m" not in args:
        full += ["-m", "gpt-4.1-nano"]
    result = run(*full)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert fake_openai.received == [] and not db.exists()


def test_a_model_name_with_a_trailing_space_is_the_same_model(fake_openai, photos, db):
    run("caption", photos / "rocket.jpg", "-m", "gpt-4.1-nano", "--db", db)
    result = run("caption", photos / "rocket.jpg", "-m", "gpt-4.1-nano ", "--db", db)
    assert result.exit_code == 0 and len(fake_openai.image_requests) == 1
    assert {r["model"] for r in rows(db, "SELECT model FROM captions")} == {"gpt-4.1-nano"}


@pytest.mark.parametrize("query", ['"', "*", "caf\udce9", "AND OR"])
def test_odd_search_queries_are_one_line(query, fake_openai, photos, db):
    run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", db)
    result = run("search", query, "--db", db)
    assert result.exit_code in (0, 2) and "Traceback" not in result.output
    if result.exit_code == 2:  # the reason is one line (click may print the usage above it)
        assert result.output.strip().splitlines()[-1].startswith("Error: ")


def test_a_huge_search_limit_is_refused(fake_openai, photos, db):
    run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", db)
    result = run("search", "rocket", "--db", db, "--limit", "99999999999999999999")
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_sql_streams_a_large_result(fake_openai, photos, db):
    run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", db)
    query = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000) SELECT i FROM n"
    as_csv = run("sql", query, "--db", db, "--csv")
    assert as_csv.exit_code == 0 and len(as_csv.output.splitlines()) == 200_001
    table = run("sql", query, "--db", db)
    assert "first 1,000 rows shown" in table.output


def test_ctrl_c_stops_an_endless_query(fake_openai, photos, db, tmp_path):
    run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", db)
    endless = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n"
    proc = subprocess.Popen([sys.executable, "-m", "captioner", "sql", endless, "--db", str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 130 and "Traceback" not in err and "interrupted" in err


# -- signals and processes ----------------------------------------------------------------


@pytest.fixture
def slow_openai():
    from fakes import FakeOpenAI

    with FakeOpenAI(latency=0.4) as server:
        yield server


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_stop_like_ctrl_c(signum, slow_openai, photos, tmp_path, db):
    distinct_photos(tmp_path / "lib", photos, 16)
    proc = captioner_process("caption", tmp_path / "lib", "-m", "gpt-4o-mini", "--db", db, "--concurrency", "3",
                             env=env_for(slow_openai, tmp_path))
    wait_for_captions(db, 3)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    stored = rows(db, "SELECT count(*) AS n FROM captions")[0]["n"]
    assert stored == len(slow_openai.image_requests) < 16  # every billed answer in flight kept
    assert rows(db, "SELECT status FROM runs")[0]["status"] == "interrupted"


def claim(db, sha, pid, age_seconds=0.0):
    Store(str(db)).close()
    at = (datetime.now(timezone.utc) - timedelta(seconds=age_seconds)).isoformat(timespec="milliseconds")
    recipe = recipe_for(get_model("gpt-4o-mini"), pipeline.DEFAULT_PROMPT, None, {}, None)
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO claims (sha256, recipe, pid, claimed_at) VALUES (?, ?, ?, ?)",
                     (sha, recipe.key, pid, at))


def rocket_sha(photos):
    import hashlib

    return hashlib.sha256((photos / "rocket.jpg").read_bytes()).hexdigest()


def test_a_claim_older_than_any_request_is_taken_over(fake_openai, photos, db):
    claim(db, rocket_sha(photos), os.getppid(), age_seconds=2 * 3600)  # a live pid: reused by another program
    result = run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", db)
    assert result.exit_code == 0 and len(fake_openai.image_requests) == 1


def test_a_claim_of_a_zombie_process_is_taken_over(fake_openai, photos, db):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    time.sleep(0.5)  # exited, not reaped: its pid still answers kill(0)
    claim(db, rocket_sha(photos), child.pid)
    result = run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", db)
    child.wait()
    assert result.exit_code == 0 and len(fake_openai.image_requests) == 1


def test_a_photo_held_by_another_process_is_reported_as_such(fake_openai, photos, db):
    claim(db, rocket_sha(photos), os.getppid())
    result = run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", db)
    assert "1 skipped (being captioned by another captioner process)" in result.output
    assert "not images" not in result.output and fake_openai.image_requests == []


# -- keys ------------------------------------------------------------------------------------


def test_a_key_with_a_trailing_newline_is_trimmed(fake_openai, photos, db, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-from-a-crlf-file\r\n")
    result = run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", db)
    assert result.exit_code == 0, result.output
    assert fake_openai.received[0].headers["Authorization"] == "Bearer sk-test-from-a-crlf-file"


@pytest.mark.parametrize("key", ["sk-tést-ünïcode", "sk-test\x00inside", "sk-has space"])
def test_a_key_with_bad_characters_is_refused_without_showing_it(key, fake_openai, photos, db):
    result = run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", db, "--key", key)
    assert result.exit_code == 2 and "the API key from --key contains" in result.output
    assert key not in result.output and fake_openai.received == []


def test_a_world_readable_keys_file_is_warned_about(fake_openai, photos, db, tmp_path):
    keys = tmp_path / "user" / "keys.json"
    keys.parent.mkdir(parents=True, exist_ok=True)
    keys.write_text(json.dumps({"openai": "sk-test-stored"}))
    keys.chmod(0o644)
    result = run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", db)
    assert "can be read by other users" in result.output


def test_keys_set_replaces_a_symlinked_keys_file_instead_of_writing_through_it(tmp_path):
    target = tmp_path / "somewhere_else.json"
    target.write_text("do not touch")
    keys = tmp_path / "user" / "keys.json"
    keys.parent.mkdir(parents=True, exist_ok=True)
    keys.symlink_to(target)
    result = run("keys", "set", "openai", "--value", "sk-test-new")
    assert result.exit_code == 0
    assert target.read_text() == "do not touch"
    assert not keys.is_symlink() and json.loads(keys.read_text()) == {"openai": "sk-test-new"}
    assert keys.stat().st_mode & 0o777 == 0o600


def test_a_key_never_appears_in_the_database(fake_openai, photos, db, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key-SECRETSECRET")
    run("caption", photos, "-m", "gpt-4o-mini", "--db", db)
    assert b"SECRETSECRET" not in db.read_bytes()


def test_an_image_too_big_for_memory_would_not_stop_the_others(photos, db, fake_openai):
    Image.new("RGB", (10, 10)).save(photos / "tiny.png")
    result = run("caption", photos, "-m", "gpt-4o-mini", "--db", db)
    assert result.exit_code == 0
