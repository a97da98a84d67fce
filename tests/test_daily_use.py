"""Daily use: results shown, failures visible, one payment per recipe, a database a user can find,
a user's words safe, budgets spent, numbers readable, help that helps."""

from __future__ import annotations

import json

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
