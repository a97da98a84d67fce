"""`captioner estimate`: published image-token rules, the napkin check, and estimates vs real bills."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from captioner.default_plugins.anthropic_models import anthropic_image_tokens
from captioner.default_plugins.gemini_models import gemini_image_tokens
from captioner.default_plugins.openai_models import OpenAIChatModel

from conftest import run


@pytest.mark.parametrize("size, tokens", [((200, 200), 54), ((1000, 1000), 1334), ((1092, 1092), 1590)])
def test_anthropic_rule_matches_the_docs_examples(size, tokens):
    assert anthropic_image_tokens(*size) == tokens


def test_anthropic_downscales_large_images_first():
    # 4032x3024 is shrunk to ~1.2 MP before counting, so it costs about the 1,600-token maximum.
    assert 1580 <= anthropic_image_tokens(4032, 3024) <= 1600


def test_gemini_rules():
    assert gemini_image_tokens("gemini-1.5-flash-8b", 4000, 3000, {}) == 258
    assert gemini_image_tokens("gemini-2.5-flash", 1024, 768, {}) == 258
    assert gemini_image_tokens("gemini-2.0-flash", 384, 384, {}) == 258
    assert gemini_image_tokens("gemini-2.0-flash", 960, 540, {}) == 6 * 258  # 360-px crop unit: 3 x 2 tiles
    assert gemini_image_tokens("gemini-3-flash-preview", 1024, 768, {}) == 1120
    assert gemini_image_tokens("gemini-3-flash-preview", 1024, 768, {"media_resolution": "low"}) == 280


@pytest.mark.parametrize("model, detail, tokens", [
    ("gpt-4o", "high", 765), ("gpt-4o", "low", 85), ("gpt-4o-mini", "high", 2833 + 4 * 5667),
    ("gpt-5", "high", 70 + 4 * 140), ("o3", "high", 75 + 4 * 150),
    ("gpt-4.1-mini", "high", 1659), ("gpt-4.1-nano", "high", 2520), ("o4-mini", "high", 1762),
])
def test_openai_rules_per_model_for_a_1024_square(model, detail, tokens):
    assert OpenAIChatModel(model).image_tokens(1024, 1024, {"detail": detail}) == tokens


def test_the_napkin_68_photos_for_a_sixth_of_a_cent(tmp_path):
    """Gemini Flash-8B: 260 input + 100 output tokens per photo; 68,000 photos for $1.68."""
    folder = tmp_path / "napkin"
    folder.mkdir()
    for n in range(68):
        Image.new("RGB", (300, 200), (n, 100, 150)).save(folder / f"{n}.jpg")
    result = run("estimate", folder, "-m", "gemini-1.5-flash-8b", "-p", "describe", "--output-tokens", "100",
                 "--json")
    (row,) = json.loads(result.output)
    assert row["images"] == 68
    assert row["input_tokens_per_image"] == pytest.approx(260, abs=2)
    assert row["cost_usd"] == pytest.approx(0.00168, rel=0.02)
    assert row["cost_per_1000_images"] == pytest.approx(0.0247, rel=0.03)


def test_estimate_reads_headers_only(monkeypatch, photos):
    def no_decoding(*args, **kwargs):
        raise AssertionError("estimate must not decode images")

    monkeypatch.setattr("captioner.media.prepare_image", no_decoding)
    monkeypatch.setattr("PIL.Image.Image.load", no_decoding)
    result = run("estimate", photos, "-m", "gpt-4o-mini", "--json")
    assert json.loads(result.output)[0]["images"] == len(list(photos.iterdir()))


def test_estimate_needs_no_key_and_no_network(photos):
    result = run("estimate", photos, "-m", "claude-haiku-4-5", "-m", "gpt-4.1-nano", "-m", "ollama/llava")
    assert result.exit_code == 0
    assert "claude-haiku-4-5" in result.output and "ollama/llava" in result.output


def test_batch_price_is_half_where_the_provider_has_one(photos):
    rows = {r["model"]: r for r in json.loads(run("estimate", photos, "-m", "gpt-4o-mini", "-m", "ollama/llava",
                                                  "--json").output)}
    assert rows["gpt-4o-mini"]["batch_cost_usd"] == pytest.approx(rows["gpt-4o-mini"]["cost_usd"] / 2)
    assert rows["ollama/llava"]["batch_cost_usd"] is None


FAMILY_MODELS = [("gpt-4o-mini", "fake_openai"), ("gpt-4.1-nano", "fake_openai"),
                 ("claude-haiku-4-5", "fake_anthropic"), ("gemini-2.5-flash-lite", "fake_gemini"),
                 ("ollama/llava:7b", "fake_ollama")]


@pytest.mark.parametrize("model, fake", FAMILY_MODELS)
def test_estimate_is_within_5_percent_of_the_bill(request, corpus, tmp_path, db, model, fake):
    request.getfixturevalue(fake)
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("photos/pug.heic", "photos/craft-beer.jpg", "photos/page.png", "photos/orientation/Portrait_6.jpg",
                 "photos/denali.webp", "bad/chi.gif", "photos/exif-at-eof.heic"):
        shutil.copy(corpus / name, folder)
    (estimated,) = json.loads(run("estimate", folder, "-m", model, "--json").output)
    assert run("caption", folder, "-m", model, "--db", db).exit_code == 0
    (billed,) = json.loads(run("cost", "--db", db, "--json").output)
    assert estimated["input_tokens"] == pytest.approx(billed["input_tokens"], rel=0.05)
    assert abs(billed["estimate_error_pct"]) <= 5
