"""The plugin API: what a model is, what it is asked, what it answers, how it fails.

A plugin module registers `Model` objects through the `register_models` hook
(see `captioner.plugins`). The core only ever talks to models through this
module's types, so it never needs to import a provider by name.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .options import Option, validate

if TYPE_CHECKING:  # httpx is imported by the commands that send, not by `--help` or `search`
    import httpx

# Outcomes a caption row can have (the `captions.status` column).
OK = "ok"
REFUSED = "refused"
BLOCKED = "blocked"
FAILED = "failed"
# A structured answer (--schema) that is not JSON or not valid against the
# schema: paid for, its raw text kept in `caption`, retried only with --retry-failed.
MALFORMED = "malformed"
# Outcomes that are failures (counted as failed, retried with --retry-failed).
FAILURES = (FAILED, MALFORMED)

# Output cap sent with every request unless `-o max_tokens N` says otherwise;
# it also bounds the worst-case cost that `--max-cost` reserves.
DEFAULT_MAX_TOKENS = 400


@dataclass(frozen=True)
class CaptionRequest:
    """One image and the words that go with it, ready to send.

    `options` are the `-o` values as given (strings), already checked against
    the model's declared options. The key and the image bytes stay out of
    `repr`, so a logged request never shows a secret or a megabyte of JPEG.
    """

    jpeg: bytes = field(repr=False)
    width: int
    height: int
    prompt: str
    system: str | None = None
    options: Mapping[str, str] = field(default_factory=dict)
    key: str | None = field(default=None, repr=False)
    # For a video clip: `jpeg` is its contact sheet (what any model can take);
    # `media` holds the clip itself or its frames, for models that declare they
    # take them (`Model.accepts_video`, `Model.max_images`).
    media: tuple[Any, ...] = ()
    # Which of several endpoints serves this request (an endpoint pool sets it).
    base_url: str | None = None
    # A JSON schema the answer must follow (--schema), asked for through the
    # provider's own structured-output mechanism; None for a plain caption.
    schema: Mapping[str, Any] | None = None

    def __repr__(self) -> str:
        return (f"CaptionRequest(jpeg=<{len(self.jpeg):,} bytes>, width={self.width}, height={self.height}, "
                f"prompt={self.prompt[:60]!r}, system={self.system!r}, options={dict(self.options)!r}, "
                f"media={list(self.media)!r}, schema={'<set>' if self.schema else None}, "
                f"key={'<set>' if self.key else None})")


@dataclass
class CaptionResult:
    """What came back: the text, the billed tokens and the outcome.

    `output_tokens` is everything billed as output, reasoning included;
    `reasoning_tokens` says how much of it was reasoning.
    """

    text: str | None
    input_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    audio_tokens: int = 0  # of the input, how many were audio (billed at the audio rate)
    usage: dict[str, Any] | None = None
    status: str = OK
    error: str | None = None
    # A structured answer's object (set by `captioner.schema.read_answer`).
    data: dict[str, Any] | None = None


class ProviderError(Exception):
    """A request that did not produce a caption.

    retryable: worth sending again (rate limit, overload, 5xx, timeout).
    fatal: would fail every image the same way (bad key, unknown model, no quota),
           so the run stops instead of burning through the folder.
    retry_after: seconds the provider asked us to wait, if it said.
    usage: billed usage if the provider charged for the failed request.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        fatal: bool = False,
        retry_after: float | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.fatal = fatal
        self.retry_after = retry_after
        self.status_code = status_code


