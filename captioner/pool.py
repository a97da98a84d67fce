"""A pool of OpenAI-compatible endpoints (vLLM, SGLang, llama.cpp, LM Studio replicas).

Each endpoint has its own adaptive concurrency limit; each request goes to the
endpoint with the most free room; an endpoint that fails (connection refused,
repeated 5xx) is drained for a while and tried again later, and the request is
retried on another. The pool keeps how many requests each endpoint answered and
how fast, for the summary and the `runs` row.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx

# Consecutive failures that drain an endpoint, and how long it rests before it is tried again.
FAILURES_TO_DRAIN = 2
DRAIN_SECONDS = 2.0


@dataclass
class Endpoint:
    url: str
    maximum: int
    limit: float = 0.0
    active: int = 0
    failures: int = 0
    down_until: float = 0.0
    answered: int = 0
    latencies_ms: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.limit = float(self.maximum)

    def room(self) -> float:
        return int(self.limit) - self.active

    def up(self) -> bool:
        return time.monotonic() >= self.down_until


class EndpointPool:
    """Concurrency across several endpoints (the same interface as `send.AdaptiveLimit`)."""

    def __init__(self, urls: list[str], concurrency_each: int) -> None:
        self.endpoints = [Endpoint(url.rstrip("/"), concurrency_each) for url in urls]
        self._changed = asyncio.Condition()

    @property
    def maximum(self) -> int:
        return sum(e.maximum for e in self.endpoints)

    @property
    def limit(self) -> float:
        return sum(e.limit for e in self.endpoints if e.up())

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[str | None]:
        async with self._changed:
            while True:
                up = [e for e in self.endpoints if e.up() and e.room() > 0]
                if up:
                    chosen = max(up, key=lambda e: (e.room() / e.maximum, e.room()))
                    chosen.active += 1
                    break
                # All busy or drained: wait for a release, or for the first drained one to rest.
                rest = min((e.down_until for e in self.endpoints if not e.up()), default=None)
                timeout = None if rest is None else max(0.01, rest - time.monotonic())
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout)
        try:
            yield chosen.url
        finally:
            async with self._changed:
                chosen.active -= 1
                self._changed.notify_all()

    def _endpoint(self, url: str | None) -> Endpoint | None:
        return next((e for e in self.endpoints if e.url == url), None)

    def succeeded(self, url: str | None = None, latency_ms: int | None = None) -> None:
        endpoint = self._endpoint(url)
        if endpoint is not None:
            endpoint.failures = 0
            endpoint.answered += 1
            if latency_ms is not None:
                endpoint.latencies_ms.append(latency_ms)
            endpoint.limit = min(float(endpoint.maximum), endpoint.limit + 1.0 / endpoint.limit)

    def rate_limited(self, url: str | None = None) -> None:
        endpoint = self._endpoint(url)
        if endpoint is not None:
            endpoint.limit = max(1.0, endpoint.limit / 2)

    def failed(self, url: str | None = None) -> None:
        """A connection failure or a 5xx: after a few in a row the endpoint rests."""
        endpoint = self._endpoint(url)
        if endpoint is not None:
            endpoint.failures += 1
            if endpoint.failures >= FAILURES_TO_DRAIN:
                endpoint.down_until = time.monotonic() + DRAIN_SECONDS

    def stats(self) -> dict[str, dict[str, float | int | None]]:
        return {e.url: {"answered": e.answered,
                        "median_ms": statistics.median(e.latencies_ms) if e.latencies_ms else None}
                for e in self.endpoints}


def check_models(urls: list[str], model: str, key: str | None, timeout: float = 10.0) -> str | None:
    """Ask each endpoint `GET /models`; the one-line reason the run cannot start, or None."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    for url in urls:
        try:
            response = httpx.get(url.rstrip("/") + "/models", headers=headers, timeout=timeout)
            served = [m.get("id") for m in response.json().get("data", []) if isinstance(m, dict)]
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            return f"{url} does not answer GET /models ({exc.__class__.__name__})"
        if model not in served:
            return f"{url} does not serve {model} (it serves: {', '.join(map(str, served)) or 'nothing'})"
    return None
