"""The ledger: records every answer the moment it arrives and keeps the run's
summary. A billed answer is priced and committed at once, so a crash or a kill
never loses what was paid for.

Failures with no answer are held back until the first request succeeds (the
run control decides whether the run, not the image, was at fault); `close`
records them unless the run was.

Writes go through the run's `write` function (one writer thread, so a slow
database never stalls the event loop). When the database refuses a billed
answer (disk full, locked too long), the answer goes to the recovery file,
which the next run stores.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import pricing
from .control import RunControl
from .models import FAILED, FAILURES, OK, CaptionResult, Model
from .recipe import Recipe
from .report import RunSummary
from .scan import Found
from .store import Store, WriteFailed

log = logging.getLogger("captioner")
Progress = Callable[[dict[str, Any]], None]
# A run this small prints its captions at the end; a larger one says where to look.
SHOWN_ANSWERS = 20
Write = Callable[..., Awaitable[Any]]


async def write_now(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A write on the calling thread (for tests and tools that need no writer thread)."""
    return fn(*args, **kwargs)


@dataclass
class HeldFailure:
    image_id: int
    path: str
    error: str
    estimated: int | None
    recipe: Recipe | None = None


@dataclass(frozen=True)
class PhotoFile:
    """What the recovery file needs to store an answer without the images row."""

    path: str
    sha256: str
    size: int
    mtime: float


class Ledger:
    def __init__(
        self,
        store: Store,
        model: Model,
        recipe: Recipe,
        summary: RunSummary,
        control: RunControl,
        user_prices: dict[str, Any] | None = None,
        progress: Progress = lambda update: None,
        concurrency: Callable[[], int | None] = lambda: None,
        write: Write = write_now,
    ) -> None:
        self.store = store
        self.model = model
        self.recipe = recipe
        self.summary = summary
        self.control = control
        self.user_prices = user_prices
        self.progress = progress
        self.concurrency = concurrency
        self.write = write
        self.held: list[HeldFailure] = []
        self.files: dict[int, PhotoFile] = {}
        self.recovery_files: set[Path] = set()
        self.kept_for_recovery = 0
        self.lost = 0

    def know_file(self, image_id: int, file: PhotoFile) -> None:
        """Remember an image's file facts, in case its answer must go to the recovery file."""
        self.files[image_id] = file

    async def record(self, image_id: int, path: str, result: CaptionResult, duration_ms: int | None,
                     estimated: int | None = None, recipe: Recipe | None = None) -> float | None:
        """Price, store and count one result. Returns its cost (None if unpriced or unbilled)."""
        summary = self.summary
        cost = price_in = price_out = None
        if result.input_tokens is not None or result.output_tokens is not None:
            request_cost = pricing.price_request(
                self.model,
                result.input_tokens or 0,
                result.output_tokens or 0,
                cache_read_tokens=result.cache_read_tokens,
                cache_write_tokens=result.cache_write_tokens,
                user_prices=self.user_prices,
                audio_tokens=result.audio_tokens,
            )
            cost, price_in, price_out = request_cost.cost_usd, request_cost.price_in_per_m, request_cost.price_out_per_m
            summary.input_tokens += result.input_tokens or 0
            summary.output_tokens += result.output_tokens or 0
            summary.cost_usd += cost or 0.0
        row = {
            "run_id": summary.run_id,
            **(recipe or self.recipe).columns(),
            "cost_usd": cost,
            "price_in_per_m": price_in,
            "price_out_per_m": price_out,
            "duration_ms": duration_ms,
            "estimated_input_tokens": estimated,
        }
        try:
            await self.write(self.store.save_caption, image_id=image_id, result=result, **row)
        except WriteFailed:
            self._keep_for_recovery(image_id, result, row)
        self.files.pop(image_id, None)  # stored (or kept for recovery): its file facts are not needed again
        log.info("%s: %s, %s input / %s output tokens, %s, %s ms%s", path, result.status, result.input_tokens,
                 result.output_tokens, "unpriced" if cost is None else f"${cost:.6f}", duration_ms,
                 f" ({result.error})" if result.error else "")
        if len(summary.answers) <= SHOWN_ANSWERS:
            summary.answers.append((path, result.status, result.text if result.status == OK else result.error))
        if result.status == OK:
            summary.ok += 1
            self.control.answered_ok()
            await self._record_held()
        elif result.status in FAILURES:
            summary.failed += 1
            summary.failures.append((path, result.error or "failed"))
        else:
            summary.refused += 1
            summary.failures.append((path, result.error or result.status))
        self.progress({"advance": 1, "cost": summary.cost_usd, "concurrency": self.concurrency()})
        return cost

    def _keep_for_recovery(self, image_id: int, result: CaptionResult, row: dict[str, Any]) -> None:
        if result.input_tokens is None and result.output_tokens is None:
            return  # nothing was paid for: the photo is simply tried again next run
        file = self.files.get(image_id)
        kept = None
        if file is not None:
            kept = self.store.keep_for_recovery({"kind": "caption", **asdict(file), "caption": row,
                                                 "result": asdict(result)})
        if kept is None:
            self.lost += 1
        else:
            self.recovery_files.add(kept)
            self.kept_for_recovery += 1

    async def record_no_answer(self, image_id: int, path: str, error: str, estimated: int | None,
                               recipe: Recipe | None = None) -> None:
        """A request that got no answer: recorded failed, or held back while the run may be at fault."""
        if self.control.failed_without_answer(error):
            self.held.append(HeldFailure(image_id, path, error, estimated, recipe))
        else:
            await self.record(image_id, path, failed(error), None, estimated, recipe)

    def not_sent(self, count: int = 1) -> None:
        self.summary.not_sent += count

    def skipped(self, path: str, reason: str) -> None:
        self.summary.skipped.append((path, reason))

    def already_done(self) -> None:
        self.summary.skipped_done += 1
        self.progress({"advance": 1})

    def retried(self) -> None:
        self.summary.retries += 1
        self.progress({"retry": 1})

    async def close(self) -> None:
        """Record the failures still held back, unless the run itself was at fault
        (then they are left to be tried again)."""
        if self.control.run_at_fault:
            self.held.clear()
        await self._record_held()

    async def _record_held(self) -> None:
        held, self.held = self.held, []
        for item in held:
            await self.record(item.image_id, item.path, failed(item.error), None, item.estimated, item.recipe)


def failed(error: str) -> CaptionResult:
    return CaptionResult(text=None, status=FAILED, error=error)


def record_unprepared(store: Store, found: Found, sha: str, run_id: int, recipe: Recipe, error: str) -> None:
    """A claimed file that could not be prepared (batch jobs and exported batch files):
    recorded failed with the reason, and its claim released."""
    image_id = store.save_image(found.path, sha, found.size, found.mtime, kind=found.kind)
    store.save_caption(image_id=image_id, run_id=run_id, result=failed(error), **recipe.columns())
    store.release(sha, recipe.key)
