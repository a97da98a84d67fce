"""Batch files for self-hosted engines: export shards, a fake `vllm run-batch`, import
(any order, any number of times)."""

from __future__ import annotations

import json
from pathlib import Path

from captioner.media import prepare_image, read_file

from conftest import rows, run
from fakes import FakeOpenAI, image_label


def fake_run_batch(shard: Path, out: Path, error_every: int = 4, drop: set[int] = frozenset(),
                   truncate_last: bool = True) -> None:
    """What `vllm run-batch -i shard -o out` writes: one output line per request, errors in the
    same file (`"response": {"status_code": 400, "body": null}, "error": "..."`)."""
    engine = FakeOpenAI()
    lines = []
    for n, text in enumerate(shard.read_text().splitlines()):
        request = json.loads(text)
        if n in drop:
            continue
        if error_every and n % error_every == 1:
            lines.append({"id": f"vllm-{n}", "custom_id": request["custom_id"],
                          "response": {"status_code": 400, "request_id": f"vllm-batch-{n}", "body": None},
                          "error": "image could not be decoded"})
            continue
        _, body, _ = engine.answer("/v1/chat/completions", request["body"], engine.extract_images(request["body"]),
                                   {})
        lines.append({"id": f"vllm-{n}", "custom_id": request["custom_id"],
                      "response": {"status_code": 200, "request_id": f"vllm-batch-{n}", "body": body},
                      "error": None})
    text = "".join(json.dumps(line) + "\n" for line in lines)
    out.write_text(text[:-40] if truncate_last else text)  # a run cut short mid-line


def test_export_run_batch_import_twice(photos, tmp_path, db):
    shards = tmp_path / "shards"
    result = run("batches", "--db", db, "export", photos, "-m", "openai/llava", "--out", shards,
                 "--shard-lines", "4")
    assert result.exit_code == 0, result.output
    files = sorted(shards.glob("*.jsonl"))
    assert len(files) == 3 and sum(len(f.read_text().splitlines()) for f in files) == len(list(photos.iterdir()))
    first = json.loads(files[0].read_text().splitlines()[0])
    assert first["method"] == "POST" and first["url"] == "/v1/chat/completions"
    assert first["body"]["model"] == "llava" and "base64," in json.dumps(first["body"])
    outputs = []
    for n, shard in enumerate(files):
        out = tmp_path / f"out{n}.jsonl"
        fake_run_batch(shard, out)
        outputs.append(out)
    imported = json.loads(run("batches", "--db", db, "import", *reversed(outputs), "--json").output)
    assert imported["unreadable"] == 3  # each file's last line was cut short
    stored = rows(db, "SELECT c.status, c.caption, i.path FROM captions c JOIN images i ON i.id = c.image_id")
    assert len(stored) == imported["ok"] + imported["failed"] and imported["failed"] >= 1
    errors = rows(db, "SELECT error FROM captions WHERE status = 'failed'")
    assert errors[0]["error"] == "HTTP 400: image could not be decoded"  # vLLM's error string
    for row in stored:  # every caption is attached to the photo it describes
        if row["status"] == "ok":
            data, _ = read_file(row["path"])
            assert row["caption"] == image_label(prepare_image(data, 1024).jpeg)
    again = json.loads(run("batches", "--db", db, "import", *outputs, "--json").output)
    assert again["ok"] == again["failed"] == 0  # idempotent
    assert len(rows(db, "SELECT id FROM captions")) == len(stored)
    # The lines that never came back (the cut ones) are exported again, and only those.
    second = run("batches", "--db", db, "export", photos, "-m", "openai/llava", "--out", tmp_path / "again")
    assert second.exit_code == 0
    redo = [json.loads(t) for f in (tmp_path / "again").glob("*.jsonl") for t in f.read_text().splitlines()]
    assert len(redo) == 3


def test_file_urls_keep_the_shards_small(photos, tmp_path, db):
    run("batches", "--db", db, "export", photos, "-m", "openai/llava", "--out", tmp_path / "s", "--images",
        "file-url")
    text = next((tmp_path / "s").glob("*.jsonl")).read_text()
    assert "base64," not in text and f"file://{photos}" in text
    assert len(text) < 20_000


def test_photos_in_an_exported_shard_are_not_sent_live(fake_openai, photos, tmp_path, db):
    run("batches", "--db", db, "export", photos, "-m", "openai/llava", "--out", tmp_path / "s")
    result = run("caption", photos, "-m", "openai/llava", "--db", db, "--json")
    assert fake_openai.image_requests == []
    assert "in an open batch job" in json.dumps(json.loads(result.output)["skipped"])


def test_batch_files_are_for_openai_format_models(photos, tmp_path, db):
    result = run("batches", "--db", db, "export", photos, "-m", "gemini-2.5-flash-lite", "--out", tmp_path / "s")
    assert result.exit_code == 2 and "does not speak the OpenAI format" in result.output
    assert not (tmp_path / "s").exists() or not list((tmp_path / "s").iterdir())
