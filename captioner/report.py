"""Step 5: what a run did and what everything cost, as text or JSON-ready rows."""

from __future__ import annotations

import os
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
    database: str = ""
    failed_before: int = 0  # photos skipped because they failed before (not retried)
    found: int = 0  # image files under the paths (done or not)
    clipped: int = 0  # video clips longer than --max-video-seconds (sent in part)
    endpoints: dict[str, Any] = field(default_factory=dict)  # an endpoint pool: answered and median ms each
    # What this run wrote, photo by photo (kept for small runs, to show at the end).
    answers: list[tuple[str, str, str | None]] = field(default_factory=list)

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
            "database": self.database,
            "endpoints": self.endpoints,
            "failed_before": self.failed_before,
            "captions": [{"path": p, "status": s, "caption": c} for p, s, c in self.answers],
        }

GROUPINGS = {
    "mode": ("CASE WHEN EXISTS (SELECT 1 FROM batch_items b WHERE b.caption_id = c.id) THEN 'batch' "
             "ELSE 'sync' END", "mode"),
    "kind": ("(SELECT kind FROM images WHERE images.id = c.image_id)", "kind"),
    "model": ("c.model", "model"),
    "run": ("c.run_id", "run"),
    "day": ("substr(c.created_at, 1, 10)", "day"),
}


def money(value: float | None) -> str:
    """Dollars as people read them: `$0.000040`, `$1,234.5678`, never `4e-05`; None is "unpriced"."""
    if value is None:
        return "unpriced"
    if value == 0:
        return "$0"
    if abs(value) < 0.01:
        return f"${value:.6f}"
    return f"${value:,.4f}" if abs(value) < 1000 else f"${value:,.2f}"


def number(value: float | int | None, decimals: int = 1) -> str:
    """A count or measure with thousands separators and no scientific notation."""
    if value is None:
        return ""
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.{decimals}f}"


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def summary_lines(summary: RunSummary) -> list[str]:
    """The end-of-run report, one fact per line."""
    d = summary.to_dict()
    handled = summary.ok + summary.failed + summary.refused
    lines = []
    if summary.answers and handled <= len(summary.answers):
        for path, status, text in sorted(summary.answers):
            lines += [path, f"    {text or ''}" if status == "ok" else f"    [{status}] {text or ''}"]
        lines.append("")
    lines += [
        f"{summary.model}: {summary.ok} ok, {summary.failed} failed, {summary.refused} refused/blocked, "
        f"{summary.skipped_done} skipped (already done)"
        + "".join(f", {count} skipped ({reason})" for reason, count in skip_reasons(summary.skipped))
        + (f", {summary.not_sent} not sent" if summary.not_sent else ""),
        f"tokens: {summary.input_tokens:,} input, {summary.output_tokens:,} output",
        f"cost: {money(summary.cost_usd)} ({money(d['cost_per_1000_images'])} per 1,000 images)"
        + (f"; {summary.unpriced} responses unpriced (no known price for {summary.model})" if summary.unpriced else ""),
    ]
    shown_above = bool(summary.answers) and handled <= len(summary.answers)
    if not shown_above:
        for path, error in summary.failures[:20]:
            lines.append(f"  failed: {path}: {error}")
        if len(summary.failures) > 20:
            lines.append(f"  ... and {len(summary.failures) - 20} more (see `captioner failures`)")
    for url, stats in summary.endpoints.items():
        median = stats["median_ms"]
        lines.append(f"  endpoint {url}: {stats['answered']:,} answered"
                     + (f", median {median:,.0f} ms" if median is not None else ""))
    if summary.clipped:
        lines.append(f"{plural(summary.clipped, 'clip')} longer than --max-video-seconds: only the start was sent")
    if summary.failed_before:
        lines.append(f"{plural(summary.failed_before, 'photo')} failed before and were not sent again: "
                     "see `captioner failures`, retry them with --retry-failed")
    if summary.message:
        lines.append(summary.message)
    if handled and not shown_above:
        lines.append("see the captions with: captioner show PATH (or captioner search WORDS)")
    if summary.database:
        lines.append(f"database: {summary.database}")
    return lines


def skipped_note(skipped: list[tuple[str, str]]) -> str:
    """` (2 skipped: 1 not images, 1 not a regular file)`, or nothing."""
    if not skipped:
        return ""
    reasons = ", ".join(f"{count} {reason}" for reason, count in skip_reasons(skipped))
    return f" ({len(skipped)} skipped: {reasons})"


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
    if by == "model" and store.has_table("judgements"):
        rows += judge_cost_rows(store)
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


