"""The one place that checks what a provider sent back.

Plugins parse their wire format; whatever they return (or raise) passes
through here before the ledger prices and stores it. A body too large, nested
too deep or of the wrong shape becomes a `ProviderError` with a one-line
reason; token counts that are not plausible token counts (negative, huge,
fractional, strings, NaN, booleans) are dropped with a note instead of being
priced, so a hostile or broken server can neither crash a run nor invent a
bill.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from typing import Any

from .models import CaptionResult, ProviderError

# Far above any real answer (a caption is a few hundred bytes; a streamed one a few KB).
MAX_BODY_BYTES = 8 * 1024 * 1024
# More than any request could be billed: 10M input tokens, 1M output tokens.
MAX_INPUT_TOKENS = 10_000_000
from .defaults import MAX_OUTPUT_TOKENS  # noqa: E402

# A caption longer than this is cut (the column is for captions, not dumps).
MAX_CAPTION_CHARS = 100_000
MAX_ERROR_CHARS = 500


def parse_json(data: bytes | str) -> Any:
    """JSON from a response body; garbage, deep nesting or a bad encoding is a
    retryable fault (a truncated or mangled body says nothing about the image)."""
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProviderError(f"malformed response body from server ({exc.__class__.__name__})",
                            retryable=True) from exc


def token_count(value: Any, maximum: int) -> int | None:
    """`value` if it is a plausible token count, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
        return None
    if not 0 <= value <= maximum:
        return None
    return int(value)


def checked(result: Any, max_output_tokens: int | None = None, schema: str | None = None) -> CaptionResult:
    """A plugin's result with its fields made safe to price and store.

    A result that is not a CaptionResult at all is a malformed answer. Token
    counts that are not plausible are dropped (the answer is kept, unpriced,
    with a note in `error`); so is an output count above what the request
    allowed, which a server should never bill. An answer to a request with a
    schema is read against it (`captioner.schema.read_answer`).
    """
    if not isinstance(result, CaptionResult):
        raise ProviderError(f"the model returned {type(result).__name__}, not a CaptionResult")
    notes: list[str] = []
    fields: dict[str, Any] = {}
    for name, maximum in (("input_tokens", MAX_INPUT_TOKENS), ("output_tokens", MAX_OUTPUT_TOKENS),
                          ("reasoning_tokens", MAX_OUTPUT_TOKENS)):
        value = getattr(result, name)
        count = token_count(value, maximum)
        if value is not None and count is None:
            notes.append(f"{name}={_short(value)}")
        fields[name] = count
    for name in ("cache_read_tokens", "cache_write_tokens", "audio_tokens"):
        fields[name] = token_count(getattr(result, name), MAX_INPUT_TOKENS) or 0
    output = fields["output_tokens"]
    if max_output_tokens is not None and output is not None and output > max_output_tokens * 2 + 100:
        notes.append(f"output_tokens={output:,} for a request capped at {max_output_tokens:,}")
    if notes:
        # The provider's numbers cannot be trusted: price nothing rather than something invented.
        fields.update(input_tokens=None, output_tokens=None, reasoning_tokens=None)
    text = result.text if isinstance(result.text, str) else None
    if text is not None and len(text) > MAX_CAPTION_CHARS:
        text = text[:MAX_CAPTION_CHARS]
    error = result.error if isinstance(result.error, str) else None
    if notes:
        note = "implausible usage from the server, not priced: " + ", ".join(notes)
        error = f"{error}; {note}" if error else note
    if error is not None:
        error = error[:MAX_ERROR_CHARS]
    usage = result.usage if isinstance(result.usage, dict) else None
    if result.usage is not None and usage is None:
        note = f"usage is not an object ({_short(result.usage)}), not priced"
        error = f"{error}; {note}" if error else note
    safe = replace(result, text=text, error=error, usage=_json_safe(usage), data=None, **fields)
    if schema is None:
        return safe
    from .schema import read_answer

    return read_answer(safe, schema)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _json_safe(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """The usage as stored in `usage_json`: strict JSON, at most 10 KB."""
    if usage is None:
        return None
    try:
        text = json.dumps(usage, allow_nan=False, default=str)
    except (ValueError, RecursionError):
        return {"unreadable_usage": _short(usage)}
    if len(text) > 10_000:
        return {"truncated_usage": text[:200]}
    return usage


KEY_SHAPED = re.compile(r"\b(sk-[A-Za-z0-9_\-]{8,}|AIza[A-Za-z0-9_\-]{20,}|sk-ant-[A-Za-z0-9_\-]{8,})")


def redact(text: str, key: str | None = None) -> str:
    """`text` with the key (and anything shaped like an API key) replaced, for
    errors that are stored, printed or logged."""
    if key and len(key) >= 4:
        text = text.replace(key, "[redacted]")
    return KEY_SHAPED.sub("[redacted]", text)
