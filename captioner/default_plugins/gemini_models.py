"""Google Gemini, native `generateContent`. Names: `gemini-*`, `gemma-*`.

`GEMINI_BASE_URL` points it elsewhere; the key comes from `GEMINI_API_KEY`
or `GOOGLE_API_KEY` and travels in the `x-goog-api-key` header (never the URL).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import math
import os
import re
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx

from captioner.answers import parse_json
from captioner.batch_api import ANSWERED, ERRORED, BatchStatus, ItemResult, answer_json, jsonl_lines
from captioner.hookspecs import hookimpl
from captioner.http_model import HTTPModel, images_base64
from captioner.models import (
    BLOCKED,
    FAILED,
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
    usage_dict,
)
from captioner.options import (
    MAX_TOKENS,
    SEED,
    TEMPERATURE,
    TOP_K,
    TOP_P,
    VIDEO_AUDIO,
    VIDEO_FRAMES,
    VIDEO_MODE,
    Option,
)

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
TOKENS_PER_IMAGE = 258
# Video: one frame a second at 258 tokens (66 at low media resolution), 32 a second of audio.
LOW_VIDEO_TOKENS = 66
# One frame every 4 s at low resolution: a 15 s clip is 4 frames (264 tokens) plus 480 of sound.
DEFAULT_VIDEO_FPS = 0.25
AUDIO_TOKENS_PER_SECOND = 32
# A request with the clip inline must stay under this; bigger clips go through the Files API.
INLINE_LIMIT_BYTES = 20 * 1024 * 1024
FILE_POLL_SECONDS = 1.0
FILE_POLL_LIMIT = 300
# Gemini 3 bills an image by its media resolution.
MEDIA_RESOLUTION_TOKENS = {"low": 280, "medium": 560, "high": 1120}
BLOCK_REASONS = {"SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "RECITATION", "IMAGE_SAFETY", "LANGUAGE"}
OPTIONS = (
    MAX_TOKENS, TEMPERATURE, TOP_P, TOP_K, SEED, VIDEO_FRAMES, VIDEO_AUDIO, VIDEO_MODE,
    Option("video_fps", "float", "Video clips: frames a second Gemini looks at (default 0.25)",
           minimum=0.05, maximum=24),
    Option("media_resolution", "str", "Image detail Gemini 3 bills by (low is cheapest)",
           choices=("low", "medium", "high")),
    Option("thinking_budget", "int", "Gemini 2.5: thinking tokens allowed (0 turns thinking off, -1 dynamic)",
           minimum=-1, maximum=32768),
    Option("thinking_level", "str", "Gemini 3: how hard to think", choices=("minimal", "low", "medium", "high")),
)
GENERATION_OPTIONS = {
    "temperature": "temperature",
    "top_p": "topP",
    "top_k": "topK",
    "seed": "seed",
}

LISTED = ["gemini-2.5-flash-lite", "gemini-2.5-flash", "gemini-3.1-flash-lite", "gemini-1.5-flash-8b"]


def gemini_image_tokens(model: str, width: int, height: int, options: Mapping[str, Any]) -> int:
    if model.startswith("gemini-3"):
        level = str(options.get("media_resolution", "high")).lower().replace("media_resolution_", "")
        return MEDIA_RESOLUTION_TOKENS.get(level, MEDIA_RESOLUTION_TOKENS["high"])
    if model.startswith("gemini-2.0") and (width > 384 or height > 384):
        # Gemini 2.0: larger images are cut into square tiles of about min-side / 1.5.
        unit = max(256, min(768, math.floor(min(width, height) / 1.5)))
        return TOKENS_PER_IMAGE * math.ceil(width / unit) * math.ceil(height / unit)
    # Gemini 1.5 and 2.5 bill a flat 258 tokens per image.
    return TOKENS_PER_IMAGE


def thinking_config(model: str) -> dict[str, Any] | None:
    """Thinking off (or as low as allowed): it costs output tokens and adds nothing to a caption."""
    if re.match(r"^gemini-2\.5-flash", model):
        return {"thinkingBudget": 0}
    if model.startswith("gemini-3"):
        return {"thinkingLevel": "low"}
    return None  # 1.5 / 2.0 do not think; 2.5 Pro cannot turn thinking off


def retry_delay(details: Any) -> float | None:
    """`RetryInfo.retryDelay` ("37s", "1.5s") from an error's details."""
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, dict) and detail.get("@type", "").endswith("google.rpc.RetryInfo"):
            match = re.fullmatch(r"\s*([\d.]+)s\s*", str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None


def _is_daily_quota(details: Any) -> bool:
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, dict) and detail.get("@type", "").endswith("google.rpc.QuotaFailure"):
            for violation in detail.get("violations") or []:
                quota = f"{violation.get('quotaId', '')} {violation.get('quotaMetric', '')}"
                if "PerDay" in quota or "per_day" in quota.lower():
                    return True
    return False


