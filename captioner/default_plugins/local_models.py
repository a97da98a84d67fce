"""Vision models that run in this process: no server, no key.

`local/smolvlm-256m` and `local/smolvlm-500m` are SmolVLM v1 Instruct
(Apache-2.0; an Idefics3 model whose processor needs no torchvision) from the
Hugging Face cache; `local/PATH` loads a model folder in the Hugging Face
layout. Needs the `local` extra (`pip install 'captioner[local]'`: transformers
and torch).

The model is loaded once per process, in one worker thread that also runs
every generation, so the event loop stays free to read and prepare the next
photos. Requests arriving together are generated together (left padding) in
batches of `-o batch_size` (default 8 on a GPU, 4 on a CPU). Images go in at the
model's low-detail setting (one 512-px tile, no splitting) unless `-o detail high`.
"""

from __future__ import annotations

import asyncio
import io
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from captioner.hookspecs import hookimpl
from captioner.local_weights import Weights, WeightsError, cached_folder, extra_installed, ready_folder
from captioner.models import DEFAULT_MAX_TOKENS, FAILED, CaptionRequest, CaptionResult, Model, ProviderError
from captioner.options import MAX_TOKENS, SEED, TEMPERATURE, Option

KNOWN = {
    "smolvlm-256m": "HuggingFaceTB/SmolVLM-256M-Instruct",
    "smolvlm-500m": "HuggingFaceTB/SmolVLM-500M-Instruct",
}
PREFIX = "local/"

OPTIONS = (
    MAX_TOKENS, TEMPERATURE, SEED,
    Option("detail", "str", "low: one 512-px tile (fast on a CPU); high: the image split into tiles as well",
           choices=("low", "high")),
    Option("batch_size", "int", "Photos generated together [default: 8 on a GPU, 4 on a CPU]",
           minimum=1, maximum=256, shapes_answer=False),
    Option("device", "str", "Where to run [default: cuda, else mps, else cpu]", choices=("cpu", "cuda", "mps"),
           shapes_answer=False),
)
# Options a batch must share (the rest are per model or per process).
BATCH_KEYS = ("max_tokens", "temperature", "seed", "detail")


