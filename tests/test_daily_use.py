"""Daily use: results shown, failures visible, one payment per recipe, a database a user can find,
a user's words safe, budgets spent, numbers readable, help that helps."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import rows, run
from fakes import Fault

# -- one recipe, one payment -----------------------------------------------------------


@pytest.mark.parametrize("change", [["-s", "Be brief."], ["-o", "detail", "low"], ["--max-side", "512"],
                                    ["-p", "Name the object."]], ids=lambda c: c[0] + c[1])
def test_changing_the_recipe_captions_again(change, fake_openai, photos, db):
    run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", db)
    result = run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", db, *change)
    assert result.exit_code == 0, result.output
    assert len(fake_openai.image_requests) == 2
    recipes = rows(db, "SELECT recipe, system, options_json, max_side FROM captions ORDER BY id")
    assert recipes[0]["recipe"] != recipes[1]["recipe"]


def test_repeating_a_recipe_never_pays_twice_even_with_spaces_around_the_prompt(fake_openai, photos, db):
    run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", db, "-p", "Name the object.",
        "-s", "Be brief.", "-o", "detail", "low", "--concurrency", "3")
    result = run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", db, "-p", "  Name the object.\n",
                 "-s", "Be brief. ", "-o", "detail", "low", "--concurrency", "9", "--timeout", "30")
    assert result.exit_code == 0 and len(fake_openai.image_requests) == 1
    row = rows(db, "SELECT prompt, system, options_json, max_side FROM captions")[0]
    assert (row["prompt"], row["system"], json.loads(row["options_json"]), row["max_side"]) == (
        "Name the object.", "Be brief.", {"detail": "low"}, 1024)


def test_a_later_success_hides_the_old_failure_in_photo_captions(fake_openai, photos, db):
    fake_openai.faults = [Fault(400, {"error": {"message": "bad image"}})]
    run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", db)
    run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", db, "--retry-failed")
    assert [r["status"] for r in rows(db, "SELECT status FROM captions ORDER BY id")] == ["failed", "ok"]
    assert [r["status"] for r in rows(db, "SELECT status FROM photo_captions")] == ["ok"]


# -- show the result ---------------------------------------------------------------------


def test_a_small_run_prints_its_captions_and_the_database(fake_openai, photos, db):
    result = run("caption", photos / "rocket.jpg", photos / "coffee.png", "-m", "gpt-4o-mini", "--db", db)
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert str(photos / "coffee.png") in lines and any(line.startswith("    photo ") for line in lines)
    assert f"database: {db}" in result.output


def test_a_large_run_says_where_to_look(fake_openai, photos, tmp_path, db):
    from test_faults import distinct_photos

    distinct_photos(tmp_path / "lib", photos, 22)
    result = run("caption", tmp_path / "lib", "-m", "gpt-4o-mini", "--db", db)
    assert "captioner show PATH" in result.output and "    photo " not in result.output


def test_show_prints_each_files_captions_per_model(fake_openai, fake_gemini, photos, db):
    run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", db)
    run("caption", photos / "rocket.jpg", "-m", "gemini-2.5-flash-lite", "--db", db)
    result = run("show", photos / "rocket.jpg", "--db", db)
    assert result.exit_code == 0
    assert "  gpt-4o-mini: photo " in result.output and "  gemini-2.5-flash-lite: photo " in result.output
    folder = json.loads(run("show", photos, "--db", db, "--json").output)
    assert {r["model"] for r in folder} == {"gpt-4o-mini", "gemini-2.5-flash-lite"}


def test_undated_photos_say_date_unknown(fake_openai, photos, db):
    run("caption", photos / "coffee.png", "-m", "gpt-4o-mini", "--db", db)
    assert "(date unknown)" in run("show", photos / "coffee.png", "--db", db).output
    assert "date unknown)" in run("search", "photo", "--db", db).output


# -- failures stay visible ------------------------------------------------------------------


def test_failures_are_listed_and_a_rerun_reminds_and_exits_1(fake_openai, photos, db):
    fake_openai.faults = [Fault(400, {"error": {"message": "unsupported image"}})]
    run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", db)
    listed = json.loads(run("failures", "--db", db, "--json").output)
    assert [(r["model"], r["status"], r["error"]) for r in listed] == [
        ("gpt-4o-mini", "failed", "HTTP 400: unsupported image")]
    again = run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", db)
    assert again.exit_code == 1 and "1 photo failed before" in again.output and "--retry-failed" in again.output
    assert len(fake_openai.image_requests) == 1
    fixed = run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", db, "--retry-failed")
    assert fixed.exit_code == 0 and run("failures", "--db", db).output.strip() == "no failures"


def test_an_empty_folder_says_no_images_found(tmp_path, db, fake_openai):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a photo")
    result = run("caption", tmp_path / "empty", "-m", "gpt-4o-mini", "--db", db)
    assert result.exit_code == 1
    assert "no images found in" in result.output and "1 not images" in result.output


def test_globs_ignore_case(fake_openai, photos, db):
    shutil.copy(photos / "pug.heic", photos / "IMG_1.HEIC")
    result = run("caption", photos, "-m", "gpt-4o-mini", "--db", db, "--include", "*.heic", "--json")
    assert json.loads(result.output)["ok"] == 1  # pug.heic and IMG_1.HEIC are the same photo: paid once
    assert len(rows(db, "SELECT path FROM images")) == 2


# -- one database a user can find ------------------------------------------------------------


def test_the_default_database_lives_in_the_user_folder(fake_openai, photos, tmp_path, monkeypatch):
    user_db = tmp_path / "user" / "captions.db"
    assert run("db", "path").output.strip() == str(user_db)
    result = run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini")
    assert result.exit_code == 0 and user_db.exists() and f"database: {user_db}" in result.output
    (tmp_path / "captions.db").write_bytes(b"")  # a captions.db in the working folder wins
    assert run("db", "path").output.strip() == str(tmp_path / "captions.db")
    monkeypatch.setenv("CAPTIONER_DB", str(tmp_path / "env.db"))  # and $CAPTIONER_DB wins over both
    assert run("db", "path").output.strip() == str(tmp_path / "env.db")


def test_a_missing_database_names_its_path_and_the_db_option(tmp_path):
    result = run("cost", "--db", "nowhere.db")
    assert result.exit_code == 2
    assert str(tmp_path / "nowhere.db") in result.output and "--db" in result.output


# -- never a traceback, never a wrong exit code --------------------------------------------------


def test_a_malformed_price_file_is_one_line_before_any_photo_is_read(fake_openai, photos, db, tmp_path):
    (tmp_path / "user").mkdir(exist_ok=True)
    (tmp_path / "user" / "prices.json").write_text("{not json")
    result = run("caption", photos, "-m", "gpt-4o-mini", "--db", db)
    assert result.exit_code == 2 and "prices.json" in result.output and "Traceback" not in result.output
    assert fake_openai.received == []


def test_a_malformed_keys_file_is_one_line(fake_openai, photos, db, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    (tmp_path / "user").mkdir(exist_ok=True)
    (tmp_path / "user" / "keys.json").write_text("[1, 2")
    result = run("caption", photos, "-m", "gpt-4o-mini", "--db", db)
    assert result.exit_code == 2 and "keys.json" in result.output and fake_openai.received == []


# -- a budget that spends what it may ------------------------------------------------------------


def test_a_budget_is_spent_not_merely_reserved(fake_openai, photos, tmp_path, db):
    from test_faults import distinct_photos

    distinct_photos(tmp_path / "lib", photos, 40)
    result = run("caption", tmp_path / "lib", "-m", "gpt-4o-mini", "--db", db, "--max-cost", "0.05",
                 "--concurrency", "8", "--json")
    summary = json.loads(result.output)
    assert result.exit_code == 1 and summary["status"] == "budget" and summary["not_sent"] > 0
    spent = rows(db, "SELECT sum(cost_usd) AS s FROM captions")[0]["s"]
    assert 0.045 <= spent <= 0.05  # at least 90% of the budget used


# -- a user's words are safe ----------------------------------------------------------------------


USER_SIDECAR = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
                '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/">'
                '<dc:description><rdf:Alt><rdf:li xml:lang="x-default">Grandma at the launch, 1969'
                '</rdf:li></rdf:Alt></dc:description></rdf:Description></rdf:RDF></x:xmpmeta>')


def test_export_never_replaces_a_description_a_person_wrote(fake_openai, photos, db):
    run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", db)
    sidecar = photos / "rocket.jpg.xmp"
    sidecar.write_text(USER_SIDECAR)
    result = run("export", "--db", db, "--format", "xmp")
    assert result.exit_code == 1 and "kept: it holds a description captioner did not write" in result.output
    assert sidecar.read_text() == USER_SIDECAR


def test_export_replaces_its_own_words_on_a_later_run(fake_openai, fake_gemini, photos, db):
    run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", db)
    assert run("export", "--db", db, "--format", "xmp").exit_code == 0
    first = (photos / "rocket.jpg.xmp").read_text()
    fake_gemini.answer_override = lambda reply: {**reply, "candidates": [
        {"content": {"parts": [{"text": "A newer caption."}]}, "finishReason": "STOP"}]}
    run("caption", photos / "rocket.jpg", "-m", "gemini-2.5-flash-lite", "--db", db)
    assert run("export", "--db", db, "--format", "xmp").exit_code == 0
    second = (photos / "rocket.jpg.xmp").read_text()
    assert "A newer caption." in second and first != second


def test_export_limits_to_paths_and_dry_run_writes_nothing(fake_openai, photos, db):
    run("caption", photos, "-m", "gpt-4o-mini", "--db", db)
    dry = run("export", photos / "rocket.jpg", "--db", db, "--format", "xmp", "--dry-run")
    assert dry.exit_code == 0 and f"would write {photos / 'rocket.jpg.xmp'}" in dry.output
    assert "1 would be written" in dry.output and not list(photos.glob("*.xmp"))
    run("export", photos / "rocket.jpg", "--db", db, "--format", "xmp")
    assert [p.name for p in photos.glob("*.xmp")] == ["rocket.jpg.xmp"]


def test_export_out_keeps_sub_folders_so_names_do_not_collide(fake_openai, photos, tmp_path, db):
    for folder in ("2023", "2024"):
        (photos / folder).mkdir()
    shutil.copy(photos / "rocket.jpg", photos / "2023" / "IMG_0001.jpg")
    shutil.copy(photos / "coffee.png", photos / "2024" / "IMG_0001.jpg")
    run("caption", photos / "2023", photos / "2024", "-m", "gpt-4o-mini", "--db", db)
    result = run("export", "--db", db, "--format", "txt", "--out", tmp_path / "dataset")
    assert result.exit_code == 0, result.output
    assert sorted(str(p.relative_to(tmp_path / "dataset")) for p in (tmp_path / "dataset").rglob("*.txt")) == [
        "2023/IMG_0001.txt", "2024/IMG_0001.txt"]


# -- readable numbers and pages ----------------------------------------------------------------------


def test_cost_is_readable_fits_100_columns_and_has_a_total(fake_openai, fake_gemini, fake_ollama, photos, db):
    for model in ("gpt-4.1-nano", "gemini-2.5-flash-lite", "ollama/llava:7b", "gpt-unknown-9"):
        run("caption", photos / "rocket.jpg", photos / "coffee.png", "-m", model, "--db", db)
    for by in ("model", "run", "day"):
        output = run("cost", "--db", db, "--by", by).output
        assert all(len(line) <= 100 for line in output.splitlines()), output
        assert "e-0" not in output and "e+" not in output
    by_model = run("cost", "--db", db).output
    assert by_model.splitlines()[-1].startswith("total")
    assert "unpriced" in by_model  # gpt-unknown-9 has no known price: never shown as $0
    assert "$0.0000" in by_model or "$0.000" in by_model


def test_the_summary_money_has_no_scientific_notation(fake_gemini, photos, db):
    result = run("caption", photos / "rocket.jpg", "-m", "gemini-2.5-flash-lite", "--db", db)
    cost_line = next(line for line in result.output.splitlines() if line.startswith("cost: "))
    assert "e-" not in cost_line and "$0.0000" in cost_line


def test_a_gallery_file_keeps_its_thumbnails_beside_it(fake_openai, photos, db, tmp_path):
    run("caption", photos, "-m", "gpt-4o-mini", "--db", db)
    page = tmp_path / "gallery.html"
    assert run("export", "--db", db, "--format", "html", "--out", page).exit_code == 0
    text = page.read_text()
    assert "data:image" not in text and len(text) < 20_000
    assert '<meta name="viewport"' in text and 'loading="lazy"' in text and "@media" in text
    thumbs = list((tmp_path / "gallery_files").iterdir())
    assert len(thumbs) == len(list(photos.iterdir()))
    assert 'alt="photo ' in text  # the caption is the alt text


# -- help that helps --------------------------------------------------------------------------------


def test_an_unreachable_ollama_names_the_url_and_the_fix(photos, db, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:9")
    result = run("caption", photos, "-m", "ollama/llava:7b", "--db", db, "--retries", "0", "--concurrency", "1")
    assert result.exit_code == 2
    assert "http://127.0.0.1:9/api/chat" in result.output
    assert "is Ollama running at http://127.0.0.1:9?" in result.output


def test_a_rejected_key_says_where_it_came_from_never_what_it_is(fake_openai, photos, db, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-wrong-key")
    fake_openai.fault_fn = lambda n: Fault(401, {"error": {"message": "Incorrect API key provided"}})
    result = run("caption", photos, "-m", "gpt-4o-mini", "--db", db)
    assert result.exit_code == 2 and "(the key came from $OPENAI_API_KEY)" in result.output
    assert "wrong-key" not in result.output


def test_verbose_and_log_record_each_request_without_keys(fake_openai, photos, db, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key-SECRET-in-env")
    log = tmp_path / "run.log"
    result = run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", db, "-v", "--log", log)
    assert result.exit_code == 0
    assert "rocket.jpg: ok, " in result.output and " input / " in result.output and " ms" in result.output
    text = log.read_text()
    assert "rocket.jpg: ok" in text and "SECRET" not in text and "base64" not in text


# -- first run ----------------------------------------------------------------------------------------


def test_without_a_chosen_default_the_model_whose_key_is_set_is_used(fake_openai, photos, db):
    result = run("caption", photos / "rocket.jpg", "--db", db)  # no GEMINI_API_KEY; OPENAI_API_KEY is set
    assert result.exit_code == 0, result.output
    assert "using gpt-4.1-nano: OPENAI_API_KEY is set" in result.output
    assert rows(db, "SELECT model FROM captions")[0]["model"] == "gpt-4.1-nano"


def test_with_a_chosen_default_and_no_key_the_model_that_would_work_is_named(fake_openai, photos, db):
    run("models", "default", "claude-haiku-4-5")
    result = run("caption", photos / "rocket.jpg", "--db", db)
    assert result.exit_code == 2 and "or use -m gpt-4.1-nano, whose key is set" in result.output
    assert fake_openai.received == []
