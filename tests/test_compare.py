"""`captioner compare` and the HTML gallery export."""

from __future__ import annotations

import json
import re

from conftest import rows, run
from fakes import image_label


def test_compare_three_models_prints_a_table_and_reuses_captions(fake_openai, fake_gemini, photos, db):
    run("caption", photos, "-m", "gpt-4o-mini", "--db", db)
    sent_before = len(fake_openai.image_requests)
    result = run("compare", photos, "-m", "gpt-4o-mini", "-m", "gemini-2.5-flash-lite", "-m", "gpt-4.1-nano",
                 "--sample", "4", "--db", db, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["sample"] == 4 and report["photos"] == len(list(photos.iterdir()))
    by_model = {r["model"]: r for r in report["models"]}
    assert set(by_model) == {"gpt-4o-mini", "gemini-2.5-flash-lite", "gpt-4.1-nano"}
    assert all(r["ok"] == 4 for r in report["models"])
    # gpt-4o-mini captions were already stored: only gpt-4.1-nano went to the OpenAI server.
    assert len(fake_openai.image_requests) == sent_before + 4
    mini = by_model["gpt-4o-mini"]
    assert mini["usd_per_1000"] == mini["usd_per_image"] * 1000
    assert mini["projected_usd_all_photos"] == mini["usd_per_image"] * report["photos"]
    assert mini["median_latency_ms"] is not None


def sent_photos(server, start: int = 0, stop: int | None = None) -> list[str]:
    """Which photos (by what the fake sees) the server was asked about, requests start..stop."""
    return sorted(image_label(image) for r in server.image_requests[start:stop] for image in r.images)


def test_compare_sample_is_deterministic(fake_openai, fake_gemini, photos, db, tmp_path):
    first = run("compare", photos, "-m", "gpt-4o-mini", "-m", "gemini-2.5-flash-lite", "--sample", "3", "--db", db)
    first_sample = sent_photos(fake_gemini)
    assert sent_photos(fake_openai) == first_sample  # both models see the same sample
    second = run("compare", photos, "-m", "gpt-4o-mini", "-m", "gemini-2.5-flash-lite", "--sample", "3",
                 "--db", tmp_path / "other.db")
    assert first.exit_code == second.exit_code == 0
    assert len(first_sample) == 3 and len(set(first_sample)) == 3
    # A fresh database, so every caption is sent again: the same three photos, to both models.
    assert sent_photos(fake_gemini, start=3) == sent_photos(fake_openai, start=3) == first_sample


def test_compare_needs_two_models(photos, db):
    assert run("compare", photos, "-m", "gpt-4o-mini", "--db", db).exit_code == 2


def test_compare_html_has_thumbnails_side_by_side_and_escapes_captions(fake_openai, fake_gemini, photos, db,
                                                                         tmp_path):
    def hostile(reply):
        reply["choices"][0]["message"]["content"] = '<script>alert("x")</script> a cat & "dog"'
        return reply

    fake_openai.answer_override = hostile
    page_file = tmp_path / "compare.html"
    result = run("compare", photos, "-m", "gpt-4o-mini", "-m", "gemini-2.5-flash-lite", "--sample", "3",
                 "--db", db, "--html", page_file)
    assert result.exit_code == 0
    page = page_file.read_text()
    assert page.count('<img src="data:image/jpeg;base64,') == 3
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; a cat &amp; &quot;dog&quot;" in page
    assert page.count('class="model">gpt-4o-mini<') == 3 and page.count('class="model">gemini-2.5-flash-lite<') == 3
    assert re.search(r"<th>usd_per_1000</th>", page)


def test_export_html_gallery(fake_openai, photos, db, tmp_path):
    run("caption", photos, "-m", "gpt-4o-mini", "--db", db)
    out = tmp_path / "gallery.html"
    result = run("export", "--db", db, "--format", "html", "--out", out)
    assert result.exit_code == 0
    page = out.read_text()
    assert page.count("<img src=") == len(list(photos.iterdir()))
    for row in rows(db, "SELECT caption FROM captions"):
        assert row["caption"] in page
