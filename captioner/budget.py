"""`--max-cost`: every request reserves its worst-case cost before it is sent;
the reservation is swapped for the billed cost when the answer is recorded."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import pricing
from .models import Model

# The budget reserves more input than estimated, so an estimate that is a bit
# low (framing tokens, tokenizer differences) cannot take spending over --max-cost.
BUDGET_INPUT_MARGIN = 1.25


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

    def reserve(self, amount: float) -> bool:
        """Hold `amount` for one request; False if that could pass the cap."""
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