class LocalModel(Model):
    provider = "local"
    needs_key = False
    # Sent at up to 1536 px so `-o detail high` has pixels to split into
    # tiles; at the default low detail the processor shrinks it to one tile.
    max_side = 1536
    accepted_options: Sequence[Option] | None = OPTIONS
    request_timeout = 3600.0  # a batch on a slow CPU takes minutes, not seconds
    in_process = True

    def __init__(self, model_id: str, weights: Weights, listed: bool = True) -> None:
        self.model_id = model_id
        self.weights = weights
        self.listed = listed

    def image_tokens(self, width: int, height: int, options: Mapping[str, Any]) -> int:
        # SmolVLM: 64 tokens per 512-px tile (plus a few markers); high detail
        # adds a tile per 512 px of the longest edge on each side.
        if str(options.get("detail", "low")) != "high":
            return 64 + 6
        scale = min(1.0, 2048 / max(width, height))
        tiles = max(1, -(-int(width * scale) // 512)) * max(1, -(-int(height * scale) // 512))
        return 70 * (tiles + 1)

    def prepare_to_run(self, announce: Callable[[str], None]) -> None:
        """Make sure the weights are on disk before any photo is read (downloading them unless offline)."""
        try:
            ready_folder(self.weights, announce)
        except WeightsError as exc:
            raise ProviderError(str(exc), fatal=True) from exc

    def ready_offline(self) -> bool:
        return extra_installed() and cached_folder(self.weights) is not None

    async def caption(self, request: CaptionRequest, client: httpx.AsyncClient) -> CaptionResult:
        return await runtime_for(self).caption(request)


# -- the runtime: one loaded model and its batching queue ------------------------------

_RUNTIMES: dict[str, LocalRuntime] = {}
_RUNTIMES_LOCK = threading.Lock()


def runtime_for(model: LocalModel) -> LocalRuntime:
    """One runtime (and one copy of the weights in memory) per model per process."""
    with _RUNTIMES_LOCK:
        if model.model_id not in _RUNTIMES:
            _RUNTIMES[model.model_id] = LocalRuntime(model)
        return _RUNTIMES[model.model_id]


class LocalRuntime:
    def __init__(self, model: LocalModel) -> None:
        self.model = model
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-model")
        self.loaded: tuple[Any, Any, str] | None = None
        self.pending: list[tuple[CaptionRequest, asyncio.Future[CaptionResult]]] = []
        self.draining: dict[int, asyncio.Task[None]] = {}  # per event loop (each run has its own)

    async def caption(self, request: CaptionRequest) -> CaptionResult:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[CaptionResult] = loop.create_future()
        self.pending.append((request, future))
        task = self.draining.get(id(loop))
        if task is None or task.done():
            self.draining[id(loop)] = loop.create_task(self._drain())
        # If the caller gives up (a timeout, Ctrl-C), the future is cancelled
        # and a batch not yet started leaves it out.
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self.pending:
            await asyncio.sleep(0)  # requests sent at the same moment join this batch
            batch = self._next_batch()
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self.executor, self.generate, [r for r, _ in batch])
            except Exception as exc:  # a fault of the runtime: every photo of the batch gets it
                error = exc if isinstance(exc, ProviderError) else ProviderError(
                    f"local model failed: {exc.__class__.__name__}: {exc}"[:300])
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)

    def _next_batch(self) -> list[tuple[CaptionRequest, asyncio.Future[CaptionResult]]]:
        """The oldest waiting request and those that share its generation settings, up to the batch size."""
        self.pending = [(r, f) for r, f in self.pending if not f.done()]
        if not self.pending:
            return []
        first = self.pending[0][0]
        key = _batch_key(first)
        size = int(self.model.validate_options(first.options).get("batch_size") or default_batch_size(first))
        batch = [(r, f) for r, f in self.pending if _batch_key(r) == key][:size]
        taken = {id(f) for _, f in batch}
        self.pending = [(r, f) for r, f in self.pending if id(f) not in taken]
        return batch

    # -- in the worker thread ---------------------------------------------------------

    def load(self, options: Mapping[str, Any]) -> tuple[Any, Any, str]:
        """Processor, model and device, loaded once (from the folder the weights are in)."""
        if self.loaded is not None:
            return self.loaded
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        try:
            folder = ready_folder(self.model.weights, lambda message: None)
        except WeightsError as exc:
            raise ProviderError(str(exc), fatal=True) from exc
        device = str(options.get("device") or pick_device(torch))
        if device == "cpu":
            torch.set_num_threads(os.cpu_count() or 1)
            torch.set_flush_denormal(True)
        dtype = torch.float32 if device == "cpu" else torch.bfloat16 if device == "cuda" else torch.float16
        processor = AutoProcessor.from_pretrained(folder)
        processor.tokenizer.padding_side = "left"  # batched generation of a decoder-only model
        model = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype).to(device).eval()
        self.loaded = (processor, model, device)
        return self.loaded

    def generate(self, requests: list[CaptionRequest]) -> list[CaptionResult]:
        """Caption several photos in one batched `generate`; a batch the device has no memory
        for is split in halves (down to one photo) rather than failed."""
        try:
            return self._generate(requests)
        except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError
            if "out of memory" not in str(exc).lower() or len(requests) == 1:
                raise
            _free_device_memory()
            half = len(requests) // 2
            return self.generate(requests[:half]) + self.generate(requests[half:])

    def _generate(self, requests: list[CaptionRequest]) -> list[CaptionResult]:
        """One batched `generate`; token counts are the model's own."""
        import torch
        from PIL import Image

        options = self.model.validate_options(requests[0].options)
        processor, model, device = self.load(options)
        started = time.monotonic()
        images = [[Image.open(io.BytesIO(r.jpeg)).convert("RGB")] for r in requests]
        prompts = [processor.apply_chat_template(messages(r), add_generation_prompt=True) for r in requests]
        inputs = processor(text=prompts, images=images, return_tensors="pt", padding=True,
                           **image_settings(processor, str(options.get("detail", "low"))))
        inputs = {k: v.to(device) for k, v in inputs.items()}
        if "pixel_values" in inputs and device != "cpu":
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        max_new = int(options.get("max_tokens", DEFAULT_MAX_TOKENS))
        temperature = float(options.get("temperature", 0.0))
        if "seed" in options:
            torch.manual_seed(int(options["seed"]))
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=max_new, **sampling)
        prompt_length = inputs["input_ids"].shape[1]
        input_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        eos = _stop_ids(model, processor)
        results = []
        for row, tokens_in in zip(output[:, prompt_length:].tolist(), input_tokens):
            generated = _until_stop(row, eos)
            text = processor.tokenizer.decode(generated, skip_special_tokens=True).strip()
            result = CaptionResult(text=text or None, input_tokens=int(tokens_in), output_tokens=len(generated),
                                   usage={"device": device, "batch": len(requests),
                                          "generate_ms": int((time.monotonic() - started) * 1000)})
            if not text:
                result.status = FAILED
                result.error = ("empty caption: the output token limit was used up (raise -o max_tokens)"
                                if len(generated) >= max_new else "empty caption (the model stopped at once)")
            results.append(result)
        return results


