"""Step 3: the batch engine. scan -> prepare (threads) -> caption (async) -> store.

Workers take files from the scanned to-do list, prepare them in a thread pool,
send them through an adaptive concurrency limit with retries, and hand every
answer to the store at once (a billed response is never held back). The event
loop is the only thread that writes SQLite.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import httpx

from . import pricing
from .estimate import input_tokens
from .media import ImageError, PreparedImage, prepare_image, read_file
from .models import FAILED, OK, CaptionRequest, CaptionResult, Model, ProviderError
from .scan import Found, Skipped, scan
from .store import CLAIMED, DONE, Store

DEFAULT_PROMPT = (
    "Describe this photo in one or two factual sentences: the main subject, the setting, "
    "and any legible text. Do not speculate."
)
# If this many requests fail in a row before any succeeds, the fault is the
# run's (wrong URL, bad option), not the images': stop instead of trying them all.
EARLY_FAILURE_LIMIT = 3
# The budget reserves more input than estimated, so an estimate that is a bit
# low (framing tokens, tokenizer differences) cannot take spending over --max-cost.
BUDGET_INPUT_MARGIN = 1.25


@dataclass
class RunSettings:
    prompt: str = DEFAULT_PROMPT
    system: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    key: str | None = None
    max_side: int | None = None
    concurrency: int = 8
    limit: int | None = None
    force: bool = False
    retry_failed: bool = False
    max_cost: float | None = None
    retries: int = 4
    timeout: float = 120.0
    connect_timeout: float = 10.0
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    retry_after_cap: float = 300.0
    rpm: float | None = None
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    prepare_threads: int = max(2, os.cpu_count() or 2)


@dataclass
class RunSummary:
    run_id: int
    model: str
    status: str = "completed"
    ok: int = 0
    failed: int = 0
    refused: int = 0
    skipped_done: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    not_sent: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    unpriced: int = 0
    retries: int = 0
    message: str | None = None

    @property
    def captioned(self) -> int:
        return self.ok + self.failed + self.refused

    def to_dict(self) -> dict[str, Any]:
        answered = self.ok + self.refused
        per_1000 = self.cost_usd / answered * 1000 if answered else 0.0
        return {
            "run_id": self.run_id,
            "model": self.model,
            "status": self.status,
            "ok": self.ok,
            "failed": self.failed,
            "refused_or_blocked": self.refused,
            "skipped_done": self.skipped_done,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "failures": [{"path": p, "error": e} for p, e in self.failures],
            "not_sent": self.not_sent,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": round(self.cost_usd, 8),
            "cost_per_1000_images": round(per_1000, 6),
            "unpriced": self.unpriced,
            "retries": self.retries,
            "message": self.message,
        }


class FatalRunError(Exception):
    """A fault that would fail every image: the run stops."""


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

    def rate_limited(self) -> None:
        self.limit = max(1.0, self.limit / 2)

    def succeeded(self) -> None:
        # Waiters re-check the limit whenever a slot is released, so raising it needs no wake-up.
        self.limit = min(float(self.maximum), self.limit + 1.0 / self.limit)


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


class Budget:
    """`--max-cost`: every request reserves its worst-case cost before it is
    sent; the reservation is swapped for the real cost when it returns."""

    def __init__(self, max_cost: float | None) -> None:
        self.max_cost = max_cost
        self.spent = 0.0
        self.reserved = 0.0

    def reserve(self, amount: float) -> bool:
        if self.max_cost is None:
            return True
        if self.spent + self.reserved + amount > self.max_cost:
            return False
        self.reserved += amount
        return True

    def settle(self, reserved: float, actual: float | None) -> None:
        if self.max_cost is not None:
            self.reserved -= reserved
        self.spent += actual or 0.0


def backoff_delay(attempt: int, base: float, cap: float, retry_after: float | None, retry_after_cap: float) -> float:
    """Full-jitter exponential backoff, unless the server said how long to wait."""
    if retry_after is not None:
        return min(retry_after, retry_after_cap)
    return random.uniform(0, min(cap, base * (2**attempt)))


class Runner:
    """One `captioner caption` run."""

    def __init__(
        self,
        store: Store,
        model: Model,
        settings: RunSettings,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.store = store
        self.model = model
        self.settings = settings
        self.progress = progress or (lambda update: None)
        self.max_side = settings.max_side or model.max_side
        self.user_prices = pricing.load_user_prices()
        self.budget = Budget(settings.max_cost)
        self.stopping = False
        self.fatal: str | None = None
        self.pending_failures: list[tuple[int, str, CaptionResult, int]] = []
        self.inflight: dict[str, asyncio.Future] = {}
        self.finished_shas: set[str] = set()  # content handled in this run, even with --force

    # -- planning ----------------------------------------------------------

    def plan(self, roots: Sequence[str]) -> tuple[list[Found], RunSummary]:
        """Scan the roots; return what needs captioning and a summary holding what was skipped."""
        s = self.settings
        done = (
            None
            if s.force
            else self.store.done_index(self.model.model_id, s.prompt, retry_failed=s.retry_failed)
        )
        self.done = done
        self.run_id = self.store.start_run(self.model.model_id, s.prompt, self._run_options())
        summary = RunSummary(self.run_id, self.model.model_id)
        todo: list[Found] = []
        for item in scan(roots, s.include, s.exclude, done.path_done if done else None):
            if isinstance(item, Skipped):
                if item.reason == "done":
                    summary.skipped_done += 1
                else:
                    summary.skipped.append((item.path, item.reason))
            else:
                todo.append(item)
        if s.limit is not None and len(todo) > s.limit:
            summary.not_sent += len(todo) - s.limit
            todo = todo[: s.limit]
        return todo, summary

    def _run_options(self) -> dict[str, Any]:
        s = self.settings
        return {
            "system": s.system,
            "options": s.options,
            "max_side": self.max_side,
            "concurrency": s.concurrency,
            "max_cost": s.max_cost,
        }

    # -- running -----------------------------------------------------------

    def run(self, todo: list[Found], summary: RunSummary) -> RunSummary:
        try:
            asyncio.run(self._run_all(todo, summary))
        finally:
            self._flush_pending(summary)
            self.store.release_all()
            totals = self.store.finish_run(self.run_id, summary.status, len(todo) + summary.skipped_done)
            summary.unpriced = totals["unpriced"]
        return summary

    async def _run_all(self, todo: list[Found], summary: RunSummary) -> None:
        s = self.settings
        self.limit = AdaptiveLimit(s.concurrency)
        self.rate = RateCap(s.rpm)
        self.summary = summary
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(max_workers=s.prepare_threads, thread_name_prefix="prepare")
        timeout = httpx.Timeout(s.timeout, connect=s.connect_timeout)
        limits = httpx.Limits(max_connections=s.concurrency, max_keepalive_connections=s.concurrency)
        queue = iter(todo)
        tasks: list[asyncio.Task] = []
        interrupts = 0

        def on_interrupt() -> None:
            nonlocal interrupts
            interrupts += 1
            self.stopping = True
            summary.status = "interrupted"
            if interrupts == 1:
                self.progress({"message": "stopping: waiting for requests in flight (Ctrl-C again to abandon them)"})
            else:
                for task in tasks:
                    task.cancel()

        try:
            loop.add_signal_handler(signal.SIGINT, on_interrupt)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
        try:
            async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
                # More workers than request slots, so images are being prepared
                # while the slots are busy waiting on the network.
                workers = s.concurrency + s.prepare_threads
                tasks = [
                    asyncio.create_task(self._worker(queue, client, executor, loop))
                    for _ in range(workers)
                ]
                results = await asyncio.gather(*tasks, return_exceptions=True)
                for result in results:
                    if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                        raise result
        finally:
            try:
                loop.remove_signal_handler(signal.SIGINT)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
            executor.shutdown(wait=True, cancel_futures=True)
        summary.not_sent += sum(1 for _ in queue)
        if self.fatal:
            summary.status = "failed"
            summary.message = self.fatal

    async def _worker(self, queue, client, executor, loop) -> None:
        for found in queue:
            if self.stopping:
                self.summary.not_sent += 1
                continue
            try:
                await self._one(found, client, executor, loop)
            except FatalRunError as exc:
                if not self.fatal:
                    self.fatal = str(exc)
                self.stopping = True

    async def _one(self, found: Found, client, executor, loop) -> None:
        s, summary = self.settings, self.summary
        model_id = self.model.model_id
        try:
            data, sha = await loop.run_in_executor(executor, read_file, found.path)
        except OSError as exc:
            summary.skipped.append((found.path, f"cannot read: {exc.strerror or exc}"))
            return
        # Same content at another path (or being captioned right now): not paid for twice.
        if sha in self.inflight:
            await asyncio.shield(self.inflight[sha])
        if sha in self.finished_shas or (not s.force and self.done and sha in self.done.shas):
            outcome = DONE
        else:
            outcome = self.store.claim(sha, model_id, s.prompt, retry_failed=s.retry_failed, force=s.force)
        if outcome != CLAIMED:
            self.store.save_image(found.path, sha, found.size, found.mtime)
            if outcome == DONE:
                summary.skipped_done += 1
            else:
                summary.skipped.append((found.path, "being captioned by another captioner process"))
            self.progress({"advance": 1})
            return
        finished = loop.create_future()
        self.inflight[sha] = finished
        try:
            await self._caption_new(found, data, sha, client, executor, loop)
        finally:
            del self.inflight[sha]
            self.finished_shas.add(sha)
            finished.set_result(None)
            self.store.release(sha, model_id, s.prompt)

    async def _caption_new(self, found: Found, data: bytes, sha: str, client, executor, loop) -> None:
        s, summary = self.settings, self.summary
        try:
            prepared: PreparedImage = await loop.run_in_executor(executor, prepare_image, data, self.max_side)
        except ImageError as exc:
            image_id = self.store.save_image(found.path, sha, found.size, found.mtime)
            self._store_result(image_id, found.path, CaptionResult(text=None, status=FAILED, error=str(exc)), None)
            return
        del data
        image_id = self.store.save_image(found.path, sha, found.size, found.mtime, prepared)
        if self.stopping:
            summary.not_sent += 1
            return
        estimated = input_tokens(self.model, prepared.sent_width, prepared.sent_height, s.options, s.prompt, s.system)
        reserve = self._worst_case_cost(estimated)
        if not self.budget.reserve(reserve):
            self.stopping = True
            if summary.status == "completed":
                summary.status = "budget"
                summary.message = f"stopped before exceeding --max-cost ${s.max_cost:g}"
            summary.not_sent += 1
            return
        request = CaptionRequest(
            jpeg=prepared.jpeg,
            width=prepared.sent_width,
            height=prepared.sent_height,
            prompt=s.prompt,
            system=s.system,
            options=s.options,
            key=s.key,
        )
        sent = await self._send(request, client)
        if sent is None:  # the run stopped while this image waited for a slot
            summary.not_sent += 1
            self.budget.settle(reserve, 0.0)
            return
        result, duration_ms = sent
        if duration_ms is None:
            cost = self._hold_or_store(image_id, found.path, result, estimated)
        else:
            cost = self._store_result(image_id, found.path, result, duration_ms, estimated)
        self.budget.settle(reserve, cost)

    def _worst_case_cost(self, estimated_input_tokens: int) -> float:
        """Estimated input with a safety margin, and the full output allowance."""
        if self.settings.max_cost is None:
            return 0.0
        cost = pricing.price_request(
            self.model,
            int(estimated_input_tokens * BUDGET_INPUT_MARGIN) + 50,
            self.model.max_output_tokens(self.settings.options),
            user_prices=self.user_prices,
        )
        return cost.cost_usd or 0.0

    async def _send(self, request: CaptionRequest, client) -> tuple[CaptionResult, int | None] | None:
        """Send with retries. Returns the result and its duration (None: failed
        after the last retry), None if the run stopped before it was sent, or
        raises FatalRunError when no image could succeed."""
        s = self.settings
        last_error = "unknown error"
        for attempt in range(s.retries + 1):
            if attempt:
                self.summary.retries += 1
                self.progress({"retry": 1})
            retry_after = None
            async with self.limit:
                await self.rate.wait()
                if self.stopping and attempt == 0:
                    return None
                started = time.monotonic()
                try:
                    result = await self.model.caption(request, client)
                    self.limit.succeeded()
                    return result, int((time.monotonic() - started) * 1000)
                except ProviderError as exc:
                    if exc.fatal:
                        raise FatalRunError(f"{self.model.model_id}: {exc.message}") from exc
                    last_error = exc.message
                    if not exc.retryable:
                        break
                    if exc.status_code == 429:
                        self.limit.rate_limited()
                    retry_after = exc.retry_after
                except httpx.TimeoutException:
                    last_error = f"timed out after {s.timeout:g}s"
                except httpx.TransportError as exc:
                    last_error = f"connection error: {exc.__class__.__name__}: {exc}"
            if attempt < s.retries and not self.stopping:
                await asyncio.sleep(
                    backoff_delay(attempt, s.backoff_base, s.backoff_cap, retry_after, s.retry_after_cap)
                )
            elif self.stopping:
                break
        attempts = f" (after {attempt + 1} attempts)" if attempt else ""
        return CaptionResult(text=None, status=FAILED, error=last_error + attempts), None

    # -- recording ---------------------------------------------------------

    def _hold_or_store(self, image_id: int, path: str, result: CaptionResult, estimated: int) -> float | None:
        """A request that got no answer. Until one request has worked, such a
        failure may be the run's fault rather than the image's: hold it back,
        and stop the run if the first few all fail."""
        if self.summary.ok:
            return self._store_result(image_id, path, result, None, estimated)
        self.pending_failures.append((image_id, path, result, estimated))
        if len(self.pending_failures) >= EARLY_FAILURE_LIMIT:
            self.pending_failures.clear()
            raise FatalRunError(
                f"the first {EARLY_FAILURE_LIMIT} requests to {self.model.model_id} all failed: {result.error}"
            )
        return None

    def _store_result(self, image_id: int, path: str, result: CaptionResult, duration_ms: int | None,
                      estimated: int | None = None) -> float | None:
        summary = self.summary
        cost = None
        price_in = price_out = None
        if result.input_tokens is not None or result.output_tokens is not None:
            request_cost = pricing.price_request(
                self.model,
                result.input_tokens or 0,
                result.output_tokens or 0,
                cache_read_tokens=result.cache_read_tokens,
                cache_write_tokens=result.cache_write_tokens,
                user_prices=self.user_prices,
            )
            cost, price_in, price_out = request_cost.cost_usd, request_cost.price_in_per_m, request_cost.price_out_per_m
            summary.input_tokens += result.input_tokens or 0
            summary.output_tokens += result.output_tokens or 0
            summary.cost_usd += cost or 0.0
        self.store.save_caption(
            image_id=image_id,
            run_id=self.run_id,
            model=self.model.model_id,
            prompt=self.settings.prompt,
            result=result,
            cost_usd=cost,
            price_in_per_m=price_in,
            price_out_per_m=price_out,
            duration_ms=duration_ms,
            estimated_input_tokens=estimated,
        )
        if result.status == OK:
            summary.ok += 1
            if self.pending_failures:
                self._flush_pending(summary)
        elif result.status == FAILED:
            summary.failed += 1
            summary.failures.append((path, result.error or "failed"))
        else:
            summary.refused += 1
            summary.failures.append((path, result.error or result.status))
        self.progress({"advance": 1, "cost": summary.cost_usd, "concurrency": int(self.limit.limit)})
        return cost

    def _flush_pending(self, summary: RunSummary) -> None:
        pending, self.pending_failures = self.pending_failures, []
        if self.fatal:
            return  # the run's fault, not the images': leave them to be tried again
        for image_id, path, result, estimated in pending:
            self._store_result(image_id, path, result, None, estimated)


def caption_paths(
    roots: Sequence[str],
    model: Model,
    store: Store,
    settings: RunSettings,
    progress_factory: Callable[[int], Callable[[dict[str, Any]], None]] | None = None,
) -> RunSummary:
    """Plan and run one captioning job; the CLI's single entry point."""
    runner = Runner(store, model, settings)
    todo, summary = runner.plan(roots)
    if progress_factory is not None:
        runner.progress = progress_factory(len(todo))
    return runner.run(todo, summary)
