"""Judged comparisons: pairwise verdicts in both orders, Wilson and Bradley-Terry figures, the Pareto front."""

from __future__ import annotations

import json
import random
import re

import pytest
from test_faults import distinct_photos

from captioner.judge import FIRST, INVALID, SECOND, TIE, judge_prompt, parse_verdict
from captioner.quality import bootstrap_bradley_terry, bradley_terry, pareto_front, wilson

from conftest import rows, run
from fakes import image_label

# -- the figures, checked against worked values ------------------------------------------------


@pytest.mark.parametrize("wins, n, low, high", [(7, 50, 0.0695, 0.2619), (30, 50, 0.4618, 0.7239),
                                                (60, 100, 0.5020, 0.6906)])
def test_wilson_intervals_match_worked_values(wins, n, low, high):
    interval = wilson(wins, n)
    assert interval is not None
    assert interval[0] == pytest.approx(low, abs=1e-4) and interval[1] == pytest.approx(high, abs=1e-4)
    assert wilson(0, 0) is None


def test_bradley_terry_recovers_known_strengths():
    rng = random.Random(3)
    truth = {"good": 1.0, "middling": 0.0, "poor": -1.0}
    matches = []
    for _ in range(3000):
        a, b = rng.sample(list(truth), 2)
        p = 1 / (1 + pow(2.718281828, truth[b] - truth[a]))
        matches.append((a, b, 1.0 if rng.random() < p else 0.0))
    scores = bradley_terry(matches, list(truth))
    for model, strength in truth.items():
        assert scores[model] == pytest.approx(strength, abs=0.15)


def test_two_equal_models_score_the_same():
    scores = bradley_terry([("a", "b", 1.0), ("a", "b", 0.0)] * 10, ["a", "b"])
    assert scores["a"] == pytest.approx(scores["b"]) == pytest.approx(0.0, abs=1e-9)


def test_the_bootstrap_is_over_photos_and_repeatable():
    photos = [[("a", "b", 1.0)] for _ in range(20)] + [[("a", "b", 0.0)] for _ in range(10)]
    first = bootstrap_bradley_terry(photos, ["a", "b"], rounds=200, seed=1)
    assert first == bootstrap_bradley_terry(photos, ["a", "b"], rounds=200, seed=1)
    assert first["a"][0] < bradley_terry([m for p in photos for m in p], ["a", "b"])["a"] < first["a"][1]


def test_the_pareto_front_keeps_only_undominated_models():
    points = {"cheap-good": (0.05, 1.0), "cheap-bad": (0.05, -1.0), "dear-best": (2.0, 1.5), "dear-bad": (2.0, 0.0)}
    assert pareto_front(points) == {"cheap-good", "dear-best"}


@pytest.mark.parametrize("text, verdict", [
    ('{"winner": "1", "reason": "accurate"}', FIRST), ('Sure. {"winner": "2", "reason": "x"}', SECOND),
    ('{"winner": "tie", "reason": "same"}', TIE), ("I prefer the first one.", INVALID),
    ('{"winner": "both"}', INVALID), (None, INVALID)])
def test_off_format_answers_are_invalid_never_wins(text, verdict):
    assert parse_verdict(text)[0] == verdict


def test_the_judge_prompt_puts_accuracy_first_and_shows_both_captions():
    prompt = judge_prompt("A cat.", "A dog.")
    assert prompt.index("Accuracy") < prompt.index("Coverage") < prompt.index("searching")
    assert "Caption 1: A cat." in prompt and "Caption 2: A dog." in prompt


# -- end to end with fake servers ---------------------------------------------------------------


def fair_judge(prompt: str, images: list[bytes]) -> str:
    """Prefers the caption that names the photo shown; a tie when both (or neither) do."""
    truth = image_label(images[0]).split(" ")[1]
    one = truth in re.search(r"Caption 1: (.*)", prompt).group(1)
    two = truth in re.search(r"Caption 2: (.*)", prompt).group(1)
    winner = "tie" if one == two else "1" if one else "2"
    return json.dumps({"winner": winner, "reason": "names what is in the photo" if winner != "tie" else "same"})


