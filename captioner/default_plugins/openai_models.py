"""OpenAI Chat Completions, and any server that speaks it (vLLM, llama.cpp,
LM Studio, Ollama's /v1): point `OPENAI_BASE_URL` at it.

Names: the listed OpenAI models, any other `gpt-*` / `o*` name, and
`openai/NAME` for a model on an OpenAI-compatible server (no key needed).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import httpx

from captioner.batch_api import ANSWERED, CANCELLED, ERRORED, EXPIRED, BatchStatus, ItemResult, answer_json, jsonl_lines
from captioner.hookspecs import hookimpl
from captioner.http_model import HTTPModel, images_base64
from captioner.models import (
    DEFAULT_MAX_TOKENS,
    FAILED,
    REFUSED,
    CaptionRequest,
    CaptionResult,
    Model,
    ProviderError,
    as_dict,
    as_list,
    empty_caption_error,
    error_body,
    error_for_status,
    error_message,
    usage_dict,
)
from captioner.options import MAX_TOKENS, SEED, TEMPERATURE, TOP_K, TOP_P, VIDEO_FRAMES, Option
from captioner.schema import strict_compatible

DEFAULT_BASE_URL = "https://api.openai.com/v1"

# (base tokens, tokens per 512-px tile) for the tile-priced models, longest prefix wins.
TILE_RATES: dict[str, tuple[int, int]] = {
    "gpt-4o-mini": (2833, 5667),
    "gpt-4o": (85, 170),
    "gpt-4.1": (85, 170),
    "gpt-4.5": (85, 170),
    "chatgpt-4o": (85, 170),
    "gpt-5": (70, 140),
    "o1": (75, 150),
    "o3": (75, 150),
    "computer-use": (65, 129),
}
# Multipliers for the 32-px-patch-priced models (patches capped at 1,536).
PATCH_MULTIPLIERS: dict[str, float] = {
    "gpt-4.1-mini": 1.62,
    "gpt-4.1-nano": 2.46,
    "gpt-5-mini": 1.62,
    "gpt-5-nano": 2.46,
    "o4-mini": 1.72,
}
PATCH_CAP = 1536

LISTED = ["gpt-4.1-nano", "gpt-4.1-mini", "gpt-4o-mini", "gpt-4o", "gpt-4.1", "gpt-5-nano", "gpt-5-mini", "gpt-5"]
OPENAI_NAME = re.compile(r"^(gpt-|chatgpt-|o\d)")


def _longest_prefix(name: str, table: Mapping[str, Any]) -> Any:
    matches = [prefix for prefix in table if name.startswith(prefix)]
    return table[max(matches, key=len)] if matches else None


def tile_tokens(width: int, height: int, base: int, per_tile: int, detail: str) -> int:
    """OpenAI's tile rule: fit in 2048x2048, shortest side to 768, count 512-px tiles."""
    if detail == "low":
        return base
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    tiles = math.ceil(w / 512) * math.ceil(h / 512)
    return base + per_tile * tiles


def patch_tokens(width: int, height: int, multiplier: float) -> int:
    """OpenAI's patch rule: 32-px patches, image shrunk to fit 1,536 of them."""
    patches = math.ceil(width / 32) * math.ceil(height / 32)
    if patches > PATCH_CAP:
        shrink = math.sqrt(32 * 32 * PATCH_CAP / (width * height))
        shrink *= min(
            math.floor(width * shrink / 32) / (width * shrink / 32),
            math.floor(height * shrink / 32) / (height * shrink / 32),
        )
        patches = min(PATCH_CAP, math.ceil(width * shrink / 32) * math.ceil(height * shrink / 32))
    return math.ceil(patches * multiplier)