def _free_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def default_batch_size(request: CaptionRequest) -> int:
    device = str(request.options.get("device", ""))
    if not device:
        import torch

        device = pick_device(torch)
    return 4 if device == "cpu" else 8


def pick_device(torch: Any) -> str:
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def image_settings(processor: Any, detail: str) -> dict[str, Any]:
    """Low detail: the whole image as one tile at the model's tile size, no splitting."""
    if detail == "high":
        return {}
    tile = (getattr(processor.image_processor, "max_image_size", None) or {}).get("longest_edge", 512)
    return {"do_image_splitting": False, "size": {"longest_edge": int(tile)}}


def messages(request: CaptionRequest) -> list[dict[str, Any]]:
    chat: list[dict[str, Any]] = []
    if request.system:
        chat.append({"role": "system", "content": [{"type": "text", "text": request.system}]})
    chat.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": request.prompt}]})
    return chat


def _batch_key(request: CaptionRequest) -> tuple[Any, ...]:
    return tuple(str(request.options.get(k, "")) for k in BATCH_KEYS) + (request.options.get("device", ""),)


def _stop_ids(model: Any, processor: Any) -> set[int]:
    ids = model.generation_config.eos_token_id
    stop = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if processor.tokenizer.eos_token_id is not None:
        stop.add(processor.tokenizer.eos_token_id)
    return stop


def _until_stop(row: list[int], stop: set[int]) -> list[int]:
    """The generated tokens up to the first stop token (counted: it was generated); padding after it left out."""
    for index, token in enumerate(row):
        if token in stop:
            return row[: index + 1]
    return row


@hookimpl
def register_models(register: Callable[[Model], None]) -> None:
    for name, repo in KNOWN.items():
        register(LocalModel(PREFIX + name, Weights(repo_id=repo)))


@hookimpl
def model_for_name(name: str) -> Model | None:
    if not name.startswith(PREFIX) or len(name) == len(PREFIX):
        return None
    rest = name[len(PREFIX):]
    if rest in KNOWN:
        return LocalModel(name, Weights(repo_id=KNOWN[rest]), listed=False)
    folder = Path(os.path.expanduser(rest)).resolve()
    return LocalModel(name, Weights(folder=folder), listed=False)