@pytest.fixture
def wrong_model(fake_openai):
    """gpt-4.1-nano describes the wrong picture; gpt-4o-mini (same server) the right one."""
    def answer(reply):
        if reply["model"] == "gpt-4.1-nano":
            reply["choices"][0]["message"]["content"] = "photo 0123456789abcdef 10x10"
        return reply

    fake_openai.answer_override = answer
    return fake_openai


def test_a_model_that_describes_the_wrong_picture_ranks_last(wrong_model, fake_gemini, fake_anthropic, photos,
                                                            tmp_path, db):
    distinct_photos(tmp_path / "lib", photos, 30)
    fake_anthropic.respond = fair_judge
    html = tmp_path / "cmp.html"
    result = run("compare", tmp_path / "lib", "-m", "gpt-4o-mini", "-m", "gemini-2.5-flash-lite",
                 "-m", "gpt-4.1-nano", "--judge", "claude-haiku-4-5", "--sample", "30", "--db", db,
                 "--html", html, "--json")
    assert result.exit_code == 0, result.output
    judged = json.loads(result.output)["judged"]
    ranking = [m["model"] for m in judged["models"]]
    assert ranking[-1] == "gpt-4.1-nano"
    worst = judged["models"][-1]
    better = judged["models"][:-1]
    assert all(worst["bt_95ci"][1] < m["bt_95ci"][0] for m in better)  # intervals do not overlap
    pair = next(p for p in judged["pairs"] if {p["model"], p["against"]} == {"gpt-4o-mini", "gpt-4.1-nano"})
    assert pair["wins"] + pair["losses"] == 30 and pair["ties"] == 0
    assert judged["judgements_made"] == 3 * 30 * 2
    stored = rows(db, 'SELECT count(*) AS n, count(DISTINCT "order") AS orders FROM judgements')[0]
    assert stored == {"n": 180, "orders": 2}
    page = html.read_text()
    assert "names what is in the photo" in page and "judge 1: gpt-4o-mini vs gemini-2.5-flash-lite" in page
    again = json.loads(run("compare", tmp_path / "lib", "-m", "gpt-4o-mini", "-m", "gemini-2.5-flash-lite",
                           "-m", "gpt-4.1-nano", "--judge", "claude-haiku-4-5", "--sample", "30", "--db", db,
                           "--json").output)["judged"]
    assert again["judgements_made"] == 0 and again["judgements_reused"] == 180  # judgements are reused


def test_a_position_biased_judge_produces_only_ties(fake_openai, fake_gemini, fake_anthropic, photos, db):
    fake_anthropic.respond = lambda prompt, images: '{"winner": "1", "reason": "the first one"}'
    result = run("compare", photos, "-m", "gpt-4o-mini", "-m", "gemini-2.5-flash-lite", "--judge",
                 "claude-haiku-4-5", "--sample", "6", "--db", db, "--json")
    pair = json.loads(result.output)["judged"]["pairs"][0]
    assert (pair["wins"], pair["losses"], pair["ties"]) == (0, 0, 6)


def test_an_off_format_judge_is_recorded_invalid_never_a_win(fake_openai, fake_gemini, fake_anthropic, photos, db):
    fake_anthropic.respond = lambda prompt, images: "The first caption is better."
    result = run("compare", photos, "-m", "gpt-4o-mini", "-m", "gemini-2.5-flash-lite", "--judge",
                 "claude-haiku-4-5", "--sample", "4", "--db", db, "--json")
    pair = json.loads(result.output)["judged"]["pairs"][0]
    assert (pair["wins"], pair["losses"], pair["invalid"]) == (0, 0, 4)
    assert {r["verdict"] for r in rows(db, "SELECT verdict FROM judgements")} == {"invalid"}


