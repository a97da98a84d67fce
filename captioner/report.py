"""Step 5: what a run did and what everything cost, as text or JSON-ready rows."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from . import config, pricing
from .models import Model
from .scan import EMPTY, NOT_IMAGE
from .store import UNPRICED, Store


@dataclass
class RunSummary:
    """What one run did: counts, tokens, cost, and why it ended."""

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
            # Billed answers (ok, refused, blocked) are what a library pays per image.
            "cost_per_1000_images": pricing.per_thousand(self.cost_usd, self.ok + self.refused) or 0.0,
            "unpriced": self.unpriced,
            "retries": self.retries,
            "message": self.message,
        }

GROUPINGS = {
    "model": ("c.model", "model"),
    "run": ("c.run_id", "run"),
    "day": ("substr(c.created_at, 1, 10)", "day"),
}


def money(value: float | None) -> str:
    if value is None:
        return "unpriced"
    if value == 0:
        return "$0"
    return f"${value:.6f}" if value < 0.01 else f"${value:,.4f}"


def summary_lines(summary: RunSummary) -> list[str]:
    """The end-of-run report, one fact per line."""
    d = summary.to_dict()
    lines = [
        f"{summary.model}: {summary.ok} ok, {summary.failed} failed, {summary.refused} refused/blocked, "
        f"{summary.skipped_done} skipped (already done)"
        + "".join(f", {count} skipped ({reason})" for reason, count in skip_reasons(summary.skipped))
        + (f", {summary.not_sent} not sent" if summary.not_sent else ""),
        f"tokens: {summary.input_tokens:,} input, {summary.output_tokens:,} output",
        f"cost: {money(summary.cost_usd)} ({money(d['cost_per_1000_images'])} per 1,000 images)"
        + (f"; {summary.unpriced} responses unpriced (no known price for {summary.model})" if summary.unpriced else ""),
    ]
    for path, error in summary.failures[:20]:
        lines.append(f"  failed: {path}: {error}")
    if len(summary.failures) > 20:
        lines.append(f"  ... and {len(summary.failures) - 20} more (see `captioner sql` on the captions table)")
    if summary.message:
        lines.append(summary.message)
    return lines


def skip_reasons(skipped: list[tuple[str, str]]) -> list[tuple[str, int]]:
    """How many files were passed over for each reason, most common first
    ("not an image" and "empty file" count together as "not images")."""
    counts: Counter[str] = Counter()
    for _, reason in skipped:
        kind = reason.split(":", 1)[0]
        counts["not images" if kind in (NOT_IMAGE, EMPTY) else kind] += 1
    return counts.most_common()


def cost_rows(store: Store, by: str) -> list[dict[str, Any]]:
    """Totals grouped by model, run or day (UTC), priced from the stored rows."""
    expression, label = GROUPINGS[by]
    sql = f"""
        SELECT {expression} AS {label},
               count(*) AS captions,
               sum(c.status = 'ok') AS ok,
               sum(c.status = 'failed') AS failed,
               sum(c.status IN ('refused', 'blocked')) AS refused_or_blocked,
               coalesce(sum(c.input_tokens), 0) AS input_tokens,
               coalesce(sum(c.output_tokens), 0) AS output_tokens,
               round(sum(c.cost_usd), 8) AS cost_usd,
               sum({UNPRICED}) AS unpriced,
               avg(CASE WHEN c.input_tokens IS NOT NULL THEN c.estimated_input_tokens END) AS est_in,
               avg(CASE WHEN c.estimated_input_tokens IS NOT NULL THEN c.input_tokens END) AS billed_in
        FROM captions c
        GROUP BY 1 ORDER BY 1
    """
    rows = list(store.query(sql))
    for row in rows:
        priced = row["captions"] - row["failed"] if row["captions"] else 0
        cost = row["cost_usd"]
        row["cost_per_1000_images"] = pricing.per_thousand(cost, priced)
        row["mean_input_tokens"] = round(row["input_tokens"] / priced, 1) if priced else None
        # How far `captioner estimate` was from the bill, so users learn how far to trust it.
        est, billed = row.pop("est_in"), row.pop("billed_in")
        row["estimated_input_per_image"] = round(est, 1) if est is not None else None
        row["billed_input_per_image"] = round(billed, 1) if billed is not None else None
        row["estimate_error_pct"] = round((est - billed) / billed * 100, 1) if est is not None and billed else None
    if by == "run":
        runs = {r["id"]: r for r in store.query("SELECT id, model, status, started_at FROM runs")}
        for row in rows:
            run = runs.get(row["run"], {})
            row["model"] = run.get("model")
            row["status"] = run.get("status")
            row["started_at"] = run.get("started_at")
    return rows


def model_rows(models: list[Model], default: str) -> list[dict[str, Any]]:
    """`captioner models`: prices (list and batch), key status and declared options per model."""
    rows = []
    for model in models:
        prices = pricing.unit_prices(model)
        has_key = bool(config.resolve_key(model))
        batch = model.batch_discount if prices else None
        declared = model.accepted_options
        rows.append(
            {
                "model": model.model_id,
                "provider": model.provider,
                "input_per_m": prices[0] if prices else None,
                "output_per_m": prices[1] if prices else None,
                "batch_input_per_m": round(prices[0] * batch, 6) if prices and batch else None,
                "batch_output_per_m": round(prices[1] * batch, 6) if prices and batch else None,
                "key": ("not needed" if not model.needs_key
                        else "set" if has_key else f"missing ({' or '.join(model.key_env)})"),
                "default": model.model_id == default,
                "aliases": list(model.aliases),
                "options": None if declared is None else [
                    {**option.to_dict(), "describe": option.describe()} for option in declared
                ],
            }
        )
    return rows
