"""One folder captioned by each provider family, each through its own wire format on loopback."""

from __future__ import annotations

import json

import pytest

from captioner.plugins import get_model
from captioner.pricing import price_request

from conftest import rows, run
from fakes import Fault


@pytest.fixture
def all_fakes(fake_openai, fake_anthropic, fake_gemini, fake_ollama):
    return {"gpt-4.1-nano": fake_openai, "claude-haiku-4-5": fake_anthropic,
            "gemini-2.5-flash-lite": fake_gemini, "ollama/llava:7b": fake_ollama}


FAMILIES = [
    ("gpt-4.1-nano", "fake_openai", 0.10, 0.40),
    ("claude-haiku-4-5", "fake_anthropic", 1.00, 5.00),
    ("gemini-2.5-flash-lite", "fake_gemini", 0.10, 0.40),
    ("ollama/llava:7b", "fake_ollama", 0.0, 0.0),
]


@pytest.mark.parametrize("model, fake, price_in, price_out", FAMILIES)
def test_each_family_captions_every_photo_with_its_billed_tokens_and_cost(
        request, photos, db, model, fake, price_in, price_out):
    server = request.getfixturevalue(fake)
    result = run("caption", photos, "-m", model, "--db", db)
    assert result.exit_code == 0, result.output
    captions = rows(db, "SELECT * FROM captions")
    assert len(captions) == len(list(photos.iterdir())) == len(server.image_requests)
    for caption in captions:
        assert caption["status"] == "ok" and caption["caption"].startswith("photo ")
        usage = json.loads(caption["usage_json"])
        billed_in = usage.get("prompt_tokens", usage.get("promptTokenCount", usage.get("input_tokens",
                                                                                        usage.get("prompt_eval_count"))))
        assert caption["input_tokens"] == billed_in
        expected = caption["input_tokens"] * price_in / 1e6 + caption["output_tokens"] * price_out / 1e6
        assert caption["cost_usd"] == pytest.approx(expected, rel=1e-9)


def test_cost_by_model_shows_the_four_families_side_by_side(all_fakes, photos, db):
    for model in all_fakes:
        assert run("caption", photos, "-m", model, "--db", db).exit_code == 0
    report = json.loads(run("cost", "--db", db, "--by", "model", "--json").output)
    by_model = {r["model"]: r for r in report}
    assert set(by_model) == set(all_fakes)
    assert all(r["ok"] == len(list(photos.iterdir())) for r in report)
    assert by_model["ollama/llava:7b"]["cost_usd"] == 0
    assert by_model["claude-haiku-4-5"]["cost_usd"] > by_model["gemini-2.5-flash-lite"]["cost_usd"] > 0
    table = run("cost", "--db", db).output
    assert all(model in table for model in all_fakes)