def _is_bad_key(details: Any) -> bool:
    return any(
        isinstance(d, dict) and d.get("reason") in ("API_KEY_INVALID", "API_KEY_SERVICE_BLOCKED")
        for d in (details if isinstance(details, list) else [])
    )


def map_error(response: httpx.Response) -> ProviderError:
    body, message = error_body(response)
    if isinstance(body, list) and body:
        body = body[0]
    error = body.get("error", {}) if isinstance(body, dict) else {}
    details = error.get("details") if isinstance(error, dict) else None
    # A per-day quota will not come back within the run; a bad key fails every image.
    fatal = _is_daily_quota(details) or _is_bad_key(details)
    return error_for_status(response, message, fatal_hint=fatal, retry_after=retry_delay(details))


def parse_response(body: Any) -> CaptionResult:
    """A generateContent body (or a streamed array of chunks) to a CaptionResult."""
    chunks = body if isinstance(body, list) else [body]
    if not chunks or not all(isinstance(c, dict) for c in chunks):
        raise ProviderError("malformed response from Gemini", retryable=True)
    texts: list[str] = []
    finish = block = None
    usage: dict[str, Any] = {}
    for chunk in chunks:
        usage = usage_dict(chunk, "usageMetadata") or usage
        block = (chunk.get("promptFeedback") or {}).get("blockReason") or block
        for candidate in [as_dict(c) for c in as_list(chunk.get("candidates"))[:1]]:
            finish = candidate.get("finishReason") or finish
            for part in as_list(as_dict(candidate.get("content")).get("parts")):
                if isinstance(part, dict) and not part.get("thought") and isinstance(part.get("text"), str):
                    texts.append(part["text"])
    thoughts = usage.get("thoughtsTokenCount")
    result = CaptionResult(
        text="".join(texts).strip() or None,
        input_tokens=usage.get("promptTokenCount"),
        # Thinking is billed as output.
        output_tokens=add_tokens(usage.get("candidatesTokenCount"), thoughts),
        reasoning_tokens=(thoughts or 0) if usage else None,
        cache_read_tokens=usage.get("cachedContentTokenCount") or 0,
        audio_tokens=sum(d.get("tokenCount") or 0 for d in map(as_dict, as_list(usage.get("promptTokensDetails")))
                         if d.get("modality") == "AUDIO" and isinstance(d.get("tokenCount"), int)),
        usage=usage or None,
    )
    if block:
        result.status, result.error, result.text = BLOCKED, f"blocked: prompt {block}", None
    elif finish in BLOCK_REASONS:
        result.status, result.error, result.text = BLOCKED, f"blocked: {finish}", None
    elif not result.text:
        result.status = FAILED
        result.error = empty_caption_error(finish == "MAX_TOKENS", f"finishReason {finish}")
    return result