def judge_cost_rows(store: Store) -> list[dict[str, Any]]:
    """What judging cost, one row per judge model (`compare --judge`), beside the captioning rows."""
    found = []
    for row in store.query(
            """SELECT judge_model || ' (judge)' AS model, count(*) AS captions, sum(verdict != 'invalid') AS ok,
                      sum(verdict = 'invalid') AS failed, 0 AS refused_or_blocked,
                      coalesce(sum(input_tokens), 0) AS input_tokens, coalesce(sum(output_tokens), 0) AS output_tokens,
                      round(sum(cost_usd), 8) AS cost_usd,
                      sum(cost_usd IS NULL AND input_tokens IS NOT NULL) AS unpriced
               FROM judgements GROUP BY judge_model ORDER BY judge_model"""):
        row.update(cost_per_1000_images=pricing.per_thousand(row["cost_usd"], row["captions"]),
                   mean_input_tokens=None, estimated_input_per_image=None,
                   billed_input_per_image=None, estimate_error_pct=None)
        found.append(row)
    return found


def captions_of(store: Store, paths: list[str]) -> list[dict[str, Any]]:
    """`captioner show`: every caption of each file (or of every file under a folder), newest first per model."""
    found: list[dict[str, Any]] = []
    for path in paths:
        absolute = os.path.abspath(path)
        found.extend(store.query(
            """SELECT path, model, status, caption, error, prompt, system, cost_usd, captioned_at, taken_at,
                      title, keywords, alt_text
               FROM photo_captions WHERE path = :path OR path LIKE :under ESCAPE '\\'
               ORDER BY path, model, caption_id DESC""",
            {"path": absolute, "under": _like_prefix(absolute.rstrip(os.sep) + os.sep)},
        ))
    return found


def failure_rows(store: Store) -> list[dict[str, Any]]:
    """`captioner failures`: files whose caption failed or was refused, and not answered since."""
    return list(store.query(
        """SELECT path, model, status, error, captioned_at FROM photo_captions p
           WHERE status IN ('failed', 'malformed', 'refused', 'blocked')
             AND NOT EXISTS (SELECT 1 FROM photo_captions q WHERE q.path = p.path AND q.recipe = p.recipe
                             AND q.status = 'ok')
           ORDER BY path, model"""
    ))


def _like_prefix(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def plain_float(value: float) -> str:
    """A float without scientific notation (`0.00004`, not `4e-05`)."""
    if value != value or value in (float("inf"), float("-inf")):
        return str(value)
    if abs(value) >= 1e6:
        return f"{value:,.2f}"
    text = f"{value:.8f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def readable(row: dict[str, Any], money_columns: tuple[str, ...] = ()) -> dict[str, Any]:
    """A row for a table people read: money as dollars ("unpriced" when unknown),
    counts with thousands separators, no scientific notation."""
    shown: dict[str, Any] = {}
    for key, value in row.items():
        if key in money_columns:
            shown[key] = money(value)
        elif isinstance(value, bool) or value is None or isinstance(value, str):
            shown[key] = value
        elif isinstance(value, (int, float)):
            shown[key] = number(value)
        else:
            shown[key] = value
    return shown


COST_HEADERS = {"ok": "ok", "failed": "failed", "input_tokens": "in tok", "output_tokens": "out tok",
                "cost_usd": "cost", "cost_per_1000_images": "per 1,000", "estimate_error_pct": "est err%",
                "unpriced": "unpriced"}


def cost_table(rows: list[dict[str, Any]], by: str) -> tuple[list[dict[str, Any]], list[str]]:
    """`captioner cost` as a table under 100 columns, with a total row (`--json` has every field)."""
    label = by
    keys = ["ok", "failed", "input_tokens", "output_tokens", "cost_usd"]
    if by == "model":
        keys += ["cost_per_1000_images", "estimate_error_pct"]
    if any(row["unpriced"] for row in rows):
        keys.append("unpriced")
    lead = [label, "model", "status"] if by == "run" else [label]
    display = []
    for row in rows:
        shown = {column: row.get(column) for column in lead}
        shown.update({COST_HEADERS[k]: _cost_cell(k, row.get(k)) for k in keys})
        display.append(shown)
    if len(rows) > 1:
        total: dict[str, Any] = {label: "total"}
        for key in ("ok", "failed", "input_tokens", "output_tokens", "unpriced"):
            if key in keys:
                total[COST_HEADERS[key]] = number(sum(r.get(key) or 0 for r in rows))
        priced = [r["cost_usd"] for r in rows if r["cost_usd"] is not None]
        total[COST_HEADERS["cost_usd"]] = money(sum(priced)) if priced else "unpriced"
        display.append(total)
    return display, lead + [COST_HEADERS[k] for k in keys]


def _cost_cell(key: str, value: Any) -> Any:
    if key in ("cost_usd", "cost_per_1000_images"):
        return money(value)
    if key == "estimate_error_pct":
        return "" if value is None else f"{value:+.1f}"
    return number(value)