OPTIONS = (
    MAX_TOKENS, TEMPERATURE, TOP_P, SEED, VIDEO_FRAMES,
    Option("detail", "str", "Image detail: low is a flat, cheap token count", choices=("low", "high", "auto")),
    Option("reasoning_effort", "str", "Reasoning models: how hard to think (billed as output)",
           choices=("none", "minimal", "low", "medium", "high")),
    Option("frequency_penalty", "float", "Penalise repeated tokens", minimum=-2, maximum=2),
    Option("presence_penalty", "float", "Penalise tokens already used", minimum=-2, maximum=2),
)
# Engines such as vLLM and llama.cpp take a few sampling knobs OpenAI does not.
COMPATIBLE_OPTIONS = (
    *OPTIONS,
    TOP_K,
    Option("repetition_penalty", "float", "vLLM / llama.cpp repetition penalty", minimum=0, maximum=10),
    Option("min_p", "float", "vLLM / llama.cpp minimum token probability", minimum=0, maximum=1),
)
PASSED_AS_IS = ("temperature", "top_p", "seed", "reasoning_effort", "frequency_penalty", "presence_penalty",
                "top_k", "repetition_penalty", "min_p")


def map_error(response: httpx.Response) -> ProviderError:
    body, message = error_body(response)
    code = ""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = str(body["error"].get("code") or body["error"].get("type") or "")
    # A 429 is usually a rate limit (retry), but an empty account is also a 429.
    out_of_money = code in ("insufficient_quota", "billing_hard_limit_reached")
    return error_for_status(response, message, fatal_hint=out_of_money)


def parse_response(body: Any) -> CaptionResult:
    """A Chat Completions response body to a CaptionResult."""
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list) or not body["choices"]:
        raise ProviderError("malformed response: no choices", retryable=True)
    # Wrongly typed parts (`choices: ["x"]`, `message: "x"`) read as empty, so a
    # billed answer keeps its usage and is recorded with the reason it is unusable.
    choice = as_dict(body["choices"][0])
    message = as_dict(choice.get("message"))
    usage = usage_dict(body, "usage")
    completion_details = usage_dict(usage, "completion_tokens_details")
    prompt_details = usage_dict(usage, "prompt_tokens_details")
    result = CaptionResult(
        text=_content_text(message.get("content")),
        input_tokens=usage.get("prompt_tokens"),
        output_tokens=usage.get("completion_tokens"),
        reasoning_tokens=completion_details.get("reasoning_tokens"),
        cache_read_tokens=prompt_details.get("cached_tokens") or 0,
        usage=usage or body.get("usage"),
    )
    finish = choice.get("finish_reason")
    if message.get("refusal"):
        result.status, result.error, result.text = REFUSED, f"refused: {message['refusal']}", None
    elif finish == "content_filter":
        result.status, result.error = REFUSED, "refused: content_filter"
    elif not result.text:
        # Billed but useless: keep the usage, record why.
        result.status = FAILED
        result.error = empty_caption_error(finish == "length", f"finish_reason {finish}")
    return result


def fold_stream(events: list[Any]) -> dict[str, Any]:
    """Streamed `chat.completion.chunk`s folded into one non-streamed response body."""
    content, refusal, finish, usage = [], [], None, None
    for chunk in events:
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            content.append(delta.get("content") or "")
            refusal.append(delta.get("refusal") or "")
            finish = choice.get("finish_reason") or finish
    message = {"content": "".join(content), "refusal": "".join(refusal) or None}
    return {"choices": [{"message": message, "finish_reason": finish}], "usage": usage}


def _content_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content.strip() or None
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return "".join(parts).strip() or None
    return None