class GeminiModel(HTTPModel):
    provider = "google"
    batch_discount = 0.5  # the provider's Batch API halves both prices
    key_name = "gemini"
    key_env = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
    accepted_options = OPTIONS
    structured_output = True
    accepts_video = True
    max_images = 16
    map_error = staticmethod(map_error)
    parse_body = staticmethod(parse_response)

    def __init__(self, model_id: str, listed: bool = True) -> None:
        self.model_id = model_id.removeprefix("models/")
        self.listed = listed

    def image_tokens(self, width: int, height: int, options: Mapping[str, Any]) -> int:
        return gemini_image_tokens(self.model_id, width, height, options)

    def video_tokens(self, duration_s: float, has_audio: bool, options: Mapping[str, Any]) -> tuple[int, int]:
        """Gemini looks at `video_fps` frames a second (default 0.25), each 66
        tokens at low media resolution (the default for clips) or 258, and hears
        32 tokens a second of sound."""
        seconds = max(1, math.ceil(duration_s))
        frames = max(1, math.ceil(duration_s * float(options.get("video_fps", DEFAULT_VIDEO_FPS))))
        low = str(options.get("media_resolution", "low")).lower() == "low"
        audio = AUDIO_TOKENS_PER_SECOND * seconds if has_audio else 0
        return (LOW_VIDEO_TOKENS if low else TOKENS_PER_IMAGE) * frames + audio, audio

    def endpoint(self) -> str:
        return f"{api_base()}/models/{self.model_id}:generateContent"

    def batch_api(self) -> GeminiBatch:
        return GeminiBatch(self)

    async def caption(self, request: CaptionRequest, client: httpx.AsyncClient) -> CaptionResult:
        """A clip too big to send inline goes through the Files API first (and is deleted after)."""
        video = next((part for part in request.media if part.kind == "video"), None)
        if video is None or len(video.data) * 4 // 3 + 10_000 < INLINE_LIMIT_BYTES:
            return await super().caption(request, client)
        uploaded = await upload_file(client, video.data, video.mime_type, request.key)
        try:
            active = await wait_until_active(client, uploaded, request.key)
            sent = dataclasses.replace(video, data=b"", uri=active["uri"])
            return await super().caption(dataclasses.replace(request, media=(sent,)), client)
        finally:
            with contextlib.suppress(httpx.HTTPError):
                await client.delete(f"{api_base()}/{uploaded['name']}", headers=self.request_headers(request.key))

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"x-goog-api-key": key}  # never in the URL, where logs would keep it

    def build_body(self, request: CaptionRequest) -> dict[str, Any]:
        options = self.typed_options(request)
        generation: dict[str, Any] = {"maxOutputTokens": self.max_output_tokens(options)}
        thinking = thinking_config(self.model_id)
        if "thinking_budget" in options:
            thinking = {"thinkingBudget": options["thinking_budget"]}
        if "thinking_level" in options:
            thinking = {"thinkingLevel": options["thinking_level"]}
        if thinking:
            generation["thinkingConfig"] = thinking
        for key, field in GENERATION_OPTIONS.items():
            if key in options:
                generation[field] = options[key]
        if "media_resolution" in options:
            generation["mediaResolution"] = "MEDIA_RESOLUTION_" + str(options["media_resolution"]).upper()
        elif any(part.kind == "video" for part in request.media):
            generation["mediaResolution"] = "MEDIA_RESOLUTION_LOW"  # a clip's frames: low detail is plenty
        if request.schema is not None:
            generation["responseMimeType"] = "application/json"
            generation["responseSchema"] = response_schema(request.schema)
        body: dict[str, Any] = {
            "contents": [{"role": "user", "parts": [*media_parts(request), {"text": request.prompt}]}],
            "generationConfig": generation,
        }
        if request.system:
            body["systemInstruction"] = {"parts": [{"text": request.system}]}
        return body


# The JSON-schema keywords Gemini's `responseSchema` (an OpenAPI 3.0 subset) takes.
SCHEMA_KEYWORDS = ("type", "description", "enum", "format", "nullable", "items", "properties", "required",
                   "minItems", "maxItems", "minimum", "maximum")


