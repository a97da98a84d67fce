"""The plugins' parsers on real responses recorded from the providers (../shared/fixtures/recorded)."""

from __future__ import annotations

import gzip
import json

import pytest

yaml = pytest.importorskip("yaml")

from captioner.default_plugins import anthropic_models, gemini_models, openai_models
from captioner.models import sse_payloads


def recorded(shared, name, index=-1):
    """The response body of one interaction of a VCR cassette, as text."""
    cassette = yaml.safe_load((shared / "fixtures" / "recorded" / name).read_text())
    body = cassette["interactions"][index]["response"]["body"]["string"]
    if isinstance(body, bytes):
        body = gzip.decompress(body).decode()
    return body


def test_anthropic_image_prompt_stream(shared):
    message = anthropic_models.fold_stream(sse_payloads(recorded(shared, "llm-anthropic/test_image_prompt.yaml")))
    result = anthropic_models.parse_message(message)
    assert result.text == "Red square, green square."
    assert (result.input_tokens, result.output_tokens) == (83, 9)  # final message_delta, not the placeholder 1
    assert result.status == "ok"


def test_anthropic_image_without_prompt_stream(shared):
    message = anthropic_models.fold_stream(
        sse_payloads(recorded(shared, "llm-anthropic/test_image_with_no_prompt.yaml")))
    result = anthropic_models.parse_message(message)
    assert (result.input_tokens, result.output_tokens) == (76, 104)
    assert result.text and len(result.text) > 50


def test_gemini_thinking_response(shared):
    result = gemini_models.parse_response(json.loads(recorded(shared, "llm-gemini/test_prompt.yaml")))
    assert result.text == "Scoop"  # the thought summary is not the caption
    assert result.input_tokens == 11
    assert result.output_tokens == 2 + 291 and result.reasoning_tokens == 291


def test_openai_chat_completions_stream(shared):
    body = openai_models.fold_stream(sse_payloads(recorded(shared, "llm/test_tool_use_basic.yaml", index=1)))
    result = openai_models.parse_response(body)
    assert (result.input_tokens, result.output_tokens, result.reasoning_tokens) == (87, 26, 0)
    assert result.text


def test_openrouter_chat_completions_stream_with_image(shared):
    body = openai_models.fold_stream(
        sse_payloads(recorded(shared, "llm-openrouter/603cd08/test_image_prompt.yaml", index=1)))
    result = openai_models.parse_response(body)
    assert (result.input_tokens, result.output_tokens) == (82, 7)
    assert result.text
