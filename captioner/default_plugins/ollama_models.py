"""Ollama's native API (`POST /api/chat`). Names: `ollama/NAME`.

`OLLAMA_HOST` is a bare `host:port` or a URL (default 127.0.0.1:11434).
Local models cost $0 unless priced in the user's price file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import httpx

from captioner.answers import parse_json
from captioner.hookspecs import hookimpl
from captioner.http_model import HTTPModel, images_base64
from captioner.models import (
    FAILED,
    CaptionRequest,
    CaptionResult,
    Model,
    ProviderError,
    empty_caption_error,
    error_body,
    error_for_status,
)
from captioner.options import MAX_TOKENS, SEED, TEMPERATURE, TOP_K, TOP_P, VIDEO_FRAMES, Option

DEFAULT_HOST = "127.0.0.1:11434"
# Image tokens differ per vision model family; llava's CLIP encoder uses 576.
IMAGE_TOKENS = {"gemma3": 256, "llava": 576, "bakllava": 576, "moondream": 729, "llama3.2-vision": 1601,
                "qwen2.5vl": 1024, "minicpm-v": 640}
DEFAULT_IMAGE_TOKENS = 576
OPTIONS = (
    MAX_TOKENS, TEMPERATURE, TOP_P, TOP_K, SEED, VIDEO_FRAMES,
    Option("num_ctx", "int", "Context window the server allocates", minimum=256, maximum=1048576),
    Option("repeat_penalty", "float", "Penalise repeated tokens", minimum=0, maximum=10),
    Option("keep_alive", "str", "How long the server keeps the model loaded (e.g. 5m, 0)", shapes_answer=False),
)


def ollama_base_url() -> str:
    host = (os.environ.get("OLLAMA_HOST") or DEFAULT_HOST).strip().rstrip("/")
    if "://" not in host:
        host = "http://" + host
    scheme, rest = host.split("://", 1)
    if ":" not in rest.split("/", 1)[0]:
        rest = rest.replace("/", ":11434/", 1) if "/" in rest else rest + ":11434"
    return f"{scheme}://{rest}"


def map_error(response: httpx.Response, name: str) -> ProviderError:
    _, message = error_body(response)
    if response.status_code == 404 or "not found" in message.lower():
        return ProviderError(f"model {name!r} not found on the Ollama server: run `ollama pull {name}`", fatal=True,
                             status_code=response.status_code)
    return error_for_status(response, message)


def parse_response(body: Any) -> CaptionResult:
    """A /api/chat body (text): one JSON object, or NDJSON lines if the server streamed anyway."""
    text = str(body)
    lines = [parse_json(line) for line in text.splitlines() if line.strip()]
    if not lines or not all(isinstance(line, dict) for line in lines):
        raise ProviderError("empty response from Ollama", retryable=True)
    for line in lines:
        if line.get("error"):
            raise ProviderError(f"Ollama error: {line['error']}", retryable=False)
    final = lines[-1]
    if not final.get("done", True):
        raise ProviderError("Ollama response ended before done", retryable=True)
    messages = [line.get("message") for line in lines]
    content = "".join(m["content"] for m in messages if isinstance(m, dict) and isinstance(m.get("content"), str))
    usage = {k: final[k] for k in ("prompt_eval_count", "eval_count", "total_duration", "done_reason") if k in final}
    result = CaptionResult(
        text=content.strip() or None,
        input_tokens=final.get("prompt_eval_count"),
        output_tokens=final.get("eval_count"),
        usage=usage or None,
    )
    if not result.text:
        result.status = FAILED
        reason = final.get("done_reason")
        result.error = empty_caption_error(reason == "length", f"done_reason {reason}")
    return result


class OllamaModel(HTTPModel):
    provider = "local"
    needs_key = False
    key_env = ()
    accepted_options = OPTIONS
    structured_output = True
    parse_body = staticmethod(parse_response)

    def __init__(self, name: str, listed: bool = True) -> None:
        self.name = name
        self.model_id = f"ollama/{name}"
        self.listed = listed

    def image_tokens(self, width: int, height: int, options: Mapping[str, Any]) -> int:
        family = self.name.split(":", 1)[0]
        return IMAGE_TOKENS.get(family, DEFAULT_IMAGE_TOKENS)

    def endpoint(self) -> str:
        return ollama_base_url() + "/api/chat"

    def connection_hint(self) -> str | None:
        return f"is Ollama running at {ollama_base_url()}? start it with `ollama serve`, or set OLLAMA_HOST"

    def build_body(self, request: CaptionRequest) -> dict[str, Any]:
        options = self.typed_options(request)
        messages: list[dict[str, Any]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.append({"role": "user", "content": request.prompt, "images": images_base64(request)})
        model_options = {"num_predict": self.max_output_tokens(options)}
        model_options.update({k: v for k, v in options.items()
                              if k not in ("max_tokens", "keep_alive", "video_frames")})
        body = {"model": self.name, "messages": messages, "stream": False, "options": model_options}
        if "keep_alive" in options:
            body["keep_alive"] = options["keep_alive"]
        if request.schema is not None:
            body["format"] = dict(request.schema)  # Ollama's structured outputs: the schema itself
        return body

    def read_body(self, response: httpx.Response) -> Any:
        return response.text  # one JSON object, or NDJSON lines if the server streamed anyway

    def map_error(self, response: httpx.Response) -> ProviderError:
        return map_error(response, self.name)


@hookimpl
def model_for_name(name: str) -> Model | None:
    if name.startswith("ollama/") and len(name) > len("ollama/"):
        return OllamaModel(name.split("/", 1)[1], listed=False)
    return None


@hookimpl
def discover_models() -> list[Model]:
    """The models installed on the Ollama server, if one answers quickly."""
    try:
        response = httpx.get(ollama_base_url() + "/api/tags", timeout=1.5)
        response.raise_for_status()
        names = [m["name"] for m in response.json().get("models", []) if m.get("name")]
    except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
        return []
    models: list[Model] = []
    for name in names:
        model = OllamaModel(name)
        model.sees_images = takes_images(name)
        models.append(model)
    return models


VISION_NAMES = ("llava", "vision", "moondream", "minicpm-v", "qwen2.5vl", "qwen2-vl", "qwen3-vl", "gemma3",
                "granite3.2-vision", "mistral-small3", "llama4")


def takes_images(name: str) -> bool:
    """Whether an installed Ollama model takes images: its `capabilities` (Ollama 0.6+),
    else what its name says."""
    try:
        response = httpx.post(ollama_base_url() + "/api/show", json={"model": name}, timeout=1.5)
        capabilities = response.json().get("capabilities") if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        capabilities = None
    if isinstance(capabilities, list):
        return "vision" in capabilities
    return any(part in name.lower() for part in VISION_NAMES)
