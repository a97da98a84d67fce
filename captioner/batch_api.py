"""What a provider's batch API looks like to captioner (a plugin implements it
for its wire format; `batch_mode` drives it).

A batch job is submitted now and collected later at half price. The protocol
is small: write one input line per request, create the job from the file of
lines (tagged, so a job whose create call lost its answer can be found again),
poll it, read its per-item results, cancel it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from .answers import parse_json
from .models import CaptionRequest, CaptionResult, ProviderError, as_dict

# Per-item outcomes as providers report them.
ANSWERED, ERRORED, EXPIRED, CANCELLED = "answered", "errored", "expired", "cancelled"


@dataclass(frozen=True)
class BatchStatus:
    done: bool  # no more results will come
    status: str  # the provider's own word for it
    counts: dict[str, int] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class ItemResult:
    custom_id: str
    outcome: str  # ANSWERED, ERRORED, EXPIRED or CANCELLED
    result: CaptionResult | None = None
    error: str | None = None


class BatchAPI(Protocol):
    """A provider's batch API. Limits are per job."""

    max_requests: int
    max_bytes: int

    def line(self, request: CaptionRequest, custom_id: str) -> dict[str, Any]:
        """One input line: the request in this provider's batch input shape."""

    async def create(self, client: httpx.AsyncClient, lines: Path, count: int, tag: str, key: str | None) -> str:
        """Submit the lines as one job; the provider's job id."""

    async def find(self, client: httpx.AsyncClient, tag: str, count: int, since: str, key: str | None
                   ) -> str | None:
        """The job created with this tag (or, where a provider keeps no tag, with this
        many requests since `since`), if the provider has one: for a create call whose
        answer was lost."""

    async def poll(self, client: httpx.AsyncClient, batch_id: str, key: str | None) -> BatchStatus: ...

    def results(self, client: httpx.AsyncClient, batch_id: str, key: str | None) -> AsyncIterator[ItemResult]:
        """Every item result the job has (in any order; some may be missing)."""

    async def cancel(self, client: httpx.AsyncClient, batch_id: str, key: str | None) -> None: ...


class BatchUnavailable(Exception):
    """The model's provider has no batch API."""


async def jsonl_lines(client: httpx.AsyncClient, url: str, headers: dict[str, str],
                      map_error: Callable[[httpx.Response], Exception], params: dict[str, str] | None = None
                      ) -> AsyncIterator[dict[str, Any] | None]:
    """The lines of a JSONL results file, read as they stream in (None for a line that is not JSON)."""
    async with client.stream("GET", url, headers=headers, params=params) as response:
        if response.status_code != 200:
            await response.aread()
            raise map_error(response)
        async for text in response.aiter_lines():
            if text.strip():
                try:
                    yield as_dict(parse_json(text))
                except ProviderError:
                    yield None


def answer_json(response: httpx.Response, map_error: Callable[[httpx.Response], Exception]) -> dict[str, Any]:
    """A batch endpoint's JSON answer, or the provider's error for a non-200."""
    if response.status_code != 200:
        raise map_error(response)
    return as_dict(parse_json(response.content))
