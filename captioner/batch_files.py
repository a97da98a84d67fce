"""Batch files for GPU clusters: `vllm run-batch` (or any engine that reads the
OpenAI batch format) runs them; captioner stays the one coordinator and writer.

`export` writes shards of OpenAI batch input lines (`{"custom_id", "method", "url",
"body"}`, the body built by the OpenAI plugin exactly as for a live request) and
records each shard as a batch job of this database, its photos claimed like any
open job. `import_files` reads output files in the OpenAI batch output shape
(success and error lines, in one file as vLLM writes them or two as OpenAI does),
in any order, any number of times, partial or cut short: each line settles at most
one item, found by its custom id, so no caption lands on the wrong photo and none
is stored twice. Photos whose lines never come back are exported again by the
next export.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

from . import pricing
from .answers import checked
from .batch_api import CANCELLED, ERRORED, EXPIRED
from .ledger import failed, record_unprepared
from .media import ExifFacts, ImageError, PreparedImage, file_sha256, header_facts, read_file, sent_size
from .models import FAILURES, Model
from .pipeline import Runner, RunSettings, prepare_for
from .store import CLAIMED, EXPORTED, Store, utcnow


@dataclass
class ExportSummary:
    shards: list[str] = field(default_factory=list)
    items: int = 0
    skipped_done: int = 0
    failed_to_prepare: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def export(store: Store, model: Model, settings: RunSettings, roots: list[str], out_dir: str, shard_lines: int,
           images: str) -> ExportSummary:
    """Write shards of batch input lines for `model` (which must speak the OpenAI format)."""
    api = _compatible_api(model)  # the OpenAI batch format, which vllm run-batch and its peers read
    summary = ExportSummary()
    _release_unanswered(store, model.model_id)
    runner = Runner(store, model, settings)
    plan = runner.plan(roots)
    summary.skipped_done = plan.skipped_done
    run_id = store.start_run(model.model_id, settings.prompt, {"export": images, "options": settings.options})
    os.makedirs(out_dir, exist_ok=True)
    shard: Any = None
    job_id = 0
    count = 0
    try:
        for found in plan.todo:
            recipe = runner.video_recipe if found.kind == "video" else runner.recipe
            try:
                data, sha = (b"", file_sha256(found.path)) if found.kind == "video" else read_file(found.path)
            except OSError:
                continue
            if store.claim(sha, recipe.key, retry_failed=settings.retry_failed, force=settings.force) != CLAIMED:
                summary.skipped_done += 1
                continue
            try:
                # A file:// line is read by the engine itself: only the header is needed here.
                prepared = (_header_only(found.path, runner.max_side) if images == "file-url" and found.kind == "image"
                            else prepare_for(runner, found, data))
            except ImageError as exc:
                record_unprepared(store, found, sha, run_id, recipe, str(exc))
                summary.failed_to_prepare += 1
                continue
            image_id = store.save_image(found.path, sha, found.size, found.mtime, prepared, kind=found.kind)
            estimated, request = runner.request_for(prepared, recipe, found.path)
            if shard is None or count >= shard_lines:
                if shard is not None:
                    shard.close()
                tag = f"captioner-{uuid.uuid4().hex[:12]}"
                path = os.path.join(out_dir, f"{tag}.jsonl")
                job_id = store.create_batch_job(tag, "batch-file", model.model_id, recipe.key, run_id)
                store.update_batch_job(job_id, status=EXPORTED, provider_batch_id=path, submitted_at=utcnow())
                shard = open(path, "w", encoding="utf-8")  # noqa: SIM115 (closed when the shard is full)
                summary.shards.append(path)
                count = 0
            custom_id = f"{os.path.basename(shard.name)[:-6]}-{count + 1}"
            line = api.line(request, custom_id)
            if images == "file-url":
                _point_at_file(line, found.path)
            shard.write(json.dumps(line, separators=(",", ":")) + "\n")
            store.add_batch_item(job_id, custom_id, image_id, sha, recipe.columns(), estimated)
            store.release(sha, recipe.key)
            count += 1
            if count == shard_lines:
                store.update_batch_job(job_id, items=count)
            summary.items += 1
    finally:
        if shard is not None:
            shard.close()
            store.update_batch_job(job_id, items=count)
        store.release_all()
        store.finish_run(run_id, "completed", len(plan.todo) + plan.skipped_done)
    return summary


def _header_only(path: str, max_side: int) -> PreparedImage:
    """What a file:// line needs of a photo: its size (for the estimate), no decoding."""
    width, height, fmt, frames = header_facts(path)
    sent_width, sent_height = sent_size(width, height, fmt, frames, max_side)
    return PreparedImage(jpeg=b"", width=width, height=height, sent_width=sent_width, sent_height=sent_height,
                         format=fmt, exif=ExifFacts())