class OpenAIChatModel(HTTPModel):
    provider = "openai"
    key_name = "openai"
    max_images = 10
    key_env = ("OPENAI_API_KEY",)
    accepted_options: Sequence[Option] | None = OPTIONS
    batch_discount: float | None = 0.5  # the provider's Batch API halves both prices
    structured_output = True
    map_error = staticmethod(map_error)
    fold_stream = staticmethod(fold_stream)
    parse_body = staticmethod(parse_response)

    def __init__(self, model_id: str, *, api_model: str | None = None, compatible: bool = False,
                 listed: bool = True) -> None:
        self.model_id = model_id
        self.api_model = api_model or model_id
        # A model on some OpenAI-compatible server: no key required, older parameter names.
        self.compatible = compatible
        self.needs_key = not compatible
        self.listed = listed
        if compatible:
            self.provider = "openai-compatible"
            self.batch_discount = None
            self.accepted_options = COMPATIBLE_OPTIONS

    def image_tokens(self, width: int, height: int, options: Mapping[str, Any]) -> int:
        multiplier = _longest_prefix(self.api_model, PATCH_MULTIPLIERS)
        if multiplier is not None:
            return patch_tokens(width, height, multiplier)
        base, per_tile = _longest_prefix(self.api_model, TILE_RATES) or (85, 170)
        return tile_tokens(width, height, base, per_tile, str(options.get("detail", "auto")))

    def endpoints(self) -> list[str]:
        return base_urls()

    def batch_api(self) -> OpenAIBatch | None:
        return None if self.compatible else OpenAIBatch(self)

    def connection_hint(self) -> str | None:
        if self.compatible:
            return "is the OpenAI-compatible server running? OPENAI_BASE_URL says where it is"
        return None

    def endpoint(self) -> str:
        return base_urls()[0] + "/chat/completions"

    def endpoint_for(self, request: CaptionRequest) -> str:
        return (request.base_url or base_urls()[0]).rstrip("/") + "/chat/completions"

    def build_body(self, request: CaptionRequest) -> dict[str, Any]:
        options = self.typed_options(request)
        images = []
        for data in images_base64(request):
            image_url: dict[str, Any] = {"url": "data:image/jpeg;base64," + data}
            if "detail" in options:
                image_url["detail"] = options["detail"]
            images.append({"type": "image_url", "image_url": image_url})
        messages: list[dict[str, Any]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.append({"role": "user", "content": [{"type": "text", "text": request.prompt}, *images]})
        body: dict[str, Any] = {"model": self.api_model, "messages": messages}
        max_tokens = options.get("max_tokens", DEFAULT_MAX_TOKENS)
        body["max_tokens" if self.compatible else "max_completion_tokens"] = max_tokens
        if not self.compatible and re.match(r"^gpt-5(-mini|-nano)?$", self.api_model):
            # Reasoning adds cost and nothing to a caption; gpt-5 allows turning most of it off.
            body["reasoning_effort"] = "minimal"
        body.update({name: options[name] for name in PASSED_AS_IS if name in options})
        if request.schema is not None:
            body["response_format"] = response_format(request.schema)
        return body


def response_format(schema: Mapping[str, Any]) -> dict[str, Any]:
    """Structured Outputs: strict when the schema allows it (every object closed,
    every property required), which guarantees the answer follows it."""
    return {"type": "json_schema",
            "json_schema": {"name": "caption", "strict": strict_compatible(dict(schema)), "schema": dict(schema)}}


@hookimpl
def register_models(register: Callable[[Model], None]) -> None:
    for name in LISTED:
        register(OpenAIChatModel(name))


@hookimpl
def model_for_name(name: str) -> Model | None:
    if name.startswith("openai/"):
        return OpenAIChatModel(name, api_model=name.split("/", 1)[1], compatible=True, listed=False)
    if OPENAI_NAME.match(name):
        return OpenAIChatModel(name, listed=False)
    return None


BATCH_DONE = {"completed", "failed", "expired", "cancelled"}


def base_urls() -> list[str]:
    """`OPENAI_BASE_URL`, which may name several endpoints separated by commas (an endpoint pool)."""
    urls = [u.strip().rstrip("/") for u in (os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).split(",")]
    return [u for u in urls if u] or [DEFAULT_BASE_URL]


class OpenAIBatch:
    """OpenAI's Batch API: a JSONL file uploaded with `purpose=batch`, a batch on
    `/v1/chat/completions` tagged in its metadata, results in the output and
    error files."""

    max_requests = 50_000
    max_bytes = 190 * 1024 * 1024  # under the 200 MB input-file limit

    def __init__(self, model: OpenAIChatModel) -> None:
        self.model = model

    def line(self, request: CaptionRequest, custom_id: str) -> dict[str, Any]:
        return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                "body": self.model.build_body(request)}

    @staticmethod
    def _base() -> str:
        return base_urls()[0]

    @staticmethod
    def _auth(key: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"} if key else {}

    async def create(self, client: httpx.AsyncClient, lines: Any, count: int, tag: str, key: str | None) -> str:
        with open(lines, "rb") as fh:
            upload = answer_json(await client.post(
                self._base() + "/files", data={"purpose": "batch"},
                files={"file": ("captioner-batch.jsonl", fh, "application/jsonl")}, headers=self._auth(key)), map_error)
        created = answer_json(await client.post(
            self._base() + "/batches", headers=self._auth(key),
            json={"input_file_id": upload.get("id"), "endpoint": "/v1/chat/completions",
                  "completion_window": "24h", "metadata": {"captioner_tag": tag}}), map_error)
        if not isinstance(created.get("id"), str):
            raise ProviderError("the batch was created without an id", retryable=False)
        return created["id"]

    async def find(self, client: httpx.AsyncClient, tag: str, count: int, since: str, key: str | None
                   ) -> str | None:
        listing = answer_json(await client.get(self._base() + "/batches", params={"limit": 100},
                                                    headers=self._auth(key)), map_error)
        for batch in map(as_dict, as_list(listing.get("data"))):
            if as_dict(batch.get("metadata")).get("captioner_tag") == tag and isinstance(batch.get("id"), str):
                return batch["id"]
        return None

    async def poll(self, client: httpx.AsyncClient, batch_id: str, key: str | None) -> BatchStatus:
        batch = answer_json(await client.get(f"{self._base()}/batches/{batch_id}", headers=self._auth(key)), map_error)
        status = str(batch.get("status"))
        counts = {k: int(v) for k, v in as_dict(batch.get("request_counts")).items() if isinstance(v, int)}
        errors = [as_dict(e).get("message") for e in as_list(as_dict(batch.get("errors")).get("data"))]
        error = "; ".join(str(e) for e in errors if e) or None
        return BatchStatus(status in BATCH_DONE, status, counts, error if status == "failed" else None)

    async def results(self, client: httpx.AsyncClient, batch_id: str, key: str | None
                      ) -> AsyncIterator[ItemResult]:
        batch = answer_json(await client.get(f"{self._base()}/batches/{batch_id}", headers=self._auth(key)), map_error)
        for file_id in (batch.get("output_file_id"), batch.get("error_file_id")):
            if not isinstance(file_id, str):
                continue
            async for line in jsonl_lines(client, f"{self._base()}/files/{file_id}/content", self._auth(key),
                                          map_error):
                yield self._item(line)

    @staticmethod
    def _item(line: dict[str, Any] | None) -> ItemResult:
        if line is None:
            return ItemResult("", ERRORED, error="unreadable result line")
        custom_id = str(line.get("custom_id"))
        # OpenAI writes an error object; vLLM's run-batch a plain message.
        raw_error = line.get("error")
        error = as_dict(raw_error) if not isinstance(raw_error, str) else {"message": raw_error}
        code = str(error.get("code") or "")
        if code == "batch_expired":
            return ItemResult(custom_id, EXPIRED)
        if code == "batch_cancelled":
            return ItemResult(custom_id, CANCELLED)
        response = as_dict(line.get("response"))
        status = response.get("status_code")
        if isinstance(status, int) and 200 <= status < 300:
            try:
                return ItemResult(custom_id, ANSWERED, parse_response(response.get("body")))
            except ProviderError as exc:
                return ItemResult(custom_id, ERRORED, error=exc.message)
        message = error_message(response.get("body"), str(error.get("message") or f"HTTP {status}"))
        return ItemResult(custom_id, ERRORED, error=f"HTTP {status}: {message}" if status else message)

    async def cancel(self, client: httpx.AsyncClient, batch_id: str, key: str | None) -> None:
        answer_json(await client.post(f"{self._base()}/batches/{batch_id}/cancel", headers=self._auth(key)), map_error)