def test_judging_costs_show_in_cost(fake_openai, fake_gemini, fake_anthropic, photos, db):
    fake_anthropic.respond = fair_judge
    run("compare", photos, "-m", "gpt-4o-mini", "-m", "gemini-2.5-flash-lite", "--judge", "claude-haiku-4-5",
        "--sample", "3", "--db", db)
    by_model = {r["model"]: r for r in json.loads(run("cost", "--db", db, "--json").output)}
    assert by_model["claude-haiku-4-5 (judge)"]["cost_usd"] > 0


# -- reference-based scores -----------------------------------------------------------------------


def test_bleu4_matches_worked_values():
    from captioner.quality import bleu4

    assert bleu4(["a red rocket on the launch pad at dusk"], [["a red rocket on the launch pad at dusk"]]) == 1.0
    assert bleu4(["completely different words here"], [["a red rocket on the pad"]]) == 0.0
    partial = bleu4(["a red rocket on a pad"], [["a red rocket on the launch pad"]])
    assert 0.2 < partial < 0.6


def test_eval_scores_models_against_references(fake_openai, photos, db, tmp_path):
    from captioner.media import prepare_image, read_file

    # References that repeat what the fake "sees" for two photos: the caption matching them scores higher.
    refs = tmp_path / "refs.csv"
    lines = ["path,reference"]
    for name in ("rocket.jpg", "coffee.png"):
        data, _ = read_file(str(photos / name))
        lines.append(f"{photos / name},{image_label(prepare_image(data, 1024).jpeg)}")
    refs.write_text("\n".join(lines) + "\n")
    fake_openai.answer_override = lambda reply: (reply["choices"][0]["message"].__setitem__(
        "content", "an unrelated sentence") or reply) if reply["model"] == "gpt-4.1-nano" else reply
    result = run("eval", "--references", refs, "-m", "gpt-4o-mini", "-m", "gpt-4.1-nano", "--db", db, "--json")
    assert result.exit_code == 0, result.output
    scores = {r["model"]: r for r in json.loads(result.output)}
    assert scores["gpt-4o-mini"]["bleu4"] == 1.0 and scores["gpt-4.1-nano"]["bleu4"] == 0.0
    assert scores["gpt-4o-mini"]["photos"] == 2


def test_the_judging_estimate_is_close_to_what_judging_cost(fake_openai, fake_gemini, fake_anthropic, photos, db):
    fake_anthropic.respond = fair_judge
    result = run("compare", photos, "-m", "gpt-4o-mini", "-m", "gemini-2.5-flash-lite", "--judge",
                 "claude-haiku-4-5", "--sample", "5", "--db", db, "--json")
    judged = json.loads(result.output)["judged"]
    # Input is estimated closely; the output is assumed at 60 tokens (the fake judge writes 24).
    assert judged["judge_cost_usd"] <= judged["judge_estimate_usd"] <= 1.5 * judged["judge_cost_usd"]


def test_judging_never_spends_past_max_cost_with_judgements_in_flight(fake_openai, fake_gemini, fake_anthropic,
                                                                     photos, db, tmp_path):
    fake_anthropic.respond = fair_judge
    compare = ["compare", photos, "-m", "gpt-4o-mini", "-m", "gemini-2.5-flash-lite", "--judge",
               "claude-haiku-4-5", "--sample", "6", "--concurrency", "8", "--json"]
    free = json.loads(run(*compare, "--db", tmp_path / "free.db").output)
    captions = rows(tmp_path / "free.db", "SELECT sum(cost_usd) AS usd FROM captions")[0]["usd"]
    judging = free["judged"]["judge_cost_usd"]  # 12 judgements: 6 photos, both orders
    cap = captions + judging / 2  # room for about half the judgements
    capped = run(*compare, "--db", db, "--max-cost", f"{cap:.10f}")
    judged = json.loads(capped.output)["judged"]
    assert 0 < judged["judgements_made"] < 12 and judged["stopped"].startswith("stopped judging at --max-cost")
    spent = rows(db, "SELECT sum(cost_usd) AS usd FROM captions")[0]["usd"] + \
        rows(db, "SELECT sum(cost_usd) AS usd FROM judgements")[0]["usd"]
    assert spent <= cap