def response_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON schema as Gemini's `responseSchema`: upper-case types, the keywords
    it knows (others, such as additionalProperties, it refuses), and the
    properties in the order given, so a title comes before its description."""
    converted: dict[str, Any] = {}
    for key in SCHEMA_KEYWORDS:
        if key not in schema:
            continue
        value = schema[key]
        if key == "type" and isinstance(value, str):
            value = value.upper()
        elif key == "items" and isinstance(value, Mapping):
            value = response_schema(value)
        elif key == "properties" and isinstance(value, Mapping):
            value = {name: response_schema(field) for name, field in value.items() if isinstance(field, Mapping)}
        converted[key] = value
    if isinstance(converted.get("properties"), dict):
        converted["propertyOrdering"] = list(converted["properties"])
    return converted


def media_parts(request: CaptionRequest) -> list[dict[str, Any]]:
    """The clip itself (inline, or by its Files API URI) with the frame rate to
    look at, else the image(s)."""
    fps = float(request.options.get("video_fps", DEFAULT_VIDEO_FPS))
    for part in request.media:
        if part.kind == "video":
            if part.uri:
                source: dict[str, Any] = {"file_data": {"mime_type": part.mime_type, "file_uri": part.uri}}
            else:
                source = {"inline_data": {"mime_type": part.mime_type,
                                          "data": base64.b64encode(part.data).decode("ascii")}}
            return [{**source, "video_metadata": {"fps": fps}}]
    return [{"inline_data": {"mime_type": "image/jpeg", "data": data}} for data in images_base64(request)]


def api_base() -> str:
    base = (os.environ.get("GEMINI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
    if not re.search(r"/v1(beta|alpha)?\d*$", base):
        base += "/v1beta"
    return base


def _key_header(key: str | None) -> dict[str, str]:
    return {"x-goog-api-key": key} if key else {}


async def upload_file(client: httpx.AsyncClient, data: bytes | str, mime_type: str, key: str | None
                      ) -> dict[str, Any]:
    """The Files API's resumable upload: start (the server answers with an upload
    URL), then send the bytes (or stream the file at that path) and finalize.
    Returns the file resource."""
    size = os.path.getsize(data) if isinstance(data, str) else len(data)
    base = api_base()
    root = re.sub(r"/v1(beta|alpha)?\d*$", "", base)
    version = base[len(root):]
    start = await client.post(
        f"{root}/upload{version}/files",
        headers={**_key_header(key), "X-Goog-Upload-Protocol": "resumable", "X-Goog-Upload-Command": "start",
                 "X-Goog-Upload-Header-Content-Length": str(size),
                 "X-Goog-Upload-Header-Content-Type": mime_type, "content-type": "application/json"},
        content=json.dumps({"file": {"display_name": "captioner clip"}}),
    )
    upload_url = start.headers.get("x-goog-upload-url")
    if start.status_code != 200 or not upload_url:
        raise map_error(start) if start.status_code != 200 else ProviderError("Files API gave no upload URL",
                                                                             retryable=True)
    done = await client.post(upload_url, content=_file_chunks(data) if isinstance(data, str) else data,
                             headers={**_key_header(key), "X-Goog-Upload-Offset": "0", "Content-Length": str(size),
                                      "X-Goog-Upload-Command": "upload, finalize"})
    if done.status_code != 200:
        raise map_error(done)
    file = as_dict(parse_json(done.content).get("file"))
    if not isinstance(file.get("name"), str):
        raise ProviderError("Files API upload answered without a file name", retryable=True)
    return file


async def _file_chunks(path: str) -> AsyncIterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            yield chunk


async def wait_until_active(client: httpx.AsyncClient, file: dict[str, Any], key: str | None) -> dict[str, Any]:
    """Poll the uploaded file until Gemini has processed it (state ACTIVE)."""
    for _ in range(FILE_POLL_LIMIT):
        if file.get("state") == "ACTIVE" and isinstance(file.get("uri"), str):
            return file
        if file.get("state") == "FAILED":
            raise ProviderError(f"Gemini could not process the uploaded clip ({file.get('error')})")
        await asyncio.sleep(FILE_POLL_SECONDS)
        response = await client.get(f"{api_base()}/{file['name']}", headers=_key_header(key))
        if response.status_code != 200:
            raise map_error(response)
        file = {**file, **as_dict(parse_json(response.content))}
    raise ProviderError("the uploaded clip was still processing after the wait", retryable=True)


@hookimpl
def register_models(register: Callable[[Model], None]) -> None:
    for name in LISTED:
        register(GeminiModel(name))


@hookimpl
def model_for_name(name: str) -> Model | None:
    return GeminiModel(name, listed=False) if re.match(r"^(models/)?(gemini|gemma)-", name) else None


BATCH_ENDED = {"BATCH_STATE_SUCCEEDED", "BATCH_STATE_FAILED", "BATCH_STATE_CANCELLED", "BATCH_STATE_EXPIRED",
               "JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED",
               "BATCH_STATE_PARTIALLY_SUCCEEDED"}
INLINE_BATCH_BYTES = 20 * 1024 * 1024


class GeminiBatch:
    """Gemini's Batch Mode: requests inline in the create call while they stay
    under 20 MB, else a JSONL file uploaded through the Files API; the job is a
    long-running operation named by its display name (our tag)."""

    max_requests = 1_000_000
    max_bytes = 1900 * 1024 * 1024  # under the 2 GB input-file limit

    def __init__(self, model: GeminiModel) -> None:
        self.model = model

    def line(self, request: CaptionRequest, custom_id: str) -> dict[str, Any]:
        return {"key": custom_id, "request": self.model.build_body(request)}

    async def create(self, client: httpx.AsyncClient, lines: Any, count: int, tag: str, key: str | None) -> str:
        url = f"{api_base()}/models/{self.model.model_id}:batchGenerateContent"
        if os.path.getsize(lines) <= INLINE_BATCH_BYTES:
            with open(lines, encoding="utf-8") as fh:
                requests = [{"request": line["request"], "metadata": {"key": line["key"]}}
                            for line in map(json.loads, fh)]
            config: dict[str, Any] = {"requests": {"requests": requests}}
        else:
            uploaded = await upload_file(client, str(lines), "application/jsonl", key)  # streamed from disk
            config = {"file_name": uploaded["name"]}
        operation = answer_json(await client.post(
            url, headers=self.model.request_headers(key),
            content=json.dumps({"batch": {"display_name": tag, "input_config": config}})), map_error)
        if not isinstance(operation.get("name"), str):
            raise ProviderError("the batch job was created without a name")
        return operation["name"]

    async def find(self, client: httpx.AsyncClient, tag: str, count: int, since: str, key: str | None
                   ) -> str | None:
        response = await client.get(f"{api_base()}/batches", headers=self.model.request_headers(key))
        listing = answer_json(response, map_error)
        for operation in map(as_dict, as_list(listing.get("operations") or listing.get("batches"))):
            metadata = as_dict(operation.get("metadata"))
            if metadata.get("displayName") == tag and isinstance(operation.get("name"), str):
                return operation["name"]
        return None

    async def poll(self, client: httpx.AsyncClient, batch_id: str, key: str | None) -> BatchStatus:
        operation = answer_json(await client.get(f"{api_base()}/{batch_id}",
                                                      headers=self.model.request_headers(key)), map_error)
        metadata = as_dict(operation.get("metadata"))
        state = str(metadata.get("state"))
        # int64 counts arrive as strings ("requestCount": "100").
        counts = {k: int(v) for k, v in as_dict(metadata.get("batchStats")).items() if str(v).isdigit()}
        error = as_dict(operation.get("error")).get("message")
        done = bool(operation.get("done")) or state in BATCH_ENDED
        return BatchStatus(done, state, counts, str(error) if error and state.endswith("FAILED") else None)

    async def results(self, client: httpx.AsyncClient, batch_id: str, key: str | None
                      ) -> AsyncIterator[ItemResult]:
        operation = answer_json(await client.get(f"{api_base()}/{batch_id}",
                                                      headers=self.model.request_headers(key)), map_error)
        response = as_dict(operation.get("response"))
        inline = as_dict(response.get("inlinedResponses")).get("inlinedResponses")
        for entry in map(as_dict, as_list(inline)):
            yield self._item(entry, str(as_dict(entry.get("metadata")).get("key")))
        responses_file = response.get("responsesFile")
        if isinstance(responses_file, str):
            root = re.sub(r"/v1(beta|alpha)?\d*$", "", api_base())
            version = api_base()[len(root):]
            async for line in jsonl_lines(client, f"{root}/download{version}/{responses_file}:download",
                                          self.model.request_headers(key), map_error, params={"alt": "media"}):
                yield self._item(line or {}, str((line or {}).get("key")))

    @staticmethod
    def _item(entry: dict[str, Any], custom_id: str) -> ItemResult:
        if "response" in entry:
            try:
                return ItemResult(custom_id, ANSWERED, parse_response(entry["response"]))
            except ProviderError as exc:
                return ItemResult(custom_id, ERRORED, error=exc.message)
        error = as_dict(entry.get("error"))
        return ItemResult(custom_id, ERRORED, error=f"code {error.get('code')}: {error.get('message', '')}")

    async def cancel(self, client: httpx.AsyncClient, batch_id: str, key: str | None) -> None:
        response = await client.post(f"{api_base()}/{batch_id}:cancel", headers=self.model.request_headers(key))
        answer_json(response, map_error)
