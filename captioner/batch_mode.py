"""The second way of sending: provider batch jobs, submitted now, collected later,
at the provider's batch price (half of list).

It reuses the stages of a synchronous run: `plan` (what needs a caption),
`prepare` (media), `Budget` (each item reserves its worst case at batch
prices, counting other open jobs of this database) and the recipe; only
sending differs. Never paying twice rests on three rules:

- A job and its items are recorded before the create call, so a photo in it is
  claimed (`claims` + `batch_items`): no other run submits or sends it again.
- A create call whose answer was lost is never retried blindly: the job stays
  `creating` and the next run looks it up at the provider by its tag and adopts it.
- An item's caption is stored in the same transaction that settles the item,
  so collecting twice never stores it twice.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from . import pricing
from .answers import checked, redact
from .batch_api import CANCELLED, ERRORED, EXPIRED, BatchAPI, BatchStatus, BatchUnavailable
from .budget import Budget
from .ledger import record_unprepared
from .media import ImageError, file_sha256, read_file
from .models import FAILED, FAILURES, CaptionResult, Model, ProviderError
from .pipeline import Runner, RunSettings, prepare_for
from .store import CLAIMED, Store

Progress = Callable[[dict[str, Any]], None]
# What a caption is assumed to cost in output for a job's estimate (as `captioner estimate` assumes).
ASSUMED_OUTPUT_TOKENS = 100


@dataclass
class BatchSummary:
    model: str
    submitted: int = 0
    jobs: list[int] = field(default_factory=list)
    skipped_done: int = 0
    in_open_jobs: int = 0
    not_sent: int = 0
    failed_to_prepare: int = 0
    collected_ok: int = 0
    collected_failed: int = 0
    expired: int = 0
    still_running: list[int] = field(default_factory=list)
    cost_usd: float = 0.0
    list_price_usd: float = 0.0
    unpriced: int = 0
    messages: list[str] = field(default_factory=list)
    budget_stop: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 8) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def batch_api_of(model: Model) -> BatchAPI:
    api = model.batch_api()
    if api is None:
        raise BatchUnavailable(f"{model.model_id} has no batch API (batch jobs are for OpenAI, Anthropic and "
                               "Gemini models); caption it without --batch")
    return api


def client(timeout: float = 120.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=10.0))


# -- submitting ------------------------------------------------------------------


async def submit(store: Store, model: Model, settings: RunSettings, roots: list[str], batch_size: int,
                 progress: Progress = lambda e: None) -> BatchSummary:
    """Prepare what needs a caption and submit it as one or more jobs."""
    api = batch_api_of(model)
    summary = BatchSummary(model.model_id)
    async with client(settings.timeout_for(model)) as http:
        await adopt_lost_jobs(store, api, http, settings.key, summary)
    runner = Runner(store, model, settings)
    plan = runner.plan(roots)
    summary.skipped_done = plan.skipped_done
    summary.not_sent = plan.over_limit
    run_id = store.start_run(model.model_id, settings.prompt, {"batch": True, "options": settings.options})
    discount = model.batch_discount or 1.0
    budget = Budget(None if settings.max_cost is None else settings.max_cost - store.reserved_in_open_jobs(),
                    model, settings.options, runner.user_prices)
    limit = max(1, min(batch_size, api.max_requests))
    chunk: list[tuple[int, str, dict[str, Any], str, int]] = []  # image, sha, recipe columns, custom id, estimate
    chunk_file = _temp_lines()
    chunk_bytes = 0
    reserved_in_chunk = 0.0
    estimated_in_chunk = 0.0
    submitted_here: set[tuple[str, str]] = set()
    executor = ThreadPoolExecutor(max_workers=settings.prepare_threads)
    try:
        async for found, sha, prepared in _prepared_in_order(plan.todo, runner, executor):
            recipe = runner.video_recipe if found.kind == "video" else runner.recipe
            if isinstance(prepared, OSError):
                summary.not_sent += 1
                continue
            if (sha, recipe.key) in submitted_here:  # the same content at another path: one request
                store.save_image(found.path, sha, found.size, found.mtime, kind=found.kind)
                summary.skipped_done += 1
                continue
            outcome = store.claim(sha, recipe.key, retry_failed=settings.retry_failed, force=settings.force)
            if outcome != CLAIMED:
                store.save_image(found.path, sha, found.size, found.mtime, kind=found.kind)
                if outcome == "done":
                    summary.skipped_done += 1
                else:
                    summary.in_open_jobs += 1
                continue
            if isinstance(prepared, ImageError):
                record_unprepared(store, found, sha, run_id, recipe, str(prepared))
                summary.failed_to_prepare += 1
                continue
            image_id = store.save_image(found.path, sha, found.size, found.mtime, prepared, kind=found.kind)
            estimated, request = runner.request_for(prepared, recipe, found.path)
            worst = budget.worst_case(estimated) * discount
            if not budget.fits(worst):
                store.release(sha, recipe.key)
                summary.not_sent += 1
                summary.budget_stop = True
                continue
            budget.reserved += worst
            reserved_in_chunk += worst
            expected = pricing.price_request(model, estimated, ASSUMED_OUTPUT_TOKENS, user_prices=runner.user_prices)
            estimated_in_chunk += (expected.cost_usd or 0.0) * discount
            custom_id = f"c{len(chunk) + 1}-{sha[:12]}"
            line = json.dumps(api.line(request, custom_id), separators=(",", ":")) + "\n"
            if chunk and (len(chunk) >= limit or chunk_bytes + len(line) > api.max_bytes):
                this_one = (expected.cost_usd or 0.0) * discount
                await _create_job(store, api, model, chunk, chunk_file, run_id, reserved_in_chunk - worst,
                                  estimated_in_chunk - this_one, settings, summary)
                chunk, chunk_file, chunk_bytes = [], _temp_lines(), 0
                reserved_in_chunk, estimated_in_chunk = worst, this_one
            chunk_file.write(line)
            chunk_bytes += len(line.encode())
            chunk.append((image_id, sha, recipe.columns(), custom_id, estimated))
            submitted_here.add((sha, recipe.key))
            progress({"advance": 1})
        if chunk:
            await _create_job(store, api, model, chunk, chunk_file, run_id, reserved_in_chunk, estimated_in_chunk,
                              settings, summary)
        else:
            _discard(chunk_file)
    finally:
        executor.shutdown(wait=True)
        store.release_all()
        store.finish_run(run_id, "budget" if summary.budget_stop else "completed",
                         len(plan.todo) + plan.skipped_done)
    if summary.budget_stop:
        summary.messages.append(f"stopped adding photos before the reservations could pass --max-cost "
                                f"${settings.max_cost:g} (open jobs' reservations count too)")
    return summary


async def _prepared_in_order(todo: list[Any], runner: Runner, executor: ThreadPoolExecutor
                             ) -> AsyncIterator[tuple[Any, str, Any]]:
    """(found, sha256, prepared media or the error) for each file, in order, with a
    few files read and prepared ahead in the thread pool (every core busy, memory bounded)."""
    loop = asyncio.get_running_loop()

    def work(found: Any) -> tuple[str, Any]:
        try:
            if found.kind == "video":
                data, sha = b"", file_sha256(found.path)
            else:
                data, sha = read_file(found.path, runner.settings.max_file_bytes)
        except OSError as exc:
            return "", exc
        try:
            return sha, prepare_for(runner, found, data)
        except ImageError as exc:
            return sha, exc

    ahead: collections.deque[tuple[Any, asyncio.Future[tuple[str, Any]]]] = collections.deque()
    for found in todo:
        ahead.append((found, loop.run_in_executor(executor, work, found)))
        if len(ahead) > 2 * runner.settings.prepare_threads:
            first, future = ahead.popleft()
            yield (first, *await future)
    while ahead:
        first, future = ahead.popleft()
        yield (first, *await future)


def _temp_lines() -> Any:
    """The job's input, streamed to a file so memory stays flat for 50,000 photos."""
    return tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".jsonl", delete=False)


