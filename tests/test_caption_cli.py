"""`captioner caption` end to end: real photos, real HTTP to a fake OpenAI server on loopback."""

from __future__ import annotations

import io
import json
import os
import shutil

import pytest
from PIL import Image, ImageChops, ImageStat

from captioner.media import prepare_image, read_file

from conftest import rows, run
from fakes import Fault, image_label


def test_one_ok_caption_per_photo(fake_openai, photos, db):
    result = run("caption", photos, "-m", "gpt-4o-mini", "--db", db)
    assert result.exit_code == 0, result.output
    captions = rows(db, "SELECT i.path, c.status, c.caption FROM captions c JOIN images i ON i.id = c.image_id")
    assert sorted(os.path.basename(r["path"]) for r in captions) == sorted(
        p.name for p in photos.iterdir()
    )
    assert {r["status"] for r in captions} == {"ok"}
    assert len(fake_openai.image_requests) == len(captions)


def test_each_caption_is_attached_to_its_own_image(fake_openai, photos, db):
    run("caption", photos, "-m", "gpt-4o-mini", "--db", db)
    for row in rows(db, "SELECT i.path, c.caption FROM captions c JOIN images i ON i.id = c.image_id"):
        data, _ = read_file(row["path"])
        # The fake names what it saw; preparing the file again must give the same picture.
        assert row["caption"] == image_label(prepare_image(data).jpeg), row["path"]


def test_tokens_and_cost_are_the_servers_usage_times_published_prices(fake_openai, photos, db):
    run("caption", photos, "-m", "gpt-4o-mini", "--db", db)
    captions = rows(db, "SELECT * FROM captions")
    billed = [json.loads(c["usage_json"]) for c in captions]
    for caption, usage in zip(captions, billed):
        assert caption["input_tokens"] == usage["prompt_tokens"]
        assert caption["output_tokens"] == usage["completion_tokens"]
        # gpt-4o-mini: $0.15 per million input tokens, $0.60 per million output tokens
        expected = usage["prompt_tokens"] * 0.15 / 1e6 + usage["completion_tokens"] * 0.60 / 1e6
        assert caption["cost_usd"] == pytest.approx(expected, rel=1e-9)
        assert caption["price_in_per_m"] == pytest.approx(0.15)
        assert caption["price_out_per_m"] == pytest.approx(0.60)
    run_row = rows(db, "SELECT * FROM runs")[0]
    assert run_row["input_tokens"] == sum(c["input_tokens"] for c in captions)
    assert run_row["cost_usd"] == pytest.approx(sum(c["cost_usd"] for c in captions))
    assert run_row["status"] == "completed"


def test_summary_reports_counts_tokens_and_dollars(fake_openai, photos, db):
    result = run("caption", photos, "-m", "gpt-4o-mini", "--db", db, "--json")
    summary = json.loads(result.output)
    captions = rows(db, "SELECT * FROM captions")
    assert summary["ok"] == len(captions)
    assert summary["failed"] == 0
    assert summary["input_tokens"] == sum(c["input_tokens"] for c in captions)
    assert summary["cost_usd"] == pytest.approx(sum(c["cost_usd"] for c in captions))
    assert summary["cost_per_1000_images"] == pytest.approx(summary["cost_usd"] / len(captions) * 1000, rel=1e-4)


def test_a_second_run_sends_nothing_and_costs_nothing(fake_openai, photos, db):
    run("caption", photos, "-m", "gpt-4o-mini", "--db", db)
    sent = len(fake_openai.received)
    result = run("caption", photos, "-m", "gpt-4o-mini", "--db", db, "--json")
    assert result.exit_code == 0
    assert len(fake_openai.received) == sent
    summary = json.loads(result.output)
    assert summary["cost_usd"] == 0
    assert summary["skipped_done"] == len(list(photos.iterdir()))


def test_same_photo_at_two_paths_is_paid_for_once(fake_openai, photos, db):
    shutil.copy(photos / "rocket.jpg", photos / "rocket-copy.jpg")
    run("caption", photos, "-m", "gpt-4o-mini", "--db", db)
    labels = [image_label(r.images[0]) for r in fake_openai.image_requests]
    assert len(labels) == len(set(labels))
    paths = {r["path"] for r in rows(db, "SELECT path FROM images")}
    assert str(photos / "rocket-copy.jpg") in paths


def test_a_changed_file_is_captioned_again(fake_openai, photos, db):
    run("caption", photos, "-m", "gpt-4o-mini", "--db", db)
    sent = len(fake_openai.received)
    Image.open(photos / "rocket.jpg").rotate(180).save(photos / "rocket.jpg")
    run("caption", photos, "-m", "gpt-4o-mini", "--db", db)
    assert len(fake_openai.received) == sent + 1


