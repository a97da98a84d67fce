"""Anthropic Messages API (`POST /v1/messages`). Names: `claude-*`.

`ANTHROPIC_BASE_URL` points it elsewhere; the key comes from `ANTHROPIC_API_KEY`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import httpx

from captioner.batch_api import ANSWERED, CANCELLED, ERRORED, EXPIRED, BatchStatus, ItemResult, answer_json, jsonl_lines
from captioner.hookspecs import hookimpl
from captioner.http_model import HTTPModel, images_base64
from captioner.models import (
    FAILED,
    REFUSED,
    CaptionRequest,
    CaptionResult,
    Model,
    ProviderError,
    add_tokens,
    as_dict,
    as_list,
    empty_caption_error,
    error_body,
    error_for_status,
    error_message,
    usage_dict,
)
from captioner.options import MAX_TOKENS, TEMPERATURE, TOP_K, TOP_P, VIDEO_FRAMES

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
# Anthropic shrinks images beyond 1568 px on the long side or about 1,600 tokens
# (1.2 megapixels), then bills width * height / 750 tokens.
MAX_LONG_SIDE = 1568
MAX_PIXELS = 1_200_000
# The tool a structured answer (--schema) is asked for through.
TOOL_NAME = "record_caption"

LISTED = ["claude-haiku-4-5", "claude-sonnet-4-5", "claude-haiku-5-5", "claude-sonnet-5-5"]


def anthropic_image_tokens(width: int, height: int) -> int:
    scale = min(1.0, MAX_LONG_SIDE / max(width, height), math.sqrt(MAX_PIXELS / (width * height)))
    w, h = int(width * scale), int(height * scale)
    return math.ceil(w * h / 750)


OPTIONS = (MAX_TOKENS, TEMPERATURE, TOP_P, TOP_K, VIDEO_FRAMES)


def map_error(response: httpx.Response) -> ProviderError:
    _, message = error_body(response)
    # An empty account is a 400 that will fail every image the same way.
    out_of_credit = "credit balance" in message.lower()
    return error_for_status(response, message, fatal_hint=out_of_credit)


def parse_message(body: Any) -> CaptionResult:
    """A Messages API response body to a CaptionResult."""
    message = body
    if not isinstance(message, dict) or message.get("type") == "error":
        raise ProviderError(f"unexpected response: {error_message(message, 'no message')}", retryable=True)
    usage = usage_dict(message, "usage")
    cache_write = usage.get("cache_creation_input_tokens")
    cache_read = usage.get("cache_read_input_tokens")
    blocks = [as_dict(b) for b in as_list(message.get("content"))]
    texts = [b["text"] for b in blocks if b.get("type") == "text" and isinstance(b.get("text"), str)]
    # A structured answer comes as the input of the one tool the request offered.
    tool_inputs = [b.get("input") for b in blocks if b.get("type") == "tool_use" and b.get("name") == TOOL_NAME]
    result = CaptionResult(
        text=json.dumps(tool_inputs[0], ensure_ascii=False) if tool_inputs else "".join(texts).strip() or None,
        # Billed input is the uncached input plus what was written to and read from the cache.
        input_tokens=add_tokens(usage.get("input_tokens"), cache_write, cache_read),
        output_tokens=usage.get("output_tokens"),
        cache_read_tokens=cache_read or 0,
        cache_write_tokens=cache_write or 0,
        usage=usage or message.get("usage"),
    )
    stop = message.get("stop_reason")
    if stop == "refusal":
        result.status, result.error = REFUSED, "refused: stop_reason refusal"
    elif not result.text:
        result.status = FAILED
        result.error = empty_caption_error(stop == "max_tokens", f"stop_reason {stop}")
    return result


def fold_stream(events: list[Any]) -> dict[str, Any]:
    """Streamed Messages events folded into one message: text deltas joined,
    usage from message_start updated by the final message_delta."""
    message: dict[str, Any] = {"content": [], "usage": {}, "stop_reason": None}
    text: list[str] = []
    tool_json: list[str] = []
    tool_name = None
    for event in events:
        kind = event.get("type")
        if kind == "message_start":
            start = event.get("message") or {}
            message["usage"] = dict(usage_dict(start, "usage"))
            message["model"] = start.get("model")
        elif kind == "content_block_start" and as_dict(event.get("content_block")).get("type") == "tool_use":
            tool_name = as_dict(event.get("content_block")).get("name")
        elif kind == "content_block_delta" and event.get("delta", {}).get("type") == "text_delta":
            text.append(event["delta"].get("text", ""))
        elif kind == "content_block_delta" and event.get("delta", {}).get("type") == "input_json_delta":
            tool_json.append(event["delta"].get("partial_json", ""))
        elif kind == "message_delta":
            message["stop_reason"] = event.get("delta", {}).get("stop_reason")
            message["usage"].update({k: v for k, v in usage_dict(event, "usage").items() if v is not None})
        elif kind == "error":
            raise ProviderError(f"stream error: {error_message(event, 'unknown')}", retryable=True)
    message["content"] = [{"type": "text", "text": "".join(text)}]
    if tool_name is not None:
        try:
            tool_input = json.loads("".join(tool_json) or "{}")
        except ValueError:
            tool_input = "".join(tool_json)  # kept as it came, recorded malformed
        message["content"].append({"type": "tool_use", "name": tool_name, "input": tool_input})
    return message


class ClaudeModel(HTTPModel):
    provider = "anthropic"
    batch_discount = 0.5  # the provider's Batch API halves both prices
    key_name = "anthropic"
    max_images = 20
    key_env = ("ANTHROPIC_API_KEY",)
    accepted_options = OPTIONS
    structured_output = True
    # The tool-use system prompt Anthropic adds when a tool is forced (Claude 4 models).
    schema_overhead_tokens = 313
    map_error = staticmethod(map_error)
    fold_stream = staticmethod(fold_stream)
    parse_body = staticmethod(parse_message)

    def __init__(self, model_id: str, listed: bool = True) -> None:
        self.model_id = model_id
        self.listed = listed

    def image_tokens(self, width: int, height: int, options: Mapping[str, Any]) -> int:
        return anthropic_image_tokens(width, height)

    def batch_api(self) -> AnthropicBatch:
        return AnthropicBatch(self)

    def endpoint(self) -> str:
        base = (os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        return base + ("/messages" if base.endswith("/v1") else "/v1/messages")

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"x-api-key": key}

    def request_headers(self, key: str | None) -> dict[str, str]:
        return {**super().request_headers(key), "anthropic-version": API_VERSION}

    def build_body(self, request: CaptionRequest) -> dict[str, Any]:
        options = self.typed_options(request)
        body: dict[str, Any] = {
            "model": self.model_id,
            "max_tokens": self.max_output_tokens(options),
            "messages": [
                {
                    "role": "user",
                    "content": [
                        *({"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": data}}
                          for data in images_base64(request)),
                        {"type": "text", "text": request.prompt},
                    ],
                }
            ],
        }
        if request.system:
            body["system"] = request.system
        body.update({name: options[name] for name in ("temperature", "top_p", "top_k") if name in options})
        if request.schema is not None:
            # Structured output through tool use: one tool whose input is the
            # schema, and the model made to call it.
            body["tools"] = [{"name": TOOL_NAME, "description": "Record what the image shows.",
                              "input_schema": dict(request.schema)}]
            body["tool_choice"] = {"type": "tool", "name": TOOL_NAME}
        return body


@hookimpl
def register_models(register: Callable[[Model], None]) -> None:
    for name in LISTED:
        register(ClaudeModel(name))


@hookimpl
def model_for_name(name: str) -> Model | None:
    return ClaudeModel(name, listed=False) if name.startswith("claude-") else None


class AnthropicBatch:
    """Anthropic's Message Batches: the requests in the create call's body, results
    as JSONL from `results_url`. A batch carries no label, so a lost create is found
    by its request count and creation time."""

    max_requests = 100_000
    max_bytes = 250 * 1024 * 1024  # under the 256 MB limit

    def __init__(self, model: ClaudeModel) -> None:
        self.model = model

    def line(self, request: CaptionRequest, custom_id: str) -> dict[str, Any]:
        return {"custom_id": custom_id, "params": self.model.build_body(request)}

    def _url(self, path: str = "") -> str:
        return self.model.endpoint() + "/batches" + path

    async def create(self, client: httpx.AsyncClient, lines: Any, count: int, tag: str, key: str | None) -> str:
        async def body() -> AsyncIterator[bytes]:
            yield b'{"requests":['
            with open(lines, "rb") as fh:
                for n, line in enumerate(fh):
                    yield (b"," if n else b"") + line.rstrip(b"\n")
            yield b"]}"

        created = answer_json(await client.post(self._url(), content=body(),
                                                     headers=self.model.request_headers(key)), map_error)
        if not isinstance(created.get("id"), str):
            raise ProviderError("the batch was created without an id")
        return created["id"]

    async def find(self, client: httpx.AsyncClient, tag: str, count: int, since: str, key: str | None
                   ) -> str | None:
        listing = answer_json(await client.get(self._url(), params={"limit": 100},
                                                    headers=self.model.request_headers(key)), map_error)
        started = datetime.fromisoformat(since) - timedelta(minutes=1)
        for batch in sorted(map(as_dict, as_list(listing.get("data"))), key=lambda b: str(b.get("created_at"))):
            try:
                created = datetime.fromisoformat(str(batch.get("created_at")).replace("Z", "+00:00"))
            except ValueError:
                continue
            total = sum(v for v in as_dict(batch.get("request_counts")).values() if isinstance(v, int))
            if created >= started and total == count and isinstance(batch.get("id"), str):
                return batch["id"]
        return None

    async def poll(self, client: httpx.AsyncClient, batch_id: str, key: str | None) -> BatchStatus:
        response = await client.get(self._url(f"/{batch_id}"), headers=self.model.request_headers(key))
        batch = answer_json(response, map_error)
        counts = {k: v for k, v in as_dict(batch.get("request_counts")).items() if isinstance(v, int)}
        status = str(batch.get("processing_status"))
        return BatchStatus(status == "ended", status, counts)

    async def results(self, client: httpx.AsyncClient, batch_id: str, key: str | None
                      ) -> AsyncIterator[ItemResult]:
        response = await client.get(self._url(f"/{batch_id}"), headers=self.model.request_headers(key))
        batch = answer_json(response, map_error)
        url = batch.get("results_url")
        if not isinstance(url, str):
            return
        async for line in jsonl_lines(client, url, self.model.request_headers(key), map_error):
            yield self._item(line)

    @staticmethod
    def _item(line: dict[str, Any] | None) -> ItemResult:
        if line is None:
            return ItemResult("", ERRORED, error="unreadable result line")
        custom_id = str(line.get("custom_id"))
        result = as_dict(line.get("result"))
        kind = result.get("type")
        if kind == "succeeded":
            try:
                return ItemResult(custom_id, ANSWERED, parse_message(result.get("message")))
            except ProviderError as exc:
                return ItemResult(custom_id, ERRORED, error=exc.message)
        if kind in ("expired", "canceled"):
            return ItemResult(custom_id, EXPIRED if kind == "expired" else CANCELLED)
        error = as_dict(as_dict(result.get("error")).get("error"))
        return ItemResult(custom_id, ERRORED, error=f"{error.get('type', 'error')}: {error.get('message', '')}")

    async def cancel(self, client: httpx.AsyncClient, batch_id: str, key: str | None) -> None:
        response = await client.post(self._url(f"/{batch_id}/cancel"), headers=self.model.request_headers(key))
        answer_json(response, map_error)
