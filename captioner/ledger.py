"""The ledger: records every answer the moment it arrives and keeps the run's
summary. A billed answer is priced and committed at once, so a crash or a kill
never loses what was paid for.

Failures with no answer are held back until the first request succeeds (the
run control decides whether the run, not the image, was at fault); `close`
records them unless the run was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import pricing
from .control import RunControl
from .models import FAILED, OK, CaptionResult, Model
from .report import RunSummary
from .store import Store

Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Recipe:
    """What shapes an answer, recorded on every caption row."""

    prompt: str


@dataclass
class HeldFailure:
    image_id: int
    path: str
    error: str
    estimated: int | None


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
    ) -> None:
        self.store = store
        self.model = model
        self.recipe = recipe
        self.summary = summary
        self.control = control
        self.user_prices = user_prices
        self.progress = progress
        self.concurrency = concurrency
        self.held: list[HeldFailure] = []

    def record(self, image_id: int, path: str, result: CaptionResult, duration_ms: int | None,
               estimated: int | None = None) -> float | None:
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
            )
            cost, price_in, price_out = request_cost.cost_usd, request_cost.price_in_per_m, request_cost.price_out_per_m
            summary.input_tokens += result.input_tokens or 0
            summary.output_tokens += result.output_tokens or 0
            summary.cost_usd += cost or 0.0
        self.store.save_caption(
            image_id=image_id,
            run_id=summary.run_id,
            model=self.model.model_id,
            prompt=self.recipe.prompt,
            result=result,
            cost_usd=cost,
            price_in_per_m=price_in,
            price_out_per_m=price_out,
            duration_ms=duration_ms,
            estimated_input_tokens=estimated,
        )
        if result.status == OK:
            summary.ok += 1
            self.control.answered_ok()
            self._record_held()
        elif result.status == FAILED:
            summary.failed += 1
            summary.failures.append((path, result.error or "failed"))
        else:
            summary.refused += 1
            summary.failures.append((path, result.error or result.status))
        self.progress({"advance": 1, "cost": summary.cost_usd, "concurrency": self.concurrency()})
        return cost

    def record_no_answer(self, image_id: int, path: str, error: str, estimated: int | None) -> None:
        """A request that got no answer: recorded failed, or held back while the run may be at fault."""
        if self.control.failed_without_answer(error):
            self.held.append(HeldFailure(image_id, path, error, estimated))
        else:
            self.record(image_id, path, failed(error), None, estimated)

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

    def close(self) -> None:
        """Record the failures still held back, unless the run itself was at fault
        (then they are left to be tried again)."""
        if self.control.run_at_fault:
            self.held.clear()
        self._record_held()

    def _record_held(self) -> None:
        held, self.held = self.held, []
        for item in held:
            self.record(item.image_id, item.path, failed(item.error), None, item.estimated)


def failed(error: str) -> CaptionResult:
    return CaptionResult(text=None, status=FAILED, error=error)
