"""Databases from earlier versions, typed -o options, and the run switches --force and --rpm."""

from __future__ import annotations

import itertools
import json
import shutil

import pytest

from captioner.store import MIGRATIONS

from conftest import REPO, rows, run
from fakes import image_label

OLD_DATABASE = REPO / "tests" / "data" / "captions-v0.1.0.db"


def test_a_database_made_by_version_0_1_0_is_migrated_and_keeps_every_caption(fake_openai, photos, tmp_path):
    db = tmp_path / "old.db"
    shutil.copy(OLD_DATABASE, db)
    before = rows(db, "SELECT id, image_id, caption, cost_usd FROM captions ORDER BY id")
    result = run("caption", photos, "-m", "gpt-4.1-nano", "--db", db, "--json")
    assert result.exit_code == 0, result.output
    applied = rows(db, "SELECT id FROM _migrations ORDER BY id")
    assert [r["id"] for r in applied] == list(range(1, len(MIGRATIONS) + 1))
    assert rows(db, "SELECT id, image_id, caption, cost_usd FROM captions WHERE id <= ? ORDER BY id",
                (len(before),)) == before
    # The five JPEGs were captioned by 0.1.0 (same content, other paths): only the other four are sent.
    summary = json.loads(result.output)
    assert summary["ok"] == 4 and summary["skipped_done"] == 5
    assert len(fake_openai.image_requests) == 4
    found = run("search", "old caption", "--db", db, "--json")
    assert found.exit_code == 0 and len(json.loads(found.output)) >= 5


def test_a_bad_option_value_is_one_line_before_any_photo_is_read(fake_openai, photos, db):
    result = run("caption", photos, "-m", "gpt-4.1-nano", "-o", "max_tokens", "abc", "--db", db)
    assert result.exit_code == 2
    assert result.output.strip() == "Error: -o max_tokens needs a whole number, not 'abc'"
    assert fake_openai.received == [] and not db.exists()


def test_an_unknown_option_names_the_valid_ones(fake_openai, photos, db):
    result = run("estimate", photos, "-m", "gpt-4.1-nano", "-o", "n", "16")
    assert result.exit_code == 2
    assert "gpt-4.1-nano has no option 'n'; valid options: detail, " in result.output


def test_an_option_out_of_range_is_refused(photos):
    result = run("estimate", photos, "-m", "gemini-2.5-flash-lite", "-o", "temperature", "7")
    assert result.exit_code == 2 and "-o temperature must be at most 2" in result.output


def test_options_reach_the_provider_typed(fake_openai, photos, db):
    result = run("caption", photos / "rocket.jpg", "-m", "gpt-4.1-nano", "-o", "temperature", "0.2",
                 "-o", "detail", "low", "-o", "seed", "7", "--db", db)
    assert result.exit_code == 0, result.output
    body = fake_openai.image_requests[0].body
    assert body["temperature"] == 0.2 and body["seed"] == 7
    assert body["messages"][-1]["content"][1]["image_url"]["detail"] == "low"


def test_models_options_lists_each_models_options_as_json():
    listing = json.loads(run("models", "--options", "--json").output)
    nano = next(m for m in listing if m["model"] == "gpt-4.1-nano")
    names = {o["name"]: o for o in nano["options"]}
    assert names["max_tokens"]["type"] == "int" and names["detail"]["choices"] == ["low", "high", "auto"]
    assert "options" not in json.loads(run("models", "--json").output)[0]


def test_force_pays_once_for_the_same_content_at_two_paths(fake_openai, photos, db):
    shutil.copy(photos / "rocket.jpg", photos / "rocket_copy.jpg")
    run("caption", photos / "rocket.jpg", photos / "rocket_copy.jpg", "-m", "gpt-4o-mini", "--db", db)
    assert len(fake_openai.image_requests) == 1
    result = run("caption", photos / "rocket.jpg", photos / "rocket_copy.jpg", "-m", "gpt-4o-mini", "--db", db,
                 "--force", "--json")
    assert result.exit_code == 0
    assert len(fake_openai.image_requests) == 2  # one new request, not one per path
    newest = rows(db, "SELECT path, caption_id FROM photo_captions WHERE caption_id = (SELECT max(id) FROM captions)")
    assert {r["path"].rsplit("/", 1)[1] for r in newest} == {"rocket.jpg", "rocket_copy.jpg"}


def test_rpm_spaces_the_requests(fake_openai, photos, db):
    result = run("caption", photos / "rocket.jpg", photos / "coffee.png", photos / "chelsea.png",
                 "-m", "gpt-4o-mini", "--db", db, "--rpm", "150", "--concurrency", "3")
    assert result.exit_code == 0, result.output
    arrivals = sorted(r.at for r in fake_openai.image_requests)
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert len(arrivals) == 3 and min(gaps) >= 0.35  # 150 per minute: one every 0.4 s
    assert len({image_label(r.images[0]) for r in fake_openai.image_requests}) == 3


@pytest.mark.parametrize("command", [["batches"], ["failures"], ["cost", "--by", "mode"], ["cost", "--by", "kind"],
                                     ["show", "/old/library/rocket.jpg"], ["export", "--format", "csv"],
                                     ["search", "caption"], ["sql", "SELECT kind FROM images"]])
def test_read_only_commands_work_on_a_database_from_0_1_0(command, tmp_path):
    db = tmp_path / "old.db"
    shutil.copy(OLD_DATABASE, db)
    result = run(*command, "--db", db)
    assert result.exit_code == 0, result.output
    assert rows(db, "SELECT count(*) AS n FROM captions")[0]["n"] == 5  # upgraded, nothing lost
