"""Sending one request: a slot under the adaptive concurrency limit, the
optional requests-per-minute cap, and retries with backoff. The answer is a
small outcome type, so the caller never has to read a three-way value:

    Answer      the provider answered (the result may still be a refusal)
    NoAnswer    no usable answer after the last retry, or a final error;
                `maybe_billed` when the last attempt may have been paid for
                (it timed out or its answer could not be read)
    NotSent     the run stopped before the request went out (or before a retry),
                or a fatal fault stopped it (the control records why)

Every answer passes `answers.checked` and every error `answers.redact`, and
each attempt has one total deadline (`--timeout`), not only a per-read one, so
a server that trickles bytes cannot hold a request for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Union

import httpx

from .answers import checked, redact
from .control import RunControl
from .models import CaptionRequest, CaptionResult, Model, ProviderError
from .pool import EndpointPool

log = logging.getLogger("captioner")


@dataclass(frozen=True)
class Answer:
    result: CaptionResult
    duration_ms: int


@dataclass(frozen=True)
class NoAnswer:
    error: str
    maybe_billed: bool = False


@dataclass(frozen=True)
class NotSent:
    pass


SendOutcome = Union[Answer, NoAnswer, NotSent]  # noqa: UP007 (a runtime alias on Python 3.10)


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 4
    timeout: float = 120.0
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    retry_after_cap: float = 300.0


class AdaptiveLimit:
    """Concurrency that halves on rate limits and creeps back up (AIMD)."""

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.limit = float(maximum)
        self.active = 0
        self._changed = asyncio.Condition()

    async def __aenter__(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.active < int(self.limit))
            self.active += 1

    async def __aexit__(self, *exc: object) -> None:
        async with self._changed:
            self.active -= 1
            self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[str | None]:
        """A request slot (no endpoint choice: the model's own base URL is used)."""
        async with self:
            yield None

    def rate_limited(self, url: str | None = None) -> None:
        self.limit = max(1.0, self.limit / 2)

    def succeeded(self, url: str | None = None, latency_ms: int | None = None) -> None:
        # Waiters re-check the limit whenever a slot is released, so raising it needs no wake-up.
        self.limit = min(float(self.maximum), self.limit + 1.0 / self.limit)

    def failed(self, url: str | None = None) -> None:
        """One server: nothing to drain."""


class RateCap:
    """At most `rpm` request starts per minute, spaced evenly."""

    def __init__(self, rpm: float | None) -> None:
        self.interval = 60.0 / rpm if rpm else 0.0
        self.next_at = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self._lock:
            now = time.monotonic()
            if self.next_at > now:
                await asyncio.sleep(self.next_at - now)
            self.next_at = max(now, self.next_at) + self.interval


def backoff_delay(attempt: int, base: float, cap: float, retry_after: float | None, retry_after_cap: float) -> float:
    """Full-jitter exponential backoff, unless the server said how long to wait."""
    if retry_after is not None:
        return min(retry_after, retry_after_cap)
    return random.uniform(0, min(cap, base * (2**attempt)))


class ClientPool:
    """One httpx client per request in flight, all sharing one SSL context.

    httpx's connection pool walks every pooled connection on each request, so
    one client holding 64 connections spends most of a fast request's CPU on
    bookkeeping; a client that holds one connection does not. The run's slots
    (`AdaptiveLimit` or the endpoint pool) still bound the requests in flight,
    so there are never more clients than slots."""

    def __init__(self, timeout: httpx.Timeout) -> None:
        self.timeout = timeout
        self.ssl_context = httpx.create_ssl_context()
        self.limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        self.free: list[httpx.AsyncClient] = []
        self.all: list[httpx.AsyncClient] = []

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[httpx.AsyncClient]:
        client = self.free.pop() if self.free else self._new()
        try:
            yield client
        finally:
            self.free.append(client)

    def _new(self) -> httpx.AsyncClient:
        client = httpx.AsyncClient(timeout=self.timeout, limits=self.limits, verify=self.ssl_context)
        self.all.append(client)
        return client

    async def aclose(self) -> None:
        for client in self.all:
            await client.aclose()

    async def __aenter__(self) -> ClientPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class Sender:
    """Sends requests for one model through one client, with retries."""

    def __init__(
        self,
        model: Model,
        client: httpx.AsyncClient | ClientPool,
        control: RunControl,
        policy: RetryPolicy,
        limit: AdaptiveLimit | EndpointPool,
        rate: RateCap,
        on_retry: Callable[[], None] = lambda: None,
    ) -> None:
        self.model = model
        self.client = client
        self.control = control
        self.policy = policy
        self.limit = limit
        self.rate = rate
        self.on_retry = on_retry

    async def send(self, request: CaptionRequest,
                   before_first: Callable[[], Awaitable[bool]] | None = None) -> SendOutcome:
        """Send with retries. `before_first` runs once a slot is held, just
        before the first attempt (the budget's reservation); False: not sent."""
        policy = self.policy
        last_error = "unknown error"
        maybe_billed = False
        attempt = 0
        max_output = self.model.max_output_tokens(request.options)
        schema = json.dumps(request.schema) if request.schema is not None else None
        for attempt in range(policy.retries + 1):
            if attempt:
                if self.control.stopping:
                    return NotSent()  # not answered and not retried: tried again next run
                self.on_retry()
            retry_after = None
            async with self.limit.slot() as url:
                await self.rate.wait()
                if attempt == 0 and (self.control.stopping or
                                     (before_first is not None and not await before_first())):
                    return NotSent()
                started = time.monotonic()
                maybe_billed = False
                sent = dataclasses.replace(request, base_url=url) if url else request
                try:
                    async with self._client() as client:
                        result = await asyncio.wait_for(self.model.caption(sent, client), policy.timeout)
                    answer = Answer(checked(result, max_output, schema), int((time.monotonic() - started) * 1000))
                    self.limit.succeeded(url, answer.duration_ms)
                    return answer
                except ProviderError as exc:
                    message = redact(exc.message, request.key)
                    if exc.fatal:
                        self.control.fatal(f"{self.model.model_id}: {message}")
                        return NotSent()
                    last_error = message
                    # An unreadable 200 may have been billed; an error status was not.
                    maybe_billed = exc.status_code is None
                    if not exc.retryable:
                        break
                    if exc.status_code == 429:
                        self.limit.rate_limited(url)
                    elif exc.status_code is not None and exc.status_code >= 500:
                        self.limit.failed(url)
                    retry_after = exc.retry_after
                except (httpx.TimeoutException, asyncio.TimeoutError):
                    last_error = f"timed out after {policy.timeout:g}s"
                    maybe_billed = True
                except httpx.TransportError as exc:
                    self.limit.failed(url)
                    last_error = redact(self._connection_error(exc), request.key)
                    maybe_billed = not isinstance(exc, httpx.ConnectError)  # never connected: never billed
                except Exception as exc:  # a plugin's own bug must not end the run
                    last_error = redact(f"{self.model.model_id} failed: {exc.__class__.__name__}: {exc}",
                                        request.key)[:300]
                    break
            if attempt < policy.retries:
                log.info("retrying after: %s", last_error)
                await asyncio.sleep(
                    backoff_delay(attempt, policy.backoff_base, policy.backoff_cap, retry_after,
                                  policy.retry_after_cap)
                )
        attempts = f" (after {attempt + 1} attempts)" if attempt else ""
        return NoAnswer(last_error + attempts, maybe_billed)

    def _client(self) -> contextlib.AbstractAsyncContextManager[httpx.AsyncClient]:
        """A client of its own for this request (from a ClientPool), or the one shared client."""
        if isinstance(self.client, ClientPool):
            return self.client.lease()
        return contextlib.nullcontext(self.client)

    def _connection_error(self, exc: httpx.TransportError) -> str:
        """Which URL failed and, where the model knows one, the likely fix."""
        try:
            url = f" to {exc.request.url.copy_with(query=None)}"
        except RuntimeError:
            url = ""
        hint = self.model.connection_hint()
        return f"connection error{url}: {exc.__class__.__name__}: {exc}" + (f" ({hint})" if hint else "")
