"""Structured answers: what `--schema` asks for, and reading what comes back.

A schema is given in `llm`'s concise syntax (`title, description,
keywords: list[str], alt_text`) or as a JSON schema (inline, or a `.json`
file). Either way it becomes a JSON schema whose top level is an object,
because every provider's structured-output mechanism (OpenAI `response_format`,
Anthropic tool input, Gemini `responseSchema`, Ollama `format`) wants one.

What comes back is checked here, once, whatever the provider: it must be JSON
and valid against the schema. A valid answer keeps the whole object in
`CaptionResult.data` and its description (else its alt text, title, or the
JSON itself) as the caption; anything else is recorded `malformed`, with the
raw text kept.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from dataclasses import replace
from typing import Any

from .models import MALFORMED, OK, CaptionResult

SCALAR_TYPES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}
FIELD = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:\s+(?P<type>[A-Za-z_\[\]]+))?\s*(?::\s*(?P<rest>.*))?$")
LIST_TYPE = re.compile(r"^list\[(?P<item>str|int|float|bool)\]$")
# Fields whose text makes a good caption, in order of preference.
CAPTION_FIELDS = ("description", "caption", "alt_text", "title")
KEYWORD_FIELDS = ("keywords", "tags", "subject")
MAX_KEYWORDS = 200


class SchemaError(ValueError):
    """A --schema that cannot be used; the message says why, in one line."""


def canonical(schema: dict[str, Any]) -> str:
    """The schema as stable text: what a recipe's identity and the database hold."""
    return json.dumps(schema, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def parse_schema(spec: str) -> dict[str, Any]:
    """A JSON schema from concise syntax, inline JSON, or a path to a JSON file."""
    text = spec.strip()
    if not text:
        raise SchemaError("--schema is empty")
    if text.startswith("{"):
        return _json_schema(text, "the --schema JSON")
    if text.endswith(".json") or os.path.isfile(text):
        try:
            with open(text, encoding="utf-8") as fh:
                return _json_schema(fh.read(), text)
        except OSError as exc:
            raise SchemaError(f"cannot read schema file {text}: {exc.strerror or exc}") from exc
    return concise_schema(text)


def schema_from_value(value: Any, where: str) -> dict[str, Any]:
    """A schema given in a template: concise text, or a JSON schema as a mapping."""
    if isinstance(value, str):
        return parse_schema(value)
    if isinstance(value, dict):
        return _checked_schema(value, where)
    raise SchemaError(f"{where}: schema must be concise text or a JSON schema object")


def _json_schema(text: str, where: str) -> dict[str, Any]:
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise SchemaError(f"{where} is not valid JSON ({exc})") from exc
    return _checked_schema(schema, where)


def _checked_schema(schema: Any, where: str) -> dict[str, Any]:
    if not isinstance(schema, dict) or schema.get("type") != "object" or not isinstance(
            schema.get("properties"), dict) or not schema["properties"]:
        raise SchemaError(f"{where} must be a JSON schema with \"type\": \"object\" and at least one property")
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError as InvalidSchema

    try:
        Draft202012Validator.check_schema(schema)
    except InvalidSchema as exc:
        raise SchemaError(f"{where} is not a valid JSON schema: {exc.message}") from exc
    return schema


def concise_schema(spec: str) -> dict[str, Any]:
    """`llm`'s concise syntax: fields separated by commas (or newlines), each
    `name [type][: description]`; types str (default), int, float, bool and
    list[...] of those. `name: list[str]` also reads as a type, as people write it."""
    separator = "\n" if "\n" in spec else ","
    properties: dict[str, Any] = {}
    for raw in spec.split(separator):
        item = raw.strip()
        if not item:
            continue
        match = FIELD.match(item)
        if match is None:
            raise SchemaError(f"cannot read schema field {item!r} (write name, name int, or name: description)")
        name, kind, rest = match["name"], match["type"], (match["rest"] or "").strip()
        if kind is None and rest and _type_of(rest) is not None:
            kind, rest = rest, ""
        if name in properties:
            raise SchemaError(f"schema field {name!r} is given twice")
        field = _type_of(kind or "str")
        if field is None:
            raise SchemaError(f"unknown type {kind!r} for schema field {name!r} "
                              "(use str, int, float, bool or list[str])")
        if rest:
            field = {**field, "description": rest}
        properties[name] = field
    if not properties:
        raise SchemaError("--schema names no fields")
    return {"type": "object", "properties": properties, "required": list(properties),
            "additionalProperties": False}


def _type_of(name: str) -> dict[str, Any] | None:
    if name in SCALAR_TYPES:
        return {"type": SCALAR_TYPES[name]}
    match = LIST_TYPE.match(name)
    if match:
        return {"type": "array", "items": {"type": SCALAR_TYPES[match["item"]]}}
    return None


def strict_compatible(schema: dict[str, Any]) -> bool:
    """Whether OpenAI's strict mode takes this schema as it is: every object
    closed and every property required."""
    if schema.get("type") == "object":
        properties = schema.get("properties") or {}
        if schema.get("additionalProperties") is not False or set(schema.get("required") or ()) != set(properties):
            return False
        return all(strict_compatible(p) for p in properties.values() if isinstance(p, dict))
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        return strict_compatible(schema["items"])
    return True


def extra_output_tokens(schema: str | None) -> int:
    """Output a structured answer adds beside a plain caption: key names and
    punctuation for every field, and the words of the fields other than the description."""
    if not schema:
        return 0
    properties = json.loads(schema).get("properties") or {}
    extra = 0
    for name, field in properties.items():
        extra += math.ceil(len(name) / 4) + 4
        if name in ("description", "caption"):
            continue
        kind = field.get("type") if isinstance(field, dict) else None
        extra += {"array": 40, "string": 30, "object": 40}.get(kind if isinstance(kind, str) else "", 3)
    return extra


def read_answer(result: CaptionResult, schema: str) -> CaptionResult:
    """A structured answer checked against its schema: valid, it keeps the object
    in `data` and its best text as the caption; otherwise it is `malformed`, its
    raw text kept. Refusals and failures pass through unchanged."""
    if result.status != OK or result.text is None:
        return result
    raw = result.text
    try:
        data = json.loads(_unfenced(raw))
    except (ValueError, RecursionError):
        return replace(result, status=MALFORMED, error="malformed structured answer: not JSON")
    errors = sorted(_validator(schema).iter_errors(data), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.path) or "the answer"
        return replace(result, status=MALFORMED,
                       error=f"malformed structured answer: {where}: {first.message}"[:300])
    caption = next((data[f].strip() for f in CAPTION_FIELDS if isinstance(data.get(f), str) and data[f].strip()),
                   None) or ", ".join(keywords_of(data))
    return replace(result, text=caption or json.dumps(data, ensure_ascii=False), data=data)


@functools.lru_cache(maxsize=32)
def _validator(schema: str) -> Any:
    """The validator of one schema, built once per run, not once per answer."""
    from jsonschema import Draft202012Validator

    return Draft202012Validator(json.loads(schema))


def _unfenced(text: str) -> str:
    """The JSON inside a ```json fence, which some local models add even when asked for JSON."""
    stripped = text.strip()
    match = re.match(r"^```(?:json)?\s*(.*?)\s*```$", stripped, re.DOTALL)
    return match.group(1) if match else stripped


def title_of(data: dict[str, Any] | None) -> str | None:
    value = (data or {}).get("title")
    return value.strip() or None if isinstance(value, str) else None


def alt_text_of(data: dict[str, Any] | None) -> str | None:
    value = (data or {}).get("alt_text")
    return value.strip() or None if isinstance(value, str) else None


def keywords_of(data: dict[str, Any] | None) -> list[str]:
    """The answer's keywords, trimmed, without repeats (case-insensitive), in the model's order."""
    for name in KEYWORD_FIELDS:
        value = (data or {}).get(name)
        if isinstance(value, list):
            seen: dict[str, str] = {}
            for item in value:
                if isinstance(item, str) and item.strip():
                    seen.setdefault(item.strip().casefold(), item.strip()[:200])
            return list(seen.values())[:MAX_KEYWORDS]
    return []
