"""`--max-cost`: every request reserves its worst-case cost just before it is
sent (once it holds a concurrency slot, not while it waits for one); the
reservation is swapped for the billed cost when the answer is recorded. A
request that does not fit waits while others in flight settle (their bills
are usually far below their reservations), and the run stops only when
nothing is in flight and the next request still does not fit. So a budget is
spent, not merely reserved."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from . import pricing
from .models import Model

# The budget reserves more input than estimated, so an estimate that is a bit
# low (framing tokens, tokenizer differences; the tests hold it within 5% of
# the bills) cannot take spending over --max-cost.
BUDGET_INPUT_MARGIN = 1.1


class Budget:
    """Spending against an optional cap. Without a cap it only adds up."""

    def __init__(self, max_cost: float | None, model: Model, options: Mapping[str, Any],
                 user_prices: dict[str, Any] | None = None) -> None:
        self.max_cost = max_cost
        self.model = model
        self.options = options
        self.user_prices = user_prices
        self.spent = 0.0
        self.reserved = 0.0
        self._settled = asyncio.Condition()

    def worst_case(self, estimated_input_tokens: int) -> float:
        """Estimated input with a safety margin, and the full output allowance."""
        if self.max_cost is None:
            return 0.0
        cost = pricing.price_request(
            self.model,
            int(estimated_input_tokens * BUDGET_INPUT_MARGIN) + 50,
            self.model.max_output_tokens(self.options),
            user_prices=self.user_prices,
        )
        return cost.cost_usd or 0.0

    def fits(self, amount: float) -> bool:
        return self.max_cost is None or self.spent + self.reserved + amount <= self.max_cost

    async def reserve(self, amount: float) -> bool:
        """Hold `amount` for one request, waiting while requests in flight may
        free room; False when nothing is in flight and it still does not fit."""
        if self.max_cost is None:
            return True
        async with self._settled:
            while not self.fits(amount):
                if self.reserved <= 1e-12:
                    return False
                await self._settled.wait()
            self.reserved += amount
            return True

    async def settle(self, reserved: float, actual: float | None) -> None:
        """Swap a reservation (0 if none was made) for what was spent."""
        async with self._settled:
            if self.max_cost is not None:
                self.reserved = max(0.0, self.reserved - reserved)
            self.spent += actual or 0.0
            self._settled.notify_all()
