"""Ollama's native API (`POST /api/chat`). Names: `ollama/NAME`.

`OLLAMA_HOST` is a bare `host:port` or a URL (default 127.0.0.1:11434).
Local models cost $0 unless priced in the user's price file.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any, Mapping

import httpx

from captioner.hookspecs import hookimpl
from captioner.models import (
    FAILED,
    CaptionRequest,
    CaptionResult,
    empty_caption_error,
    error_body,
    error_for_status,
    Model,
    option_value,
    ProviderError,
)

DEFAULT_HOST = "127.0.0.1:11434"
# Image tokens differ per vision model family; llava's CLIP encoder uses 576.
IMAGE_TOKENS = {"gemma3": 256, "llava": 576, "bakllava": 576, "moondream": 729, "llama3.2-vision": 1601,
                "qwen2.5vl": 1024, "minicpm-v": 640}
DEFAULT_IMAGE_TOKENS = 576
OPTION_NAMES = {"max_tokens": "num_predict"}


def ollama_base_url() -> str:
    host = (os.environ.get("OLLAMA_HOST") or DEFAULT_HOST).strip().rstrip("/")
    if "://" not in host:
        host = "http://" + host
    scheme, rest = host.split("://", 1)
    if ":" not in rest.split("/", 1)[0]:
        rest = rest.replace("/", ":11434/", 1) if "/" in rest else rest + ":11434"
    return f"{scheme}://{rest}"


class OllamaModel(Model):
    provider = "local"
    needs_key = False
    key_env = ()

    def __init__(self, name: str, listed: bool = True) -> None:
        self.name = name
        self.model_id = f"ollama/{name}"
        self.listed = listed

    def image_tokens(self, width: int, height: int, options: Mapping[str, str]) -> int:
        family = self.name.split(":", 1)[0]
        return IMAGE_TOKENS.get(family, DEFAULT_IMAGE_TOKENS)

    def build_body(self, request: CaptionRequest) -> dict[str, Any]:
        messages: list[dict[str, Any]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.append(
            {"role": "user", "content": request.prompt, "images": [base64.b64encode(request.jpeg).decode("ascii")]}
        )
        options = {"num_predict": self.max_output_tokens(request.options)}
        for key, value in request.options.items():
            if key != "max_tokens":
                options[OPTION_NAMES.get(key, key)] = option_value(value)
        return {"model": self.name, "messages": messages, "stream": False, "options": options}

    async def caption(self, request: CaptionRequest, client: httpx.AsyncClient) -> CaptionResult:
        response = await client.post(
            ollama_base_url() + "/api/chat",
            content=json.dumps(self.build_body(request)),
            headers={"content-type": "application/json"},
        )
        if response.status_code != 200:
            raise map_error(response, self.name)
        return parse_response(response.text)


def map_error(response: httpx.Response, name: str) -> ProviderError:
    body, message = error_body(response)
    if response.status_code == 404 or "not found" in message.lower():
        return ProviderError(f"model {name!r} not found on the Ollama server: run `ollama pull {name}`", fatal=True,
                             status_code=response.status_code)
    return error_for_status(response, message)


def parse_response(text: str) -> CaptionResult:
    """A /api/chat body: one JSON object, or NDJSON lines if the server streamed anyway."""
    try:
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise ProviderError("malformed response from Ollama", retryable=True) from exc
    if not lines or not all(isinstance(line, dict) for line in lines):
        raise ProviderError("empty response from Ollama", retryable=True)
    for line in lines:
        if line.get("error"):
            raise ProviderError(f"Ollama error: {line['error']}", retryable=False)
    final = lines[-1]
    if not final.get("done", True):
        raise ProviderError("Ollama response ended before done", retryable=True)
    content = "".join((line.get("message") or {}).get("content", "") for line in lines)
    usage = {k: final[k] for k in ("prompt_eval_count", "eval_count", "total_duration", "done_reason") if k in final}
    result = CaptionResult(
        text=content.strip() or None,
        input_tokens=final.get("prompt_eval_count"),
        output_tokens=final.get("eval_count"),
        usage=usage or None,
    )
    if not result.text:
        result.status = FAILED
        result.error = empty_caption_error(final.get("done_reason") == "length", f"done_reason {final.get('done_reason')}")
    return result


@hookimpl
def model_for_name(name: str):
    if name.startswith("ollama/") and len(name) > len("ollama/"):
        return OllamaModel(name.split("/", 1)[1], listed=False)
    return None


@hookimpl
def discover_models():
    """The models installed on the Ollama server, if one answers quickly."""
    try:
        response = httpx.get(ollama_base_url() + "/api/tags", timeout=1.5)
        response.raise_for_status()
        names = [m["name"] for m in response.json().get("models", []) if m.get("name")]
    except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
        return []
    return [OllamaModel(name) for name in names]
