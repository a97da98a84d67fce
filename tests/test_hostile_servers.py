"""Hostile and broken servers: odd usage, wrongly typed bodies, huge and endless answers.

Every case ends with the request recorded (failed with a one-line reason, or
kept unpriced with a note), the run going on, and no traceback.
"""

from __future__ import annotations

import gzip
import json
import time

import pytest

from captioner.budget import Budget
from captioner.plugins import get_model

from conftest import rows, run
from fakes import Fault

# model, fake server fixture, where the input token count lives in that provider's answer
PROVIDERS = {
    "openai": ("gpt-4o-mini", "fake_openai", lambda r, v: r["usage"].__setitem__("prompt_tokens", v)),
    "anthropic": ("claude-haiku-4-5", "fake_anthropic", lambda r, v: r["usage"].__setitem__("input_tokens", v)),
    "gemini": ("gemini-2.5-flash-lite", "fake_gemini",
               lambda r, v: r["usageMetadata"].__setitem__("promptTokenCount", v)),
    "ollama": ("ollama/llava:7b", "fake_ollama", lambda r, v: r.__setitem__("prompt_eval_count", v)),
}
ODD_USAGE = [-5, 1e308, 2**63, "12", float("nan"), [1, 2], True, 1e15, 3.5]


def no_traceback(result) -> None:
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("value", ODD_USAGE, ids=repr)
def test_odd_usage_keeps_the_caption_unpriced_with_a_note(provider, value, request, photos, db):
    model, fixture, set_input = PROVIDERS[provider]
    server = request.getfixturevalue(fixture)

    def odd(reply):
        set_input(reply, value)
        return reply

    server.answer_override = odd
    result = run("caption", photos / "rocket.jpg", "-m", model, "--db", db)
    no_traceback(result)
    caption = rows(db, "SELECT caption, status, cost_usd, input_tokens, error FROM captions")[0]
    assert caption["caption"] and caption["status"] == "ok"  # the paid answer is kept
    assert caption["cost_usd"] is None and caption["input_tokens"] is None  # and never priced from nonsense
    assert "implausible usage" in caption["error"]
    assert run("cost", "--db", db).exit_code == 0


@pytest.mark.parametrize("shape", [
    {"choices": ["x"]},
    {"choices": [{"message": "x", "finish_reason": "stop"}]},
    {"choices": [{"message": {"content": ["x"]}}]},
    {"usage": "x", "choices": [{"message": {"content": "A cat."}}]},
], ids=["choices-strings", "message-string", "content-list", "usage-string"])
def test_wrongly_typed_openai_bodies_are_recorded_and_the_run_goes_on(shape, fake_openai, photos, db):
    fake_openai.faults = [Fault(200, {**shape, **({} if "usage" in shape else
                                                  {"usage": {"prompt_tokens": 900, "completion_tokens": 9}})})]
    result = run("caption", photos, "-m", "gpt-4o-mini", "--db", db, "--concurrency", "1", "--json")
    no_traceback(result)
    summary = json.loads(result.output)
    assert summary["ok"] + summary["failed"] == len(list(photos.iterdir())) and summary["status"] == "completed"
    first = rows(db, "SELECT status, input_tokens FROM captions ORDER BY id")[0]
    if "usage" not in shape:
        assert first["input_tokens"] == 900  # the bill of an unusable answer is still recorded


def test_wrongly_typed_gemini_parts_are_recorded(fake_gemini, photos, db):
    fake_gemini.answer_override = lambda reply: {**reply, "candidates": [{"content": {"parts": ["x"]}}]}
    result = run("caption", photos / "rocket.jpg", "-m", "gemini-2.5-flash-lite", "--db", db)
    no_traceback(result)
    row = rows(db, "SELECT status, error, input_tokens FROM captions")[0]
    assert row["status"] == "failed" and "empty caption" in row["error"] and row["input_tokens"] > 0


def test_deeply_nested_json_is_a_failed_request(fake_openai, photos, db):
    fake_openai.faults = [Fault(200, b"[" * 20_000 + b"]" * 20_000, {}, kind="raw")]
    result = run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", db, "--retries", "0")
    no_traceback(result)
    row = rows(db, "SELECT status, error FROM captions")[0]
    assert row["status"] == "failed" and "malformed response body" in row["error"]


def test_a_body_over_the_size_limit_is_refused_without_reading_it_all(fake_openai, photos, db):
    fake_openai.faults = [Fault(200, b'{"x": "' + b"a" * (9 * 2**20) + b'"}', {}, kind="raw")]
    result = run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", db, "--retries", "0")
    no_traceback(result)
    assert "byte limit" in rows(db, "SELECT error FROM captions")[0]["error"]


def test_a_gzip_bomb_is_refused_after_the_limit(fake_openai, photos, db):
    bomb = gzip.compress(b'{"choices": [{"message": {"content": "' + b"a" * (64 * 2**20) + b'"}}]}')
    assert len(bomb) < 200_000
    fake_openai.faults = [Fault(200, bomb, {"Content-Encoding": "gzip", "Content-Type": "application/json"},
                                kind="raw")]
    result = run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", db, "--retries", "0")
    no_traceback(result)
    assert "byte limit" in rows(db, "SELECT error FROM captions")[0]["error"]


