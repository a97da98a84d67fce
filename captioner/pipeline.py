"""The synchronous run: plan -> prepare (threads) -> send (async) -> record.

Each stage lives in its own module; this one only wires them together:

    plan.py     which files need a caption (reads the database, never writes)
    media.py    read and prepare an image (in a thread pool, off the event loop)
    budget.py   reserve each request's worst case under --max-cost
    send.py     one request with retries, answering Answer / NoAnswer / NotSent
    ledger.py   record each answer at once and keep the summary
    control.py  the one place that decides the run stops, and why

A second way of sending (a provider batch job, submitted now and collected
later) reuses plan, prepare, budget and ledger, and replaces only `send`.
The event loop is the only thread that writes SQLite.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import os
import signal
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from . import pricing
from .budget import Budget
from .control import RunControl
from .defaults import DEFAULT_PROMPT, DEFAULT_VIDEO_PROMPT
from .ledger import Ledger, PhotoFile, failed
from .media import ImageError, PreparedImage, file_sha256, prepare_image, read_file
from .models import CaptionRequest, Model
from .plan import Plan, make_plan
from .pool import EndpointPool
from .recipe import Recipe, recipe_for, render_prompt
from .report import RunSummary
from .scan import DEFAULT_MAX_FILE_BYTES, Found
from .schema import canonical
from .send import AdaptiveLimit, Answer, ClientPool, NoAnswer, NotSent, RateCap, RetryPolicy, Sender
from .store import BATCHED, CLAIMED, DONE, Store, WriteFailed
from .video import DEFAULT_MAX_VIDEO_SECONDS, MediaPart, PreparedVideo, prepare_video, send_mode

Progress = Callable[[dict[str, Any]], None]
DEFAULT_TIMEOUT = 120.0
# What `docker stop`, systemd and a closed terminal send are treated like Ctrl-C.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class RawFile:
    """A file's bytes between reading and preparing, holding one of the run's read
    slots; `drop` frees both (the bytes may be megabytes, and a request in flight
    must not keep them)."""

    def __init__(self, slots: asyncio.Semaphore) -> None:
        self.slots = slots
        self.data: bytes | None = None
        self.holding = False

    async def hold(self) -> None:
        await self.slots.acquire()
        self.holding = True

    def drop(self) -> None:
        self.data = None
        if self.holding:
            self.holding = False
            self.slots.release()


class Writer:
    """Every database write of a run, in order, on one thread: a slow or locked
    database never stalls the event loop, so answers in flight keep arriving.
    The first write the database refuses (disk full, locked past the busy
    timeout, read-only, I/O error) stops the run from sending; later writes
    fail at once with `WriteFailed`."""

    def __init__(self, store: Store, control: RunControl) -> None:
        self.store = store
        self.control = control
        self.failure: str | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")

    async def __call__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.failure is not None:
            raise WriteFailed(self.failure)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))
        except sqlite3.Error as exc:
            if self.failure is None:
                self.failure = f"cannot write to {self.store.path} ({exc})"
                self.control.fatal(f"{self.failure}: stopped sending")
            raise WriteFailed(self.failure) from exc

    def close(self) -> None:
        self.executor.shutdown(wait=True)


@dataclass
class RunSettings:
    prompt: str = DEFAULT_PROMPT
    system: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    schema: dict[str, Any] | None = None  # a JSON schema the answer must follow (--schema)
    key: str | None = None
    max_side: int | None = None
    concurrency: int = 8
    limit: int | None = None
    force: bool = False
    retry_failed: bool = False
    max_cost: float | None = None
    retries: int = 4
    timeout: float | None = None  # seconds per attempt; None: the model's `request_timeout`, else 120
    connect_timeout: float = 10.0
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    retry_after_cap: float = 300.0
    rpm: float | None = None
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    video_prompt: str = DEFAULT_VIDEO_PROMPT
    max_video_seconds: float = DEFAULT_MAX_VIDEO_SECONDS
    videos: bool = True
    live_photos: str = "skip"  # or "separate"
    base_urls: Sequence[str] = ()  # an endpoint pool for OpenAI-compatible servers
    prepare_threads: int = max(2, os.cpu_count() or 2)

    def recipe(self, model: Model, max_side: int | None = None) -> Recipe:
        """The recipe a photo captioned by `model` with these settings carries (the one
        definition: runs, compare and eval all look captions up by it)."""
        schema = canonical(self.schema) if self.schema is not None else None
        return recipe_for(model, self.prompt, self.system, self.options, max_side or self.max_side, schema)

    def timeout_for(self, model: Model) -> float:
        """Seconds one attempt may take: --timeout if given, else what the model needs (an
        in-process model's batch on a CPU takes minutes), else 120."""
        return self.timeout if self.timeout is not None else model.request_timeout or DEFAULT_TIMEOUT

    def retry_policy(self, model: Model) -> RetryPolicy:
        return RetryPolicy(self.retries, self.timeout_for(model), self.backoff_base, self.backoff_cap,
                           self.retry_after_cap)


class Runner:
    """One `captioner caption` run of one model over a plan."""

    def __init__(self, store: Store, model: Model, settings: RunSettings, progress: Progress | None = None) -> None:
        self.store = store
        self.model = model
        self.settings = settings
        self.progress: Progress = progress or (lambda update: None)
        self.max_side = settings.max_side or model.max_side
        self.recipe = settings.recipe(model, self.max_side)
        schema = self.recipe.schema
        self.video_mode = send_mode(model.accepts_video, model.max_images, settings.options)
        video_options = {**settings.options, "max_video_seconds": f"{settings.max_video_seconds:g}"}
        self.video_recipe = recipe_for(model, settings.video_prompt, settings.system, video_options, self.max_side,
                                       schema)
        self.user_prices = pricing.load_user_prices()
        self.control = RunControl(model.model_id)
        self.budget = Budget(settings.max_cost, model, settings.options, self.user_prices)
        urls = list(settings.base_urls) or model.endpoints()
        # Several endpoints (or one named with --base-url): a pool, each endpoint with its own limit.
        self.limit: AdaptiveLimit | EndpointPool = (
            EndpointPool(urls, settings.concurrency) if settings.base_urls or len(urls) > 1
            else AdaptiveLimit(settings.concurrency))
        self.inflight: dict[str, asyncio.Future[None]] = {}
        self.finished_shas: set[str] = set()  # content handled in this run, even with --force

    def plan(self, roots: Sequence[str]) -> Plan:
        s = self.settings
        return make_plan(self.store, roots, self.recipe, video_recipe=self.video_recipe, videos=s.videos,
                         live_photos=s.live_photos, force=s.force,
                         retry_failed=s.retry_failed, include=s.include, exclude=s.exclude, limit=s.limit,
                         max_bytes=s.max_file_bytes)

    def run(self, plan: Plan) -> RunSummary:
        """Open the run's row, caption the plan, and close the row with the true status."""
        s = self.settings
        run_id = self.store.start_run(self.model.model_id, s.prompt, self._run_options())
        summary = RunSummary(run_id, self.model.model_id, skipped_done=plan.skipped_done,
                             skipped=list(plan.skipped), not_sent=plan.over_limit,
                             database=os.path.abspath(self.store.path), failed_before=plan.failed_before,
                             found=len(plan.todo) + plan.skipped_done + plan.over_limit)
        self.plan_done = plan.done
        images_total = len(plan.todo) + plan.skipped_done
        self.write = Writer(self.store, self.control)
        self.ledger = Ledger(self.store, self.model, self.recipe, summary, self.control, self.user_prices,
                             self.progress, concurrency=lambda: int(self.limit.limit), write=self.write)
        try:
            # Taken from the plan as they are sent, so a finished file's entry is not kept to the end.
            asyncio.run(self._run_all(_consumed(plan.todo)))
        except BaseException as exc:
            if not isinstance(exc, KeyboardInterrupt):
                self.control.crashed(f"captioner stopped on an unexpected error: {exc.__class__.__name__}: {exc}")
            raise
        finally:
            self.write.close()
            summary.status, summary.message = self.control.status, self.control.message
            if isinstance(self.limit, EndpointPool):
                summary.endpoints = self.limit.stats()
            self._finish(run_id, summary, images_total)
        return summary

    def _finish(self, run_id: int, summary: RunSummary, images_total: int) -> None:
        """Close the run's row with its true status; if the database cannot take
        it, the recovery file does, and the next run records it."""
        ledger = self.ledger
        try:
            self.store.release_all()
            totals = self.store.finish_run(run_id, summary.status, images_total, summary.endpoints or None)
            summary.unpriced = totals["unpriced"]
        except sqlite3.Error:
            kept = self.store.keep_for_recovery({"kind": "run_end", "run_id": run_id, "status": summary.status,
                                                 "images_total": images_total})
            if kept is not None:
                ledger.recovery_files.add(kept)
        if ledger.kept_for_recovery:
            files = ", ".join(str(p) for p in sorted(ledger.recovery_files))
            summary.message = (f"{summary.message or 'the database refused a write'}; "
                               f"{ledger.kept_for_recovery} paid answers kept in {files}: the next run stores them")
        if ledger.lost:
            summary.message = f"{summary.message}; {ledger.lost} paid answers could not be kept anywhere"

    def _run_options(self) -> dict[str, Any]:
        s = self.settings
        return {
            "system": s.system,
            "options": s.options,
            "max_side": self.max_side,
            "concurrency": s.concurrency,
            "max_cost": s.max_cost,
        }

    async def _run_all(self, todo: Iterator[Found]) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(max_workers=s.prepare_threads, thread_name_prefix="prepare")
        timeout = httpx.Timeout(s.timeout_for(self.model), connect=s.connect_timeout)
        queue = todo
        tasks: list[asyncio.Task[None]] = []

        def on_interrupt() -> None:
            if self.control.interrupt():
                for task in tasks:
                    task.cancel()
            else:
                self.progress({"message": "stopping: waiting for requests in flight (Ctrl-C again to abandon them)"})

        for stop_signal in STOP_SIGNALS:
            try:
                loop.add_signal_handler(stop_signal, on_interrupt)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        try:
            async with ClientPool(timeout) as clients:
                sender = Sender(self.model, clients, self.control, s.retry_policy(self.model), self.limit,
                                RateCap(s.rpm), on_retry=self.ledger.retried)
                # More workers than request slots, so images are being prepared
                # while the slots are busy waiting on the network.
                workers = self.limit.maximum + s.prepare_threads
                self.reading = asyncio.Semaphore(2 * s.prepare_threads)
                tasks = [asyncio.create_task(self._worker(queue, sender, executor)) for _ in range(workers)]
                results = await asyncio.gather(*tasks, return_exceptions=True)
                for result in results:
                    if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                        raise result
            await self.ledger.close()
        finally:
            for stop_signal in STOP_SIGNALS:
                try:
                    loop.remove_signal_handler(stop_signal)
                except (NotImplementedError, RuntimeError, ValueError):
                    pass
            executor.shutdown(wait=True, cancel_futures=True)
        self.ledger.not_sent(sum(1 for _ in queue))

    async def _worker(self, queue: Iterator[Found], sender: Sender, executor: ThreadPoolExecutor) -> None:
        for found in queue:
            if self.control.stopping:
                self.ledger.not_sent()
                continue
            try:
                await self._one(found, sender, executor)
            except WriteFailed:
                self.ledger.not_sent()  # the database refused a write: the run is stopping

    async def _one(self, found: Found, sender: Sender, executor: ThreadPoolExecutor) -> None:
        """Read one file and caption its content unless it is done, in flight, or claimed elsewhere.

        At most `2 x prepare threads` files are held read but not yet prepared, and a
        file's bytes are dropped the moment it is prepared: a run of 12 MP photos keeps
        a few originals in memory, not one per request in flight."""
        s = self.settings
        recipe = (self.video_recipe if found.kind == "video" else self.recipe).key
        loop = asyncio.get_running_loop()
        raw = RawFile(self.reading)
        await raw.hold()
        try:
            try:
                if found.kind == "video":  # hashed in pieces, prepared from the file: never held whole
                    raw.data, sha = b"", await loop.run_in_executor(executor, file_sha256, found.path)
                else:
                    raw.data, sha = await loop.run_in_executor(executor, read_file, found.path, s.max_file_bytes)
            except OSError as exc:
                self.ledger.skipped(found.path, f"cannot read: {exc.strerror or exc}")
                return
            # Same content at another path (or being captioned right now): not paid for twice.
            if sha in self.inflight:
                raw.drop()  # rare: a copy waits for its twin's answer without holding a read slot
                while sha in self.inflight:
                    await asyncio.shield(self.inflight[sha])
            if sha in self.finished_shas or (self.plan_done is not None and sha in self.plan_done.shas):
                raw.drop()
                await self._not_new(found, sha, DONE)
                return
            if raw.data is None and found.kind != "video":  # its twin got no answer: read again to caption it
                await raw.hold()
                try:
                    raw.data, again = await loop.run_in_executor(executor, read_file, found.path, s.max_file_bytes)
                except OSError as exc:
                    self.ledger.skipped(found.path, f"cannot read: {exc.strerror or exc}")
                    return
                if again != sha:  # never caption other bytes under this content's hash
                    self.ledger.skipped(found.path, "changed while being captioned (run again to caption it)")
                    return
            await self._claim_and_caption(found, raw, sha, recipe, sender, executor)
        finally:
            raw.drop()

    async def _claim_and_caption(self, found: Found, raw: RawFile, sha: str, recipe: str, sender: Sender,
                                 executor: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        # Registered before the claim is awaited, so a copy read meanwhile waits for this one.
        finished = loop.create_future()
        self.inflight[sha] = finished
        claimed = False
        try:
            outcome = await self.write(self.store.claim, sha, recipe, retry_failed=self.settings.retry_failed,
                                       force=self.settings.force)
            claimed = outcome == CLAIMED
            if claimed:
                await self._caption_new(found, raw, sha, sender, executor)
        finally:
            del self.inflight[sha]
            finished.set_result(None)
            if claimed:
                self.finished_shas.add(sha)
                try:
                    await self.write(self.store.release, sha, recipe)
                except WriteFailed:
                    pass  # claims of this process are released when the run ends, or expire
        if not claimed:
            raw.drop()
            await self._not_new(found, sha, outcome)

    async def _not_new(self, found: Found, sha: str, outcome: str) -> None:
        """A file whose content is captioned already, or held by another captioner process."""
        await self.write(self.store.save_image, found.path, sha, found.size, found.mtime)
        if outcome == DONE:
            self.ledger.already_done()
            if self.plan_done is not None and sha in self.plan_done.failed_shas:
                self.ledger.summary.failed_before += 1
        else:
            reason = ("in an open batch job (captioner batches collect)" if outcome == BATCHED
                      else "being captioned by another captioner process")
            self.ledger.skipped(found.path, reason)
            self.progress({"advance": 1})

    def _prepare(self, found: Found, data: bytes) -> PreparedImage:
        """(In a worker thread.) The photo resized, or the clip turned into what this model is sent."""
        return prepare_for(self, found, data)

    def request_for(self, prepared: PreparedImage, recipe: Recipe, path: str) -> tuple[int, CaptionRequest]:
        """The request for one prepared photo or clip, and its estimated input tokens (what
        the budget reserves). Synchronous runs, batch jobs and exported files all send this.
        The prompt's {filename}, {folder}, {taken_at}, {camera} and {gps} are this file's."""
        s = self.settings
        estimated, media = self._estimate_and_media(prepared, recipe)
        return estimated, CaptionRequest(jpeg=prepared.jpeg, width=prepared.sent_width, height=prepared.sent_height,
                                         prompt=render_prompt(recipe.prompt, path, prepared.exif),
                                         system=recipe.system, options=s.options, key=s.key,
                                         media=media, schema=s.schema)

    def _estimate_and_media(self, prepared: PreparedImage, recipe: Recipe) -> tuple[int, tuple[MediaPart, ...]]:
        """Estimated input tokens of the request, and the media parts it carries besides its image."""
        s = self.settings
        if not isinstance(prepared, PreparedVideo):
            return pricing.estimated_input_tokens(self.model, prepared.sent_width, prepared.sent_height,
                                                  s.options, recipe.prompt, recipe.system, recipe.schema), ()
        if prepared.clipped:
            self.ledger.summary.clipped += 1
        video = next((p for p in prepared.parts if p.kind == "video"), None)
        estimated, _ = pricing.estimated_video_tokens(
            self.model, self.video_mode, video.duration_s or 0 if video else prepared.duration_s,
            bool(video and video.has_audio), [(p.width, p.height) for p in prepared.parts if p.kind == "image"],
            (prepared.sent_width, prepared.sent_height), s.options, recipe.prompt, recipe.system, recipe.schema)
        return estimated, prepared.parts

    async def _caption_new(self, found: Found, raw: RawFile, sha: str, sender: Sender,
                           executor: ThreadPoolExecutor) -> None:
        """Prepare, reserve, send and record one claimed photo or clip."""
        s = self.settings
        loop = asyncio.get_running_loop()
        recipe = self.video_recipe if found.kind == "video" else self.recipe
        try:
            prepared = await loop.run_in_executor(executor, self._prepare, found, raw.data or b"")
        except ImageError as exc:
            raw.drop()
            image_id = await self.write(self.store.save_image, found.path, sha, found.size, found.mtime,
                                        kind=found.kind)
            await self.ledger.record(image_id, found.path, failed(str(exc)), None, recipe=recipe)
            return
        raw.drop()  # the original's bytes go now, not when the answer comes back
        image_id = await self.write(self.store.save_image, found.path, sha, found.size, found.mtime, prepared,
                                    kind=found.kind)
        self.ledger.know_file(image_id, PhotoFile(found.path, sha, found.size, found.mtime))
        if self.control.stopping:
            self.ledger.not_sent()
            return
        estimated, request = self.request_for(prepared, recipe, found.path)
        worst_case = self.budget.worst_case(estimated)
        reserved = 0.0

        async def reserve() -> bool:
            nonlocal reserved
            if not await self.budget.reserve(worst_case):
                self.control.budget_reached(s.max_cost or 0.0)
                return False
            reserved = worst_case
            return True

        outcome = await sender.send(request, reserve if s.max_cost is not None else None)
        # What the budget counts as spent: the bill; or, where the bill is unknown
        # (untrusted usage, a timeout after sending), the whole reservation.
        spent: float | None = 0.0
        if isinstance(outcome, Answer):
            spent = await self.ledger.record(image_id, found.path, outcome.result, outcome.duration_ms, estimated,
                                             recipe=recipe)
            if spent is None:
                spent = reserved
        elif isinstance(outcome, NoAnswer):
            await self.ledger.record_no_answer(image_id, found.path, outcome.error, estimated, recipe=recipe)
            spent = reserved if outcome.maybe_billed else 0.0
        elif isinstance(outcome, NotSent):
            self.ledger.not_sent()
        await self.budget.settle(reserved, spent)


def _consumed(todo: list[Found]) -> Iterator[Found]:
    """The plan's files, each dropped from the list as it is handed out (memory stays flat
    over a library of any size)."""
    queue = collections.deque(todo)
    todo.clear()
    while queue:
        yield queue.popleft()


def prepare_for(runner: Runner, found: Found, data: bytes) -> PreparedImage:
    s = runner.settings
    if found.kind != "video":
        return prepare_image(data, runner.max_side)
    mode = runner.video_mode
    return prepare_video(found.path, runner.max_side, frames=mode.frames, separate_frames=mode.separate_frames,
                         native=mode.native, keep_audio=mode.keep_audio, max_seconds=s.max_video_seconds)


def caption_paths(
    roots: Sequence[str],
    model: Model,
    store: Store,
    settings: RunSettings,
    progress_factory: Callable[[int], Progress] | None = None,
) -> RunSummary:
    """Plan and run one captioning job; the CLI's single entry point."""
    runner = Runner(store, model, settings)
    plan = runner.plan(roots)
    if progress_factory is not None:
        runner.progress = progress_factory(len(plan.todo))
    return runner.run(plan)