def test_orientation_is_applied_before_sending(fake_openai, photos, db):
    run("caption", photos / "rocket_rotated.jpg", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", db)
    sent = [Image.open(io.BytesIO(r.images[0])).convert("L") for r in fake_openai.image_requests]
    assert sent[0].size == sent[1].size == (640, 427)  # landscape, as the rocket photo is shown
    difference = ImageStat.Stat(ImageChops.difference(sent[0], sent[1])).mean[0]
    assert difference < 4  # same picture, up to JPEG noise


def test_images_are_resized_to_max_side(fake_openai, photos, db):
    run("caption", photos / "domestic_dog.jpg", "-m", "gpt-4o-mini", "--db", db, "--max-side", "256")
    sent = Image.open(io.BytesIO(fake_openai.image_requests[0].images[0]))
    assert max(sent.size) == 256 and sent.format == "JPEG"


def test_prompt_system_and_options_reach_the_model(fake_openai, photos, db):
    run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", db,
        "-p", "Name the object.", "-s", "Be brief.", "-o", "temperature", "0.2", "-o", "max_tokens", "50")
    body = fake_openai.image_requests[0].body
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["messages"][1]["content"][0]["text"] == "Name the object."
    assert body["temperature"] == 0.2
    assert body["max_completion_tokens"] == 50
    assert rows(db, "SELECT prompt FROM captions")[0]["prompt"] == "Name the object."


def test_a_new_prompt_captions_again(fake_openai, photos, db):
    run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", db)
    run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", db, "-p", "Other prompt")
    assert len(fake_openai.image_requests) == 2


def test_limit_and_force(fake_openai, photos, db):
    run("caption", photos, "-m", "gpt-4o-mini", "--db", db, "--limit", "2")
    assert len(fake_openai.image_requests) == 2
    run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", db)
    before = len(fake_openai.image_requests)
    run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", db, "--force")
    assert len(fake_openai.image_requests) == before + 1


def test_include_and_exclude_globs(fake_openai, photos, db):
    run("caption", photos, "-m", "gpt-4o-mini", "--db", db, "--include", "*.jpg", "--exclude", "rocket*")
    sent = {os.path.basename(r["path"]) for r in rows(db, "SELECT path FROM images")}
    assert sent == {"grace_hopper.jpg", "hubble_deep_field.jpg", "domestic_dog.jpg"}


def test_exif_facts_are_stored(fake_openai, photos, db):
    run("caption", photos, "-m", "gpt-4o-mini", "--db", db)
    images = {os.path.basename(r["path"]): r for r in rows(db, "SELECT * FROM images")}
    pug = images["pug.heic"]
    assert (pug["camera_make"], pug["camera_model"]) == ("Apple", "iPhone 13 Pro")
    assert pug["taken_at"] == "2023-02-21T14:33:08"
    assert pug["gps_lat"] == pytest.approx(44.8505, abs=1e-3)
    assert pug["gps_lon"] == pytest.approx(34.9766, abs=1e-3)
    assert images["domestic_dog.jpg"]["camera_model"] == "PC800 PROFESSIONAL"  # trailing NUL gone
    assert images["rocket_rotated.jpg"]["width"] == 640  # as displayed, not as stored
    assert images["rocket.jpg"]["gps_lat"] is None


# -- failures and exit codes -------------------------------------------------


def test_no_key_exits_2_before_reading_any_image(monkeypatch, photos, db):
    opened = []
    monkeypatch.setattr("captioner.media.read_file", lambda *a: opened.append(a))
    result = run("caption", photos, "-m", "gpt-4o-mini", "--db", db)
    assert result.exit_code == 2
    message = result.output.strip()
    assert len(message.splitlines()) == 1
    assert "OPENAI_API_KEY" in message and "ollama/" in message and "captioner estimate" in message
    assert opened == [] and not db.exists()


def test_default_model_without_key_names_its_env_var(photos, db):
    result = run("caption", photos, "--db", db)
    assert result.exit_code == 2
    assert "GEMINI_API_KEY" in result.output or "OPENAI_API_KEY" in result.output


def test_unknown_model_is_a_usage_error(photos, db):
    result = run("caption", photos, "-m", "no-such-model", "--db", db)
    assert result.exit_code == 2
    assert "unknown model" in result.output and "Traceback" not in result.output


def test_missing_folder_is_a_usage_error(db):
    result = run("caption", "/no/such/folder", "--db", db, "-m", "gpt-4o-mini")
    assert result.exit_code == 2
    assert "no such file or folder" in result.output


def test_a_file_that_is_not_a_database_is_refused_and_kept(fake_openai, photos, tmp_path):
    bogus = tmp_path / "notes.db"
    bogus.write_text("my precious notes " * 100)
    result = run("caption", photos, "-m", "gpt-4o-mini", "--db", bogus)
    assert result.exit_code == 2 and "cannot open database" in result.output
    assert bogus.read_text() == "my precious notes " * 100