def test_one_bad_answer_among_many_fails_that_photo_only_and_is_not_paid_again(fake_openai, photos, db):
    fake_openai.fault_fn = lambda n: Fault(200, {"choices": ["x"]}) if n == 4 else None
    result = run("caption", photos, "-m", "gpt-4o-mini", "--db", db, "--concurrency", "2", "--json")
    no_traceback(result)
    summary = json.loads(result.output)
    total = len(list(photos.iterdir()))
    assert result.exit_code == 1 and summary["status"] == "completed"
    assert (summary["ok"], summary["failed"]) == (total - 1, 1)
    assert rows(db, "SELECT status FROM runs")[0]["status"] == "completed"
    sent = len(fake_openai.image_requests)
    again = run("caption", photos, "-m", "gpt-4o-mini", "--db", db)
    assert len(fake_openai.image_requests) == sent  # not paid twice
    assert again.exit_code == 1 and "1 photo failed before" in again.output  # and the failure stays visible


@pytest.mark.parametrize("kind", ["trickle", "keepalive"])
def test_an_endless_body_is_cut_at_the_total_deadline(kind, fake_openai, photos, db):
    fake_openai.hang_seconds = 4
    fake_openai.faults = [Fault(kind=kind)]
    started = time.monotonic()
    result = run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", db, "--timeout", "1",
                 "--retries", "0")
    assert time.monotonic() - started < 3.5
    no_traceback(result)
    assert rows(db, "SELECT error FROM captions")[0]["error"] == "timed out after 1s"


def test_a_provider_error_that_echoes_the_key_never_stores_it(fake_openai, photos, db, monkeypatch):
    key = "sk-test-echoed-not-a-real-key-0123"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    echo = {"error": {"message": f"bad request; headers were Authorization: Bearer {key}"}}
    fake_openai.faults = [None, Fault(400, echo)]
    result = run("caption", photos, "-m", "gpt-4o-mini", "--db", db, "--concurrency", "1")
    no_traceback(result)
    assert key not in result.output
    errors = [r["error"] for r in rows(db, "SELECT error FROM captions WHERE error IS NOT NULL")]
    assert errors and all(key not in e for e in errors) and "[redacted]" in errors[0]


def test_a_billed_output_far_over_the_cap_is_not_priced_and_the_budget_holds(fake_openai, photos, db):
    fake_openai.output_tokens = 100_000
    result = run("caption", photos, "-m", "gpt-4o-mini", "--db", db, "--max-cost", "0.02", "--json",
                 "--concurrency", "2")
    no_traceback(result)
    summary = json.loads(result.output)
    assert summary["status"] == "budget" and summary["not_sent"] > 0
    stored = rows(db, "SELECT error, estimated_input_tokens FROM captions")
    assert stored and all("for a request capped at 400" in r["error"] for r in stored)
    # Each unpriceable answer counted its whole reservation as spent, so the
    # reservations of everything sent fit in the budget.
    budget = Budget(0.02, get_model("gpt-4o-mini"), {}, user_prices={})
    assert sum(budget.worst_case(r["estimated_input_tokens"]) for r in stored) <= 0.02
    assert len(fake_openai.image_requests) == len(stored)


def test_answers_that_arrive_after_the_timeout_count_against_the_budget(fake_openai, photos, db):
    fake_openai.hang_seconds = 1.0
    fake_openai.fault_fn = lambda n: Fault(kind="hang") if n else None  # the first answers, the rest time out
    result = run("caption", photos, "-m", "gpt-4o-mini", "--db", db, "--max-cost", "0.012", "--timeout", "0.3",
                 "--retries", "0", "--concurrency", "1", "--json")
    no_traceback(result)
    summary = json.loads(result.output)
    assert summary["status"] == "budget" and summary["failed"] >= 1
    # A timed-out request may be billed: its whole reservation stays spent, so what
    # went out fits in the budget even if the server billed every one of them.
    budget = Budget(0.012, get_model("gpt-4o-mini"), {}, user_prices={})
    sent = rows(db, "SELECT estimated_input_tokens FROM captions")
    assert len(sent) == len(fake_openai.image_requests) < len(list(photos.iterdir()))
    assert sum(budget.worst_case(r["estimated_input_tokens"]) for r in sent) <= 0.012


def test_a_budget_stop_while_retries_wait_is_a_budget_stop(fake_openai, photos, db):
    fake_openai.fault_fn = lambda n: Fault(500, {"error": {"message": "busy"}}) if n < 3 else None
    result = run("caption", photos, "-m", "gpt-4o-mini", "--db", db, "--max-cost", "0.015", "--concurrency", "4",
                 "--retries", "3", "--backoff", "0.2", "--json")
    no_traceback(result)
    summary = json.loads(result.output)
    assert result.exit_code == 1 and summary["status"] == "budget", summary
    assert "first 3 requests" not in (summary["message"] or "")