def _discard(handle: Any) -> None:
    handle.close()
    os.unlink(handle.name)


async def _create_job(store: Store, api: BatchAPI, model: Model, chunk: list[tuple[int, str, dict[str, Any], str, int]],
                      handle: Any, run_id: int, reserved: float, estimated: float, settings: RunSettings,
                      summary: BatchSummary) -> None:
    """Record the job and its items, then create it at the provider."""
    handle.close()
    path = Path(handle.name)
    tag = f"captioner-{uuid.uuid4().hex[:16]}"
    job_id = store.create_batch_job(tag, model.provider, model.model_id, chunk[0][2]["recipe"], run_id)
    for image_id, sha, recipe, custom_id, tokens in chunk:
        store.add_batch_item(job_id, custom_id, image_id, sha, recipe, tokens)
        store.release(sha, recipe["recipe"])  # the open item is the claim from now on
    store.update_batch_job(job_id, status="creating", items=len(chunk), reserved_usd=reserved,
                           estimated_cost_usd=estimated)
    summary.jobs.append(job_id)
    try:
        async with client(settings.timeout_for(model)) as http:
            batch_id = await api.create(http, path, len(chunk), tag, settings.key)
    except (httpx.TimeoutException, httpx.TransportError) as exc:
        # The job may exist at the provider: never create it again blindly.
        summary.messages.append(f"job {job_id}: the create call got no answer ({exc.__class__.__name__}); "
                                "the next run looks for it at the provider before submitting anything")
        return
    except ProviderError as exc:
        store.update_batch_job(job_id, status="failed", error=redact(exc.message, settings.key),
                               finished_at=_now())
        _release_items(store, job_id, "not_sent")
        summary.messages.append(f"job {job_id}: the provider refused it: {redact(exc.message, settings.key)}")
        return
    finally:
        path.unlink(missing_ok=True)
    store.update_batch_job(job_id, provider_batch_id=batch_id, status="submitted", submitted_at=_now())
    summary.submitted += len(chunk)