def test_models_json_lists_every_family_with_prices_and_key_status(fake_ollama, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    listed = {m["model"]: m for m in json.loads(run("models", "--json").output)}
    assert listed["gpt-4o-mini"]["input_per_m"] == pytest.approx(0.15)
    assert listed["gemini-1.5-flash-8b"]["input_per_m"] == pytest.approx(0.0375)
    assert listed["gemini-1.5-flash-8b"]["output_per_m"] == pytest.approx(0.15)
    assert listed["claude-haiku-4-5"]["key"] == "set"
    assert listed["gpt-4o-mini"]["key"].startswith("missing")
    assert listed["ollama/llava:7b"]["key"] == "not needed"  # from the server's /api/tags
    assert listed["ollama/llava:7b"]["input_per_m"] == 0
    assert listed["gpt-4o-mini"]["batch_input_per_m"] == pytest.approx(0.075)


def test_unlisted_names_are_accepted_and_priced_when_known(fake_openai, photos, db):
    result = run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini-2024-07-18", "--db", db)
    assert result.exit_code == 0
    assert rows(db, "SELECT cost_usd FROM captions")[0]["cost_usd"] > 0


def test_unknown_price_is_reported_not_zero(fake_openai, photos, db):
    result = run("caption", photos / "rocket.jpg", "-m", "gpt-unknown-9", "--db", db)
    assert result.exit_code == 0
    assert "unpriced" in result.output
    assert rows(db, "SELECT cost_usd FROM captions")[0]["cost_usd"] is None


def test_a_self_hosted_server_costs_nothing_and_needs_no_key(fake_openai, photos, db):
    result = run("caption", photos / "rocket.jpg", "-m", "openai/some-local-vlm", "--db", db)
    assert result.exit_code == 0
    assert rows(db, "SELECT cost_usd FROM captions")[0]["cost_usd"] == 0.0
    assert fake_openai.image_requests[0].body["model"] == "some-local-vlm"
    assert "Authorization" not in fake_openai.image_requests[0].headers


def test_anthropic_request_carries_key_version_and_base64_jpeg(fake_anthropic, photos, db):
    run("caption", photos / "rocket.jpg", "-m", "claude-haiku-4-5", "--db", db, "-s", "Be brief.")
    sent = fake_anthropic.image_requests[0]
    assert sent.headers["x-api-key"] == "sk-ant-test-not-a-real-key"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    source = sent.body["messages"][0]["content"][0]["source"]
    assert source["type"] == "base64" and source["media_type"] == "image/jpeg"
    assert sent.body["system"] == "Be brief."


def test_gemini_request_uses_header_key_inline_data_and_no_thinking(fake_gemini, photos, db):
    run("caption", photos / "rocket.jpg", "-m", "gemini-2.5-flash-lite", "--db", db)
    sent = fake_gemini.image_requests[0]
    assert sent.headers["x-goog-api-key"] == "test-gemini-key-not-real"
    assert "key=" not in sent.path
    assert sent.path == "/v1beta/models/gemini-2.5-flash-lite:generateContent"
    assert sent.body["contents"][0]["parts"][0]["inline_data"]["mime_type"] == "image/jpeg"
    assert sent.body["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 0}


def test_gemini_thinking_tokens_are_billed_as_output(fake_gemini, photos, db):
    fake_gemini.thoughts_tokens = 50
    run("caption", photos / "rocket.jpg", "-m", "gemini-2.5-flash", "--db", db)
    caption = rows(db, "SELECT * FROM captions")[0]
    assert caption["output_tokens"] == 22 + 50 and caption["reasoning_tokens"] == 50
    assert caption["cost_usd"] == pytest.approx(caption["input_tokens"] * 0.30e-6 + 72 * 2.50e-6)


def test_gemini_blocked_prompt_is_recorded_with_its_usage(fake_gemini, photos, db):
    def blocked(reply):
        return {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 270,
                                                                              "totalTokenCount": 270}}

    fake_gemini.answer_override = blocked
    result = run("caption", photos / "rocket.jpg", "-m", "gemini-2.5-flash-lite", "--db", db)
    assert result.exit_code == 1
    caption = rows(db, "SELECT * FROM captions")[0]
    assert caption["status"] == "blocked" and "SAFETY" in caption["error"]
    assert caption["input_tokens"] == 270 and caption["cost_usd"] == pytest.approx(270 * 0.10e-6)


def test_gemini_retry_info_is_honoured(fake_gemini, photos, db):
    fake_gemini.faults = [Fault(429, {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "slow down",
                                                "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                                             "retryDelay": "0.6s"}]}})]
    # --backoff 0: without the server's delay the retry would go out at once.
    result = run("caption", photos / "rocket.jpg", "-m", "gemini-2.5-flash-lite", "--db", db, "--json",
                 "--backoff", "0")
    assert result.exit_code == 0
    assert json.loads(result.output)["retries"] == 1
    first, second = fake_gemini.received
    assert second.at - first.at >= 0.55


def test_gemini_daily_quota_stops_the_run(fake_gemini, photos, db):
    fake_gemini.fault_fn = lambda n: Fault(429, {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
                                                           "message": "Quota exceeded", "details": [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
         "violations": [{"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]}]}})
    result = run("caption", photos, "-m", "gemini-2.5-flash-lite", "--db", db, "--concurrency", "1")
    assert result.exit_code == 2 and "Quota exceeded" in result.output
    assert len(fake_gemini.received) == 1


def test_anthropic_overload_529_is_retried(fake_anthropic, photos, db):
    fake_anthropic.faults = [Fault(529, {"type": "error", "error": {"type": "overloaded_error",
                                                                    "message": "Overloaded"}})]
    result = run("caption", photos / "rocket.jpg", "-m", "claude-haiku-4-5", "--db", db, "--backoff", "0.01")
    assert result.exit_code == 0
    assert len(fake_anthropic.received) == 2


def test_anthropic_refusal_is_refused(fake_anthropic, photos, db):
    fake_anthropic.answer_override = lambda r: {**r, "content": [], "stop_reason": "refusal"}
    run("caption", photos / "rocket.jpg", "-m", "claude-haiku-4-5", "--db", db)
    assert rows(db, "SELECT status FROM captions")[0]["status"] == "refused"


def test_ollama_sends_stream_false_and_reads_ndjson_if_streamed_anyway(fake_ollama, photos, db):
    fake_ollama.stream_anyway = True
    result = run("caption", photos / "rocket.jpg", "-m", "ollama/llava:7b", "--db", db)
    assert result.exit_code == 0
    assert fake_ollama.image_requests[0].body["stream"] is False
    caption = rows(db, "SELECT * FROM captions")[0]
    assert caption["caption"].startswith("photo ") and caption["output_tokens"] == 30
    assert caption["cost_usd"] == 0


def test_ollama_missing_model_says_ollama_pull(fake_ollama, photos, db):
    result = run("caption", photos, "-m", "ollama/moondream", "--db", db)
    assert result.exit_code == 2
    assert "ollama pull moondream" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "http://127.0.0.1:{port}", "http://127.0.0.1:{port}/"])
def test_ollama_host_forms(fake_ollama, monkeypatch, photos, db, host):
    port = fake_ollama.httpd.server_address[1]
    monkeypatch.setenv("OLLAMA_HOST", host.format(port=port))
    assert run("caption", photos / "rocket.jpg", "-m", "ollama/llava:7b", "--db", db).exit_code == 0


def test_price_alias_for_flash_8b():
    cost = price_request(get_model("gemini-1.5-flash-8b"), 1_000, 100)
    assert cost.cost_usd == pytest.approx(1_000 * 0.0375e-6 + 100 * 0.15e-6)


def test_tiered_prices_apply_per_request():
    # Above 128k prompt tokens gemini-1.5-flash-8b costs twice as much per token.
    small = price_request(get_model("gemini-1.5-flash-8b"), 100_000, 0)
    large = price_request(get_model("gemini-1.5-flash-8b"), 200_000, 0)
    assert small.price_in_per_m == pytest.approx(0.0375)
    assert large.price_in_per_m == pytest.approx(0.075)