def _compatible_api(model: Model) -> Any:
    """The OpenAI batch line format for a model on an OpenAI-compatible server."""
    from .default_plugins.openai_models import OpenAIBatch, OpenAIChatModel

    if not isinstance(model, OpenAIChatModel):
        raise ValueError(f"{model.model_id} does not speak the OpenAI format; batch files are for -m openai/NAME "
                         "(vLLM, SGLang, llama.cpp) and OpenAI models")
    return OpenAIBatch(model)


def _point_at_file(line: dict[str, Any], path: str) -> None:
    """Swap the inline image for a file:// URL (`vllm run-batch --allowed-local-media-path`)."""
    for message in line["body"].get("messages", []):
        for part in message.get("content", []) if isinstance(message.get("content"), list) else []:
            if part.get("type") == "image_url":
                part["image_url"]["url"] = "file://" + os.path.abspath(path)


def _release_unanswered(store: Store, model_id: str) -> None:
    """Photos of earlier exports whose lines never came back are exported again."""
    for job in store.batch_jobs():
        if job["provider"] != "batch-file" or job["model"] != model_id or job["status"] != EXPORTED:
            continue
        for item in store.batch_items(job["id"]):
            if item["status"] == "submitted":
                store.settle_batch_item(item["id"], EXPIRED, None)
        store.update_batch_job(job["id"], status="ended", finished_at=utcnow())


@dataclass
class ImportSummary:
    lines: int = 0
    ok: int = 0
    failed: int = 0
    ignored: int = 0  # already stored, not ours, or cut short
    unreadable: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def import_files(store: Store, model_for: Any, paths: list[str]) -> ImportSummary:
    """Store the results in output files of the OpenAI batch output shape."""
    from .default_plugins.openai_models import OpenAIBatch

    summary = ImportSummary()
    user_prices = pricing.load_user_prices()
    models: dict[str, Model] = {}
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for text in fh:
                if not text.strip():
                    continue
                summary.lines += 1
                try:
                    line = json.loads(text)
                except json.JSONDecodeError:
                    summary.unreadable += 1  # e.g. the last line of a file cut short
                    continue
                result = OpenAIBatch._item(line if isinstance(line, dict) else None)
                item = store.batch_item_by_custom_id(result.custom_id)
                if item is None or item["status"] != "submitted" or result.outcome in (EXPIRED, CANCELLED):
                    summary.ignored += 1
                    continue
                model = models.setdefault(item["model"], model_for(item["model"]))
                if result.outcome == ERRORED or result.result is None:
                    answer = failed(result.error or "errored")
                else:
                    answer = checked(result.result, schema=json.loads(item["recipe_json"]).get("schema_json"))
                cost = None
                if answer.input_tokens is not None:
                    cost = pricing.price_request(model, answer.input_tokens, answer.output_tokens or 0,
                                                 user_prices=user_prices)
                row = {"image_id": item["image_id"], "run_id": item["run_id"], **json.loads(item["recipe_json"]),
                       "result": answer, "cost_usd": cost.cost_usd if cost else None,
                       "price_in_per_m": cost.price_in_per_m if cost else None,
                       "price_out_per_m": cost.price_out_per_m if cost else None,
                       "estimated_input_tokens": item["estimated_input_tokens"]}
                failure = answer.status in FAILURES
                if store.settle_batch_item(item["id"], "failed" if failure else "done", row):
                    summary.failed += failure
                    summary.ok += not failure
                else:
                    summary.ignored += 1
    _close_answered_jobs(store)
    return summary


def _close_answered_jobs(store: Store) -> None:
    for job in store.batch_jobs():
        if job["provider"] == "batch-file" and job["status"] == EXPORTED:
            items = store.batch_items(job["id"])
            if items and all(i["status"] != "submitted" for i in items):
                store.update_batch_job(job["id"], status="ended", finished_at=utcnow(),
                                       items_ok=sum(i["status"] == "done" for i in items),
                                       items_failed=sum(i["status"] == "failed" for i in items))