def _release_items(store: Store, job_id: int, status: str) -> None:
    for item in store.batch_items(job_id):
        if item["status"] == "submitted":
            store.settle_batch_item(item["id"], status, None)


def _now() -> str:
    from .store import utcnow

    return utcnow()


async def adopt_lost_jobs(store: Store, api: BatchAPI, http: httpx.AsyncClient, key: str | None,
                          summary: BatchSummary) -> None:
    """Jobs whose create call lost its answer: adopt the provider's job, or release the photos."""
    for job in store.batch_jobs(open_only=True):
        if job["status"] != "creating":
            continue
        batch_id = await api.find(http, job["tag"], job["items"], job["created_at"], key)
        if batch_id is not None:
            store.update_batch_job(job["id"], provider_batch_id=batch_id, status="submitted", submitted_at=_now())
            summary.messages.append(f"job {job['id']}: found at the provider as {batch_id} and adopted")
        else:
            store.update_batch_job(job["id"], status="lost", finished_at=_now(),
                                   error="created nowhere: its photos are submitted again")
            _release_items(store, job["id"], "not_sent")


# -- collecting ------------------------------------------------------------------


async def collect(store: Store, model_for: Callable[[str], Model], keys: Callable[[Model], str | None],
                  job_ids: list[int] | None, wait: bool, poll_interval: float,
                  progress: Progress = lambda e: None) -> BatchSummary:
    """Store the results of open jobs (waiting for them to end if `wait`)."""
    summary = BatchSummary("")
    user_prices = pricing.load_user_prices()
    async with client() as http:
        for job in store.batch_jobs(job_ids or None, open_only=True):
            model = model_for(job["model"])
            api = batch_api_of(model)
            key = keys(model)
            if job["status"] == "creating":
                await adopt_lost_jobs(store, api, http, key, summary)
                job = store.batch_jobs([job["id"]])[0]
                if job["status"] != "submitted":
                    continue
            while True:
                status = await api.poll(http, job["provider_batch_id"], key)
                store.update_batch_job(job["id"], provider_counts_json=json.dumps(status.counts))
                progress({"job": job["id"], "status": status.status, "counts": status.counts})
                if status.done or not wait:
                    break
                await asyncio.sleep(poll_interval)
            if not status.done:
                summary.still_running.append(job["id"])
                continue
            await _store_results(store, api, http, model, key, job, status, user_prices, summary)
    return summary