def test_some_failed_images_exit_1_and_the_run_goes_on(fake_openai, photos, db):
    (photos / "broken.jpg").write_bytes((photos / "rocket.jpg").read_bytes()[:3000])
    result = run("caption", photos, "-m", "gpt-4o-mini", "--db", db)
    assert result.exit_code == 1
    assert "broken.jpg" in result.output
    statuses = {os.path.basename(r["path"]): (r["status"], r["error"])
                for r in rows(db, "SELECT i.path, c.status, c.error FROM captions c "
                                  "JOIN images i ON i.id = c.image_id")}
    assert statuses["broken.jpg"][0] == "failed" and "truncated" in statuses["broken.jpg"][1]
    assert sum(1 for s, _ in statuses.values() if s == "ok") == 9


def test_retry_failed_sends_failed_images_again(fake_openai, photos, db):
    fake_openai.faults = [Fault(400, {"error": {"message": "bad image"}})]
    result = run("caption", photos / "rocket.jpg", photos / "chelsea.png", "-m", "gpt-4o-mini",
                 "--db", db, "--concurrency", "1")
    assert result.exit_code == 1
    run("caption", photos / "rocket.jpg", photos / "chelsea.png", "-m", "gpt-4o-mini", "--db", db)
    assert len(fake_openai.image_requests) == 2  # failed one not retried by default
    result = run("caption", photos / "rocket.jpg", photos / "chelsea.png", "-m", "gpt-4o-mini",
                 "--db", db, "--retry-failed")
    assert result.exit_code == 0
    assert len(fake_openai.image_requests) == 3


def test_refusal_is_recorded_as_refused(fake_openai, photos, db):
    def refuse(reply):
        reply["choices"][0]["message"].update(content=None, refusal="I can't help with that.")
        return reply

    fake_openai.answer_override = refuse
    result = run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", db)
    assert result.exit_code == 1
    caption = rows(db, "SELECT * FROM captions")[0]
    assert caption["status"] == "refused" and "can't help" in caption["error"]
    assert caption["input_tokens"] > 0 and caption["cost_usd"] > 0  # refusals are billed


def test_bad_key_stops_the_run_with_exit_2(fake_openai, photos, db):
    fake_openai.fault_fn = lambda n: Fault(401, {"error": {"message": "Incorrect API key provided"}})
    result = run("caption", photos, "-m", "gpt-4o-mini", "--db", db, "--concurrency", "1")
    assert result.exit_code == 2
    assert "Incorrect API key" in result.output
    assert len(fake_openai.received) == 1
    assert rows(db, "SELECT count(*) AS n FROM captions")[0]["n"] == 0  # nothing blamed on the images
    assert rows(db, "SELECT status FROM runs")[0]["status"] == "failed"


def test_key_never_reaches_database_or_output(fake_openai, photos, db):
    secret = "fake-key-SECRET-VALUE-12345"
    result = run("caption", photos, "-m", "gpt-4o-mini", "--db", db, "--key", secret, "--json")
    assert fake_openai.received[0].headers["Authorization"] == f"Bearer {secret}"
    assert secret not in result.output
    assert secret.encode() not in db.read_bytes()


def test_every_bad_corpus_file_is_captioned_or_explained(fake_openai, corpus, tmp_path, db):
    bad = corpus / "bad"
    result = run("caption", bad, "-m", "gpt-4o-mini", "--db", db, "--json")
    assert result.exit_code == 1
    summary = json.loads(result.output)
    stored = {os.path.basename(r["path"]): r for r in rows(
        db, "SELECT i.path, c.status, c.error FROM images i LEFT JOIN captions c ON c.image_id = i.id")}
    skipped = {os.path.basename(s["path"]): s["reason"] for s in summary["skipped"]}
    for entry in bad.iterdir():
        if entry.name.startswith("."):
            continue  # hidden (AppleDouble) files are not photos
        name = entry.name
        assert name in stored or name in skipped, name
    assert skipped["text_file.jpg"] == "not an image"
    assert skipped["zero_bytes.jpg"] == "empty file"
    for name in ("truncated_photo.jpg", "decompression_bomb.gif", "huge_dimensions_header.png",
                 "broken.png", "corrupted.heic", "200MP.heic"):
        assert stored[name]["status"] == "failed" and stored[name]["error"], name
    for name in ("cmyk_photo.jpg", "gray16_camera.png", "alpha_photo.png", "chi.gif", "frozenpond.mpo",
                 "png_disguised_as.jpg", "exif_orientation_99.jpg", "exif_ifd_loop.jpg"):
        assert stored[name]["status"] == "ok", name
    # jpeg_without_extension and ünïcødé_名前.jpg hold the same bytes: one request for both
    assert {stored["jpeg_without_extension"]["status"], stored["ünïcødé_名前.jpg"]["status"]} <= {"ok", None}
