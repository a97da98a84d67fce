"""The OpenAI Chat Completions plugin: request shape, response parsing, error mapping."""

from __future__ import annotations

import httpx
import pytest

from captioner.default_plugins.openai_models import (
    OpenAIChatModel,
    map_error,
    parse_response,
    patch_tokens,
    tile_tokens,
)
from captioner.models import CaptionRequest, parse_retry_after


def reply(message, finish="stop", usage=None):
    return {"choices": [{"message": message, "finish_reason": finish}],
            "usage": usage or {"prompt_tokens": 100, "completion_tokens": 20}}


def test_reasoning_tokens_are_part_of_output():
    result = parse_response(reply({"content": "A cat."}, usage={
        "prompt_tokens": 300, "completion_tokens": 120,
        "completion_tokens_details": {"reasoning_tokens": 100}}))
    tokens = (result.input_tokens, result.output_tokens, result.reasoning_tokens)
    assert result.text == "A cat." and tokens == (300, 120, 100)


def test_refusal_and_content_filter_are_refused():
    assert parse_response(reply({"content": None, "refusal": "No."})).status == "refused"
    assert parse_response(reply({"content": ""}, finish="content_filter")).status == "refused"


def test_output_limit_used_up_is_a_failure_that_keeps_its_usage():
    result = parse_response(reply({"content": ""}, finish="length"))
    assert result.status == "failed" and "max_tokens" in result.error
    assert result.input_tokens == 100


def response(status, body=None, headers=None):
    return httpx.Response(status, json=body or {"error": {"message": "x"}}, headers=headers or {})


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 529])
def test_retryable_statuses(status):
    error = map_error(response(status))
    assert error.retryable and not error.fatal


@pytest.mark.parametrize("status", [401, 403, 404])
def test_statuses_that_fail_every_image_stop_the_run(status):
    assert map_error(response(status)).fatal


def test_bad_request_is_final_for_that_image_only():
    error = map_error(response(400))
    assert not error.retryable and not error.fatal


def test_insufficient_quota_429_is_fatal_but_rate_limit_429_is_retried():
    quota = map_error(response(429, {"error": {"message": "You exceeded your quota", "code": "insufficient_quota"}}))
    assert quota.fatal
    limited = map_error(response(429, {"error": {"code": "rate_limit_exceeded", "message": "slow"}},
                                 {"retry-after-ms": "1500"}))
    assert limited.retryable and limited.retry_after == 1.5


def test_retry_after_forms():
    assert parse_retry_after({"retry-after": "7"}) == 7
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "7"}) == 0.25
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480.0) == 10
    assert parse_retry_after({"retry-after": "soon"}) is None


def test_request_body_sends_image_as_data_url_with_detail():
    body = OpenAIChatModel("gpt-4o-mini").build_body(
        CaptionRequest(jpeg=b"\xff\xd8\xff", width=1, height=1, prompt="hi", options={"detail": "low"}))
    image = body["messages"][0]["content"][1]["image_url"]
    assert image["url"].startswith("data:image/jpeg;base64,") and image["detail"] == "low"
    assert body["max_completion_tokens"] == 400


def test_compatible_servers_get_max_tokens():
    body = OpenAIChatModel("openai/llava", api_model="llava", compatible=True).build_body(
        CaptionRequest(jpeg=b"x", width=1, height=1, prompt="hi"))
    assert body["model"] == "llava" and body["max_tokens"] == 400


def test_tile_rule_matches_openai_worked_examples():
    # 1024x1024 high detail on gpt-4o: shortest side to 768 -> 768x768 -> 4 tiles -> 85 + 4*170
    assert tile_tokens(1024, 1024, 85, 170, "high") == 765
    # 2048x4096: fit 2048 -> 1024x2048 -> shortest 768 -> 768x1536 -> 6 tiles
    assert tile_tokens(2048, 4096, 85, 170, "high") == 1105
    assert tile_tokens(4096, 8192, 85, 170, "low") == 85


def test_patch_rule_matches_openai_worked_examples():
    assert patch_tokens(1024, 1024, 1.0) == 1024
    assert patch_tokens(1800, 2400, 1.0) == 1452
    assert patch_tokens(1024, 1024, 1.62) == 1659
