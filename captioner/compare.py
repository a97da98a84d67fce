"""Compare models on the same deterministic sample of photos: what each wrote,
what each cost, and what each would cost for the whole folder."""

from __future__ import annotations

import asyncio
import hashlib
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import httpx

from . import pricing
from .answers import checked
from .budget import Budget
from .gallery import GalleryItem, render
from .judge import FIRST, INVALID, SECOND, judge_prompt, parse_verdict, prompt_id
from .media import ImageError, prepare_image, read_file
from .models import CaptionRequest, CaptionResult, Model, ProviderError
from .pipeline import RunSettings, caption_paths
from .quality import Match, bleu4, bootstrap_bradley_terry, bradley_terry, pareto_front, wilson
from .recipe import Recipe
from .report import RunSummary
from .scan import DEFAULT_MAX_FILE_BYTES, Found, scan
from .store import PHOTO_CAPTIONS_JOIN, Store, utcnow

COLUMNS = ["model", "ok", "failed", "mean_input_tokens", "mean_output_tokens", "usd_per_image",
           "usd_per_1000", "projected_usd_all_photos", "median_latency_ms"]


def sample(roots: Sequence[str], n: int, include: Sequence[str] = (), exclude: Sequence[str] = (),
           max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> tuple[list[str], int]:
    """N photos chosen by a hash of their path (the same N every time), and how many there are in all."""
    found = [item.path for item in scan(roots, include, exclude, max_bytes=max_bytes) if isinstance(item, Found)]
    chosen = sorted(found, key=lambda p: hashlib.sha256(p.encode("utf-8")).hexdigest())[:n]
    return sorted(chosen), len(found)


@dataclass
class Comparison:
    rows: list[dict[str, Any]]
    captions: dict[str, dict[str, tuple[str, str | None]]]  # path -> model -> (status, text)
    paths: list[str]
    total_photos: int


def latest_captions(store: Store, paths: Sequence[str], recipe: Recipe) -> dict[str, dict[str, Any]]:
    """The newest caption per path made with this recipe (through content hash,
    so a copy of a captioned photo shows its caption)."""
    found: dict[str, dict[str, Any]] = {}
    for path in paths:
        row = next(iter(store.query(
            f"""SELECT c.* FROM {PHOTO_CAPTIONS_JOIN}
               WHERE i.path = ? AND c.recipe = ?
               ORDER BY c.id DESC LIMIT 1""",
            (path, recipe.key),
        )), None)
        if row is not None:
            found[path] = row
    return found


def model_row(model: str, rows: Sequence[dict[str, Any]], total_photos: int) -> dict[str, Any]:
    answered = [r for r in rows if r["status"] != "failed"]
    priced = [r["cost_usd"] for r in answered if r["cost_usd"] is not None]
    # Unpriced if any answer is: a partial sum would understate the cost.
    total = sum(priced) if priced and len(priced) == len(answered) else None
    per_1000 = pricing.per_thousand(total, len(answered))
    per_image = per_1000 / 1000 if per_1000 is not None else None
    durations = [r["duration_ms"] for r in answered if r["duration_ms"] is not None]
    return {
        "model": model,
        "ok": sum(r["status"] == "ok" for r in rows),
        "failed": sum(r["status"] != "ok" for r in rows),
        "mean_input_tokens": round(statistics.mean(r["input_tokens"] for r in answered), 1) if answered else None,
        "mean_output_tokens": round(statistics.mean(r["output_tokens"] for r in answered), 1) if answered else None,
        "usd_per_image": per_image,
        "usd_per_1000": per_1000,
        "projected_usd_all_photos": per_image * total_photos if per_image is not None else None,
        "median_latency_ms": statistics.median(durations) if durations else None,
    }


def compare(
    roots: Sequence[str],
    models: Sequence[Model],
    keys: dict[str, str | None],
    store: Store,
    settings: RunSettings,
    n: int,
    progress_factory: Callable[[int], Callable[[dict[str, Any]], None]] | None = None,
    base_urls: Sequence[str] = (),
) -> tuple[Comparison, list[RunSummary]]:
    paths, total = sample(roots, n, settings.include, settings.exclude, settings.max_file_bytes)
    summaries = []
    for model in models:
        # Captions already in the database are reused; only missing ones are sent.
        run_settings = replace(settings, key=keys.get(model.model_id), include=(), exclude=(),
                               base_urls=base_urls if model.endpoints() else ())
        summaries.append(caption_paths(paths, model, store, run_settings, progress_factory))
    table: list[dict[str, Any]] = []
    captions: dict[str, dict[str, tuple[str, str | None]]] = {p: {} for p in paths}
    for model in models:
        found = latest_captions(store, paths, settings.recipe(model))
        table.append(model_row(model.model_id, list(found.values()), total))
        for path, row in found.items():
            captions[path][model.model_id] = (row["status"], row["caption"] if row["status"] == "ok" else row["error"])
    return Comparison(table, captions, paths, total), summaries


def render_page(comparison: Comparison, models: Sequence[Model]) -> str:
    """The HTML page: thumbnails with every model's caption side by side, and the table."""
    items = [GalleryItem(path, comparison.captions[path]) for path in comparison.paths]
    title = f"captioner compare: {len(comparison.paths)} of {comparison.total_photos} photos"
    return render(title, items, [m.model_id for m in models], comparison.rows, COLUMNS)


# -- judged comparisons ------------------------------------------------------------


@dataclass
class Judged:
    """What the judge decided, with the figures drawn from it."""

    judge: str
    models: list[dict[str, Any]]  # per model: BT score and interval, ties, $/1000, Pareto
    pairs: list[dict[str, Any]]  # per pair of models: wins, losses, ties, invalid, win rate and interval
    verdicts: dict[str, list[dict[str, Any]]]  # path -> one entry per pair: winner and reasons
    judgements_made: int = 0
    judgements_reused: int = 0
    cost_usd: float = 0.0
    estimated_usd: float | None = 0.0  # what the judgements still to make were expected to cost
    stopped: str | None = None


async def _judge_all(store: Store, judge: Model, key: str | None, jobs: list[dict[str, Any]], max_cost: float | None,
                     concurrency: int, judged: Judged) -> None:
    """Ask the judge about every (photo, pair, order) not judged yet, a few at a time. Under
    --max-cost each judgement reserves its worst case before it is sent, as captions do, so
    the judgements in flight together cannot spend past it."""
    user_prices = pricing.load_user_prices()
    prompt_version = prompt_id()
    options = ({"max_tokens": "200"} if judge.accepted_options is not None
               and any(o.name == "max_tokens" for o in judge.accepted_options) else {})
    budget = Budget(max_cost, judge, options, user_prices)
    slots = asyncio.Semaphore(concurrency)
    spent = 0.0

    async def one(client: httpx.AsyncClient, job: dict[str, Any]) -> None:
        nonlocal spent
        async with slots:
            if judged.stopped:
                return
            prompt = judge_prompt(job["first"], job["second"])
            worst = budget.worst_case(pricing.estimated_input_tokens(judge, job["width"], job["height"], options,
                                                                     prompt, None))
            if not await budget.reserve(worst):
                judged.stopped = f"stopped judging at --max-cost ${max_cost:g}"
                return
            request = CaptionRequest(jpeg=job["jpeg"], width=job["width"], height=job["height"], prompt=prompt,
                                     key=key, options=options)
            try:
                result = checked(await judge.caption(request, client))
                verdict, reason = parse_verdict(result.text)
                if result.status != "ok":
                    verdict, reason = INVALID, f"{result.status}: {result.error or ''}"
            except (ProviderError, httpx.HTTPError) as exc:
                result = CaptionResult(text=None, status="failed")
                verdict, reason = INVALID, getattr(exc, "message", str(exc))
            cost = pricing.price_request(judge, result.input_tokens or 0, result.output_tokens or 0,
                                         user_prices=user_prices).cost_usd if result.input_tokens else None
            spent += cost or 0.0
            # A bill that is not known (an error after sending) keeps its whole reservation.
            await budget.settle(worst, worst if cost is None else cost)
            # Stored in canonical terms: which of a and b won, whatever order it was shown in.
            canonical = {FIRST: job["first_is"], SECOND: "b" if job["first_is"] == "a" else "a"}.get(verdict, verdict)
            store.save_judgement({
                "image_id": job["image_id"], "caption_a_id": job["a"], "caption_b_id": job["b"],
                "judge_model": judge.model_id, "judge_prompt": prompt_version, "order": job["order"],
                "verdict": canonical, "reason": reason, "input_tokens": result.input_tokens,
                "output_tokens": result.output_tokens, "cost_usd": cost, "created_at": utcnow(),
                "raw": (result.text or "")[:2000]})
            judged.judgements_made += 1

    async with httpx.AsyncClient(timeout=httpx.Timeout(120.0, connect=10.0)) as client:
        await asyncio.gather(*(one(client, job) for job in jobs))
    judged.cost_usd += spent


def judge_comparison(store: Store, comparison: Comparison, models: Sequence[Model], settings: RunSettings,
                     judge: Model, key: str | None, max_cost: float | None = None, bootstrap_rounds: int = 1000
                     ) -> Judged:
    """Judge every pair of captions of every sample photo in both orders, then draw the figures."""
    judged = Judged(judge.model_id, [], [], {})
    prompt_version = prompt_id()
    ids = [m.model_id for m in models]
    rows_by_model = {m.model_id: latest_captions(store, comparison.paths, settings.recipe(m)) for m in models}
    jobs = []
    for path in comparison.paths:
        for i, a in enumerate(ids):
            for b in ids[i + 1:]:
                row_a, row_b = rows_by_model[a].get(path), rows_by_model[b].get(path)
                if not row_a or not row_b or row_a["status"] != "ok" or row_b["status"] != "ok":
                    continue
                for order in ("ab", "ba"):
                    if store.judgement(row_a["id"], row_b["id"], judge.model_id, prompt_version, order):
                        judged.judgements_reused += 1
                        continue
                    jobs.append({"path": path, "a": row_a["id"], "b": row_b["id"], "order": order,
                                 "image_id": row_a["image_id"], "first_is": order[0],
                                 "first": row_a["caption"] if order == "ab" else row_b["caption"],
                                 "second": row_b["caption"] if order == "ab" else row_a["caption"]})
    prepared: dict[str, Any] = {}
    for job in jobs:
        if job["path"] not in prepared:
            try:
                data, _ = read_file(job["path"])
                prepared[job["path"]] = prepare_image(data, judge.max_side)
            except (OSError, ImageError):
                prepared[job["path"]] = None
        image = prepared[job["path"]]
        if image is not None:
            job.update(jpeg=image.jpeg, width=image.sent_width, height=image.sent_height)
    jobs = [job for job in jobs if "jpeg" in job]
    judged.estimated_usd = _judging_estimate(judge, jobs)
    asyncio.run(_judge_all(store, judge, key, jobs, max_cost, settings.concurrency, judged))
    _figures(store, comparison, ids, rows_by_model, judge, prompt_version, bootstrap_rounds, judged)
    return judged


# A verdict with its one-sentence reason, in output tokens.
JUDGE_OUTPUT_TOKENS = 60


def _judging_estimate(judge: Model, jobs: list[dict[str, Any]]) -> float | None:
    """The judgements' cost before they are made: the judge's image rule plus both captions and the rubric."""
    total = 0.0
    for job in jobs:
        tokens = pricing.estimated_input_tokens(judge, job["width"], job["height"], {},
                                                judge_prompt(job["first"], job["second"]), None)
        cost = pricing.price_request(judge, tokens, JUDGE_OUTPUT_TOKENS).cost_usd
        if cost is None:
            return None
        total += cost
    return total


def _figures(store: Store, comparison: Comparison, ids: list[str], rows_by_model: dict[str, Any], judge: Model,
             prompt_version: str, rounds: int, judged: Judged) -> None:
    """A verdict counts only when both orders agree; otherwise it is a tie."""
    pair_stats = {(a, b): {"wins": 0, "losses": 0, "ties": 0, "invalid": 0}
                  for i, a in enumerate(ids) for b in ids[i + 1:]}
    matches_by_photo: list[list[Match]] = []
    ties = {m: 0 for m in ids}
    for path in comparison.paths:
        photo_matches: list[Match] = []
        for (a, b), stats in pair_stats.items():
            row_a, row_b = rows_by_model[a].get(path), rows_by_model[b].get(path)
            if not row_a or not row_b:
                continue
            both = [store.judgement(row_a["id"], row_b["id"], judge.model_id, prompt_version, o) for o in ("ab", "ba")]
            if not all(both):
                continue
            first, second = (j["verdict"] for j in both)  # type: ignore[index]
            if INVALID in (first, second):
                stats["invalid"] += 1
                outcome = "invalid"
            elif first == second and first in ("a", "b"):
                outcome = first
                stats["wins" if first == "a" else "losses"] += 1
                photo_matches.append((a, b, 1.0 if first == "a" else 0.0))
            else:
                outcome = "tie"
                stats["ties"] += 1
                ties[a] += 1
                ties[b] += 1
                photo_matches.append((a, b, 0.5))
            winner = {"a": a, "b": b}.get(outcome, outcome)
            judged.verdicts.setdefault(path, []).append(
                {"a": a, "b": b, "winner": winner, "reasons": [j["reason"] for j in both]})  # type: ignore[index]
        matches_by_photo.append(photo_matches)
    for (a, b), stats in pair_stats.items():
        decided = stats["wins"] + stats["losses"]
        interval = wilson(stats["wins"], decided)
        judged.pairs.append({"model": a, "against": b, **stats,
                             "win_rate": round(stats["wins"] / decided, 4) if decided else None,
                             "win_rate_95ci": [round(x, 4) for x in interval] if interval else None})
    all_matches = [m for photo in matches_by_photo for m in photo]
    scores = bradley_terry(all_matches, ids) if all_matches else {m: 0.0 for m in ids}
    intervals = bootstrap_bradley_terry(matches_by_photo, ids, rounds) if all_matches else {}
    costs = {row["model"]: row["usd_per_1000"] for row in comparison.rows}
    front = pareto_front({m: (costs.get(m), scores[m]) for m in ids})
    for model in ids:
        low_high = intervals.get(model)
        judged.models.append({"model": model, "bt_score": round(scores[model], 3),
                              "bt_95ci": [round(low_high[0], 3), round(low_high[1], 3)] if low_high else None,
                              "ties": ties[model], "usd_per_1000": costs.get(model), "pareto": model in front})
    judged.models.sort(key=lambda r: -r["bt_score"])


def judged_page(comparison: Comparison, models: Sequence[Model], judged: Judged) -> str:
    """The compare page with the judge's verdict and reasons under each photo."""
    items = []
    for path in comparison.paths:
        captions = dict(comparison.captions[path])
        for n, verdict in enumerate(judged.verdicts.get(path, []), start=1):
            reasons = " / ".join(r for r in verdict["reasons"] if r)
            captions[f"judge {n}: {verdict['a']} vs {verdict['b']}"] = (
                "ok", f"{verdict['winner']} ({reasons})" if reasons else verdict["winner"])
        items.append(GalleryItem(path, captions))
    names = [m.model_id for m in models] + sorted({k for item in items for k in item.captions
                                                   if k.startswith("judge ")})
    title = f"captioner compare judged by {judged.judge}: {len(comparison.paths)} photos"
    return render(title, items, names, judged.models, JUDGED_COLUMNS)


JUDGED_COLUMNS = ["model", "bt_score", "bt_95ci", "ties", "usd_per_1000", "pareto"]


def read_references(path: str) -> dict[str, list[str]]:
    """`path,reference` rows (a header row is allowed; several rows per photo are several references)."""
    import csv

    references: dict[str, list[str]] = {}
    base = os.path.dirname(os.path.abspath(path))
    with open(path, encoding="utf-8", newline="") as fh:
        for row in csv.reader(fh):
            if len(row) < 2 or row[0].strip().lower() == "path" or not row[1].strip():
                continue
            photo = row[0].strip()
            photo = photo if os.path.isabs(photo) else os.path.join(base, photo)
            references.setdefault(os.path.abspath(photo), []).append(row[1].strip())
    return references


def evaluate(store: Store, models: Sequence[Model], keys: dict[str, str | None], settings: RunSettings,
             references: dict[str, list[str]]) -> tuple[list[dict[str, Any]], list[RunSummary]]:
    """Caption the referenced photos with each model (reusing stored captions) and score them with BLEU-4."""
    paths = sorted(p for p in references if os.path.exists(p))
    summaries = [caption_paths(paths, model, store, replace(settings, key=keys.get(model.model_id)))
                 for model in models]
    table = []
    for model in models:
        found = latest_captions(store, paths, settings.recipe(model))
        scored = [p for p in paths if p in found and found[p]["status"] == "ok"]
        candidates = [found[p]["caption"] for p in scored]
        table.append({"model": model.model_id, "photos": len(scored),
                      "bleu4": round(bleu4(candidates, [references[p] for p in scored]), 4),
                      "mean_words": round(statistics.mean(len(c.split()) for c in candidates), 1) if candidates
                      else None})
    return table, summaries