class Model:
    """Base class for a vision model. Subclasses set the class attributes and
    implement `caption`.

    model_id      the name users pass to `-m`
    aliases       other names for the same model
    provider      the provider id used for pricing (genai-prices id, or "local")
    key_name      the name under which `captioner keys set` stores its key
    key_env       environment variables that may hold the key, in order
    needs_key     False for local servers
    max_side      preferred long side of the image in pixels
    listed        shown by `captioner models` (unlisted models can still be used)
    batch_discount  multiplier on the price through the provider's batch API, if it has one
    accepted_options  the `-o` options this model takes (`captioner.options.Option`);
                    None (the default) accepts any key unchecked, as plugins did before
    structured_output  answers in a JSON schema given as `CaptionRequest.schema`
    schema_overhead_tokens  input tokens the provider adds to a request that has a schema
    """

    model_id: str = ""
    aliases: tuple[str, ...] = ()
    provider: str = ""
    key_name: str | None = None
    key_env: tuple[str, ...] = ()
    needs_key: bool = True
    max_side: int = 1024
    listed: bool = True
    batch_discount: float | None = None
    accepted_options: Sequence[Option] | None = None
    accepts_video: bool = False  # takes a video clip itself (else frames are sent)
    max_images: int = 1  # images one request may carry
    structured_output: bool = False
    schema_overhead_tokens: int = 0
    request_timeout: float | None = None  # seconds one request may take when --timeout is not given
    sees_images: bool = True  # False for a discovered server model that cannot take an image
    in_process: bool = False  # runs in this process (weights on disk), not on a server

    def endpoints(self) -> list[str]:
        """Several base URLs serving this model (an endpoint pool), or [] for one fixed server."""
        return []

    def batch_api(self) -> Any:
        """The provider's batch API (`captioner.batch_api.BatchAPI`), or None if it has none."""
        return None

    def video_tokens(self, duration_s: float, has_audio: bool, options: Mapping[str, Any]) -> tuple[int, int]:
        """(input tokens, of which audio) the provider bills for a clip it watches itself."""
        raise NotImplementedError

    def validate_options(self, given: Mapping[str, str]) -> dict[str, Any]:
        """Typed option values; `OptionError` for an unknown key or a bad value."""
        return validate(self.model_id, self.accepted_options, given)

    def image_tokens(self, width: int, height: int, options: Mapping[str, str]) -> int:
        """Input tokens the provider bills for an image of this (prepared) size."""
        raise NotImplementedError

    def prepare_to_run(self, announce: Any) -> None:
        """Called once before a run reads any photo: an in-process model makes sure its
        weights are on disk. Raises ProviderError (fatal) with a one-line reason."""

    def ready_offline(self) -> bool:
        """Runs right now with no key and nothing to download (the keyless default may pick it)."""
        return False

    def connection_hint(self) -> str | None:
        """What to check when the server cannot be reached (local servers say how to start them)."""
        return None

    def max_output_tokens(self, options: Mapping[str, Any]) -> int:
        """The output cap a request is sent with (what the budget reserves for)."""
        return int(options.get("max_tokens", DEFAULT_MAX_TOKENS))

    async def caption(self, request: CaptionRequest, client: httpx.AsyncClient) -> CaptionResult:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.model_id}>"


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `Retry-After` as seconds or an HTTP date."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
            if math.isfinite(value) and value >= 0:
                return value
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        value = float(raw)
        return value if math.isfinite(value) and value >= 0 else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def error_for_status(
    response: httpx.Response,
    message: str,
    *,
    fatal_hint: bool = False,
    retry_after: float | None = None,
) -> ProviderError:
    """The common mapping of an HTTP status to retryable / final / fatal.

    Plugins read their provider's error body for `message` and for cases the
    status alone cannot tell (a 429 that is really an exhausted quota is
    `fatal_hint=True`).
    """
    status = response.status_code
    if retry_after is None:
        retry_after = parse_retry_after(response.headers)
    text = f"HTTP {status}: {message}"
    if fatal_hint:
        return ProviderError(text, fatal=True, status_code=status)
    if status in (408, 409, 425, 429) or status >= 500:
        return ProviderError(text, retryable=True, retry_after=retry_after, status_code=status)
    # 401/403: the key is wrong for every image; 404: the model or endpoint does not exist.
    fatal = status in (401, 403, 404)
    return ProviderError(text, fatal=fatal, status_code=status)


def error_body(response: httpx.Response) -> tuple[Any, str]:
    """An error response's JSON body (None if it is not JSON) and its human message."""
    try:
        body = response.json()
    except ValueError:
        body = None
    return body, error_message(body, response.text[:200] or response.reason_phrase)


def empty_caption_error(output_limit_reached: bool, reason: str) -> str:
    """Why a billed answer had no caption in it."""
    if output_limit_reached:
        return "empty caption: the output token limit was used up (raise -o max_tokens)"
    return f"empty caption ({reason})"


def error_message(body: Any, fallback: str) -> str:
    """Pull the human message out of the usual `{"error": {"message": ...}}` shapes."""
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("error")
            if isinstance(msg, str) and msg:
                return msg
        if isinstance(err, str) and err:
            return err
    if isinstance(body, list) and body:
        return error_message(body[0], fallback)
    return fallback


def sse_payloads(text: str) -> list[Any]:
    """The JSON `data:` payloads of a server-sent-events body, in order
    (comments, event names and the `[DONE]` marker skipped)."""
    payloads = []
    for line in text.splitlines():
        if line.startswith("data:"):
            data = line[5:].strip()
            if data and data != "[DONE]":
                try:
                    payloads.append(json.loads(data))
                except json.JSONDecodeError as exc:
                    raise ProviderError("malformed event stream from server", retryable=True) from exc
    return payloads


def is_event_stream(response: httpx.Response) -> bool:
    return response.headers.get("content-type", "").startswith("text/event-stream")


def as_dict(value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object, else {}: a parser reads a wrongly typed part as empty."""
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    """`value` if it is a JSON array, else []."""
    return value if isinstance(value, list) else []


def usage_dict(body: Any, key: str) -> dict[str, Any]:
    """`body[key]` when it is an object, else {} (a parser must not crash on an odd usage)."""
    return as_dict(as_dict(body).get(key))


def add_tokens(*values: Any) -> Any:
    """The sum of token counts that may be missing (None). An odd value (a
    string, a list) is passed through as it is, so the answer check flags it
    instead of the parser crashing on it."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    odd = next((v for v in present if isinstance(v, bool) or not isinstance(v, (int, float))), None)
    return odd if odd is not None else sum(present)