async def _store_results(store: Store, api: BatchAPI, http: httpx.AsyncClient, model: Model, key: str | None,
                         job: dict[str, Any], status: BatchStatus, user_prices: dict[str, Any],
                         summary: BatchSummary) -> None:
    items = {item["custom_id"]: item for item in store.batch_items(job["id"])}
    discount = model.batch_discount or 1.0
    ok = failed = expired = 0
    billed = 0.0
    async for item_result in api.results(http, job["provider_batch_id"], key):
        item = items.get(item_result.custom_id)
        if item is None or item["status"] != "submitted":
            continue  # not ours, or stored by an earlier collect
        if item_result.outcome in (EXPIRED, CANCELLED):
            store.settle_batch_item(item["id"], item_result.outcome, None)  # not a failure: submitted again
            expired += 1
            continue
        if item_result.outcome == ERRORED or item_result.result is None:
            result = CaptionResult(text=None, status=FAILED,
                                   error=redact(item_result.error or "errored in the batch job", key))
        else:
            result = checked(item_result.result, schema=_recipe_columns(item).get("schema_json"))
        cost, price_in, price_out = _batch_price(model, result, user_prices, discount)
        row = {"image_id": item["image_id"], "run_id": job["run_id"], **_recipe_columns(item),
               "result": result, "cost_usd": cost, "price_in_per_m": price_in, "price_out_per_m": price_out,
               "estimated_input_tokens": item["estimated_input_tokens"]}
        if store.settle_batch_item(item["id"], "failed" if result.status in FAILURES else "done", row):
            if result.status in FAILURES:
                failed += 1
            else:
                ok += 1
            billed += cost or 0.0
            summary.cost_usd += cost or 0.0
            summary.list_price_usd += (cost or 0.0) / discount
            summary.unpriced += cost is None and result.input_tokens is not None
    # Items the results never mentioned did not run: released, submitted again next time.
    for item in store.batch_items(job["id"]):
        if item["status"] == "submitted":
            store.settle_batch_item(item["id"], EXPIRED, None)
            expired += 1
    store.update_batch_job(job["id"], status="ended" if not status.error else "failed", finished_at=_now(),
                           items_ok=ok, items_failed=failed, items_expired=expired, billed_cost_usd=billed,
                           reserved_usd=0.0, error=status.error)
    summary.collected_ok += ok
    summary.collected_failed += failed
    summary.expired += expired


def _recipe_columns(item: dict[str, Any]) -> dict[str, Any]:
    """The recipe columns the item's caption row carries (recorded when it was submitted)."""
    return dict(json.loads(item["recipe_json"]))


def _batch_price(model: Model, result: CaptionResult, user_prices: dict[str, Any],
                 discount: float) -> tuple[float | None, float | None, float | None]:
    """The cost at the provider's batch rate (`discount` times list)."""
    if result.input_tokens is None and result.output_tokens is None:
        return None, None, None
    cost = pricing.price_request(model, result.input_tokens or 0, result.output_tokens or 0,
                                 cache_read_tokens=result.cache_read_tokens,
                                 cache_write_tokens=result.cache_write_tokens, user_prices=user_prices,
                                 audio_tokens=result.audio_tokens)
    return _scaled(cost.cost_usd, discount), _scaled(cost.price_in_per_m, discount), _scaled(
        cost.price_out_per_m, discount)


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


async def cancel(store: Store, api: BatchAPI, key: str | None, job: dict[str, Any]) -> None:
    async with client() as http:
        await api.cancel(http, job["provider_batch_id"], key)
    store.update_batch_job(job["id"], status="submitted", error="cancel requested: collect for the partial results")
