"""The in-process model: a tiny random SmolVLM (Idefics3) built in the test and
loaded through the code path users take (`-m local/PATH`, and the Hugging
Face cache layout with HF_HUB_OFFLINE=1). Nothing is downloaded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import rows, run

pytest.importorskip("transformers", reason="the local extra is not installed (pip install 'captioner[local]')")

from tiny_vlm import as_hub_cache, build

REPO_ID = "HuggingFaceTB/SmolVLM-256M-Instruct"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("tiny-smolvlm") / "model")


@pytest.fixture(autouse=True)
def offline_hub(tmp_path, monkeypatch):
    """Every test here is offline, with an empty Hugging Face cache of its own."""
    from captioner.default_plugins import local_models

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    local_models._RUNTIMES.clear()
    yield
    local_models._RUNTIMES.clear()


@pytest.fixture
def four_photos(photos):
    for extra in sorted(photos.iterdir())[4:]:
        extra.unlink()
    return photos


def caption(folder, db, model, *extra):
    result = run("caption", folder, "-m", model, "--db", db, "-o", "max_tokens", "12", *extra)
    assert result.exit_code == 0, result.output
    return rows(db, "SELECT i.path, c.* FROM captions c JOIN images i ON i.id = c.image_id ORDER BY i.path")


def expected_input_tokens(model_folder: Path, prompt: str) -> int:
    """What the model's own processor counts for one photo at low detail (one tile, whatever its size)."""
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_folder)
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(chat, add_generation_prompt=True)
    tile = processor.image_processor.max_image_size["longest_edge"]
    inputs = processor(text=[text], images=[[Image.new("RGB", (300, 200))]], return_tensors="pt",
                       do_image_splitting=False, size={"longest_edge": tile})
    return int(inputs["attention_mask"].sum())


def test_a_model_folder_captions_photos_with_the_processors_token_counts(tiny_model, four_photos, db):
    from captioner.defaults import DEFAULT_PROMPT

    stored = caption(four_photos, db, f"local/{tiny_model}")
    assert len(stored) == 4 and {r["status"] for r in stored} == {"ok"}
    expected = expected_input_tokens(tiny_model, DEFAULT_PROMPT)
    assert {r["input_tokens"] for r in stored} == {expected}
    assert all(1 <= r["output_tokens"] <= 12 for r in stored)
    assert {r["cost_usd"] for r in stored} == {0.0}  # local, unpriced by the user: free
    assert all(r["duration_ms"] is not None and r["caption"] for r in stored)
    usage = json.loads(stored[0]["usage_json"])
    assert usage["device"] == "cpu" and usage["batch"] >= 1


def test_batched_and_one_at_a_time_generation_agree(tiny_model, four_photos, tmp_path):
    batched = caption(four_photos, tmp_path / "a.db", f"local/{tiny_model}", "-o", "batch_size", "4")
    single = caption(four_photos, tmp_path / "b.db", f"local/{tiny_model}", "-o", "batch_size", "1")
    assert max(json.loads(r["usage_json"])["batch"] for r in batched) > 1
    assert {json.loads(r["usage_json"])["batch"] for r in single} == {1}
    assert [(r["caption"], r["input_tokens"], r["output_tokens"]) for r in batched] == \
        [(r["caption"], r["input_tokens"], r["output_tokens"]) for r in single]


def test_high_detail_splits_images_into_more_tokens(tiny_model, four_photos, tmp_path):
    low = caption(four_photos, tmp_path / "low.db", f"local/{tiny_model}")
    high = caption(four_photos, tmp_path / "high.db", f"local/{tiny_model}", "-o", "detail", "high")
    assert all(h["input_tokens"] > lo["input_tokens"] for h, lo in zip(high, low))


def test_the_model_loads_once_per_run(tiny_model, four_photos, db, monkeypatch):
    import transformers

    loads = []
    original = transformers.AutoModelForImageTextToText.from_pretrained

    def counted(*args, **kwargs):
        loads.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", counted)
    caption(four_photos, db, f"local/{tiny_model}", "-o", "batch_size", "1")
    assert len(loads) == 1


def test_the_hugging_face_cache_layout_works_offline(tiny_model, four_photos, db, tmp_path):
    as_hub_cache(tiny_model, tmp_path / "hf-cache", REPO_ID)
    stored = caption(four_photos, db, "local/smolvlm-256m")
    assert len(stored) == 4 and {r["model"] for r in stored} == {"local/smolvlm-256m"}


def test_offline_without_weights_is_one_clear_line_before_any_photo_is_read(four_photos, db):
    result = run("caption", four_photos, "-m", "local/smolvlm-256m", "--db", db)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "HF_HUB_OFFLINE=1" in lines[0] and "captioner models pull" in lines[0]
    assert not db.exists() or rows(db, "SELECT count(*) AS n FROM images")[0]["n"] == 0


def test_a_folder_that_is_not_a_model_is_refused(four_photos, db, tmp_path):
    (tmp_path / "empty").mkdir()
    result = run("caption", four_photos, "-m", f"local/{tmp_path / 'empty'}", "--db", db)
    assert result.exit_code == 2 and "is not a model folder (no config.json in it)" in result.output


def test_models_pull_says_what_it_can(tiny_model, tmp_path):
    offline = run("models", "pull", "local/smolvlm-256m")
    assert offline.exit_code == 2 and "HF_HUB_OFFLINE=1" in offline.output
    assert "runs on a server" in run("models", "pull", "gpt-4.1-nano").output
    as_hub_cache(tiny_model, tmp_path / "hf-cache", REPO_ID)
    assert run("models", "pull", "local/smolvlm-256m").output.strip() == "local/smolvlm-256m is already downloaded"


def test_without_a_key_the_downloaded_local_model_is_the_default(tiny_model, four_photos, db, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:9")  # nothing listens there
    as_hub_cache(tiny_model, tmp_path / "hf-cache", REPO_ID)
    result = run("caption", four_photos, "--db", db, "-o", "max_tokens", "4")
    assert result.exit_code == 0, result.output
    assert "using local/smolvlm-256m: no API key is set" in result.output
    assert {r["model"] for r in rows(db, "SELECT model FROM captions")} == {"local/smolvlm-256m"}


def test_the_local_model_cannot_take_a_schema(tiny_model, four_photos, db):
    result = run("caption", four_photos, "-m", f"local/{tiny_model}", "--db", db, "--schema", "title")
    assert result.exit_code == 2 and "cannot answer in a schema" in result.output


def test_a_copied_model_folder_is_a_different_model(tiny_model, four_photos, tmp_path):
    copy = shutil.copytree(tiny_model, tmp_path / "copy")
    first = caption(four_photos, tmp_path / "x.db", f"local/{tiny_model}")
    second = caption(four_photos, tmp_path / "x.db", f"local/{copy}")
    assert len(first) == 4 and len(second) == 8  # another model id: captioned again, not reused


def test_a_batch_the_device_has_no_memory_for_is_split_not_failed(tiny_model, four_photos, db, monkeypatch):
    from captioner.default_plugins.local_models import LocalRuntime

    sizes = []
    real = LocalRuntime._generate

    def short_of_memory(self, requests):
        sizes.append(len(requests))
        if len(requests) > 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, requests)

    monkeypatch.setattr(LocalRuntime, "_generate", short_of_memory)
    stored = caption(four_photos, db, f"local/{tiny_model}", "-o", "batch_size", "4")
    assert len(stored) == 4 and {r["status"] for r in stored} == {"ok"}
    assert max(sizes) > 1 and sizes.count(1) == 4  # a batch of several was tried, then one photo at a time
