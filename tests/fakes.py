"""Fake provider servers on 127.0.0.1 that speak the real wire formats.

Each server decodes the image it receives and answers with a caption that
names the image's content (a hash of the JPEG bytes plus its size), so tests
can prove every caption was stored against the right photo. Token usage is
reported by the provider's own published image-token rule, so billing and
estimates can be checked against each other.

Faults are scripted per request: `server.faults` is a list consumed in order
(None = answer normally), or `server.fault_fn(n)` decides for request n.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from clips import clip_facts
from PIL import Image


def image_label(jpeg: bytes) -> str:
    """What the fake 'sees': a content hash and the pixel size."""
    with Image.open(io.BytesIO(jpeg)) as im:
        w, h = im.size
    return f"photo {hashlib.sha256(jpeg).hexdigest()[:16]} {w}x{h}"


def structured_object(schema: dict, label: str) -> dict:
    """What a fake answers to a schema: every property filled in, keywords that
    always include "beach" (so a test can search for it) and one from the image."""
    answer: dict[str, Any] = {}
    for name, spec in (schema.get("properties") or {}).items():
        kind = str(spec.get("type", "string")).lower()
        if kind == "array":
            answer[name] = ["beach", "Sunset", "photo-" + label.split()[1][:6]]
        elif kind == "integer":
            answer[name] = 3
        elif kind == "number":
            answer[name] = 0.5
        elif kind == "boolean":
            answer[name] = True
        else:
            answer[name] = f"{name} of {label}"
    return answer


def structured_text(schema: dict, label: str) -> str:
    return json.dumps(structured_object(schema, label))


def openai_tile_tokens(w: int, h: int, base: int = 2833, tile: int = 5667) -> int:
    scale = min(1.0, 2048 / max(w, h))
    w, h = w * scale, h * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    return base + tile * math.ceil(w / 512) * math.ceil(h / 512)


# What OpenAI bills per image, written out here independently of the plugin so
# the estimate tests compare two implementations of the published rules.
OPENAI_PATCH_MULTIPLIERS = {"gpt-4.1-mini": 1.62, "gpt-4.1-nano": 2.46, "gpt-5-mini": 1.62, "gpt-5-nano": 2.46,
                            "o4-mini": 1.72}


def openai_patch_tokens(w: int, h: int, multiplier: float) -> int:
    patches = math.ceil(w / 32) * math.ceil(h / 32)
    if patches > 1536:
        r = math.sqrt(32 * 32 * 1536 / (w * h))
        r *= min(math.floor(w * r / 32) / (w * r / 32), math.floor(h * r / 32) / (h * r / 32))
        patches = min(1536, math.ceil(w * r / 32) * math.ceil(h * r / 32))
    return math.ceil(patches * multiplier)


def openai_image_tokens(model: str, w: int, h: int) -> int:
    if model in OPENAI_PATCH_MULTIPLIERS:
        return openai_patch_tokens(w, h, OPENAI_PATCH_MULTIPLIERS[model])
    if model.startswith("gpt-4o-mini"):
        return openai_tile_tokens(w, h, 2833, 5667)
    return openai_tile_tokens(w, h, 85, 170)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any
    images: list[bytes]
    at: float = field(default_factory=time.monotonic)  # when the request arrived


@dataclass
class Fault:
    """An error answer: status, JSON body, headers; or a transport fault."""

    status: int = 500
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    kind: str = "http"  # http | reset | hang | garbage | truncated | raw | trickle | keepalive


class FakeServer:
    """A threaded HTTP server; subclasses implement `answer(path, body)`."""

    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency
        self.received: list[Received] = []
        self.faults: list[Fault | None] = []
        self.fault_fn: Callable[[int], Fault | None] | None = None
        self.count = 0
        self.lock = threading.Lock()
        self.hang_seconds = 30.0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server._handle(self, None)

            def do_DELETE(self) -> None:
                status, payload, headers = server.answer_delete(self.path)
                server._send(self, status, payload, headers)

            def do_POST(self) -> None:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":  # a streamed upload
                    raw = b""
                    while size := int(self.rfile.readline().strip() or b"0", 16):
                        raw += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                else:
                    raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server._handle(self, raw)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        # A client that hangs up mid-answer (as captioner does on an oversized body) is not news.
        self.httpd.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        # A short poll interval lets shutdown() return at once instead of after 0.5 s.
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01},
                                       daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def image_requests(self) -> list[Received]:
        return [r for r in self.received if r.images]

    def _next_fault(self) -> Fault | None:
        with self.lock:
            n = self.count
            self.count += 1
            if self.fault_fn is not None:
                return self.fault_fn(n)
            return self.faults.pop(0) if self.faults else None

    def _handle(self, handler: BaseHTTPRequestHandler, raw: bytes | None) -> None:
        body = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw
        path = handler.path
        if handler.command == "GET":
            status, payload, headers = self.answer_get(path)
            self._send(handler, status, payload, headers)
            return
        images = self.extract_images(body) if isinstance(body, dict) else []
        with self.lock:
            self.received.append(Received(path, dict(handler.headers.items()), body, images))
        fault = self._next_fault()
        if self.latency:
            time.sleep(self.latency)
        if fault is not None:
            self._fault(handler, fault)
            return
        status, payload, headers = self.answer(path, body, images, dict(handler.headers.items()))
        self._send(handler, status, payload, headers)

    def _fault(self, handler: BaseHTTPRequestHandler, fault: Fault) -> None:
        if fault.kind == "reset":
            handler.close_connection = True
            handler.connection.shutdown(2)
            return
        if fault.kind == "hang":
            time.sleep(self.hang_seconds)
            handler.close_connection = True
            return
        if fault.kind == "garbage":
            self._send(handler, 200, b"{\"choices\": [ not json", {})
            return
        if fault.kind == "raw":  # exactly these bytes and headers (gzip bombs, huge bodies)
            handler.send_response(fault.status)
            for key, value in fault.headers.items():
                handler.send_header(key, value)
            handler.send_header("Content-Length", str(len(fault.body)))
            handler.end_headers()
            handler.wfile.write(fault.body)
            return
        if fault.kind in ("trickle", "keepalive"):  # a body that never ends, a little at a time
            handler.send_response(200)
            handler.send_header("Content-Type", "text/event-stream" if fault.kind == "keepalive"
                                else "application/json")
            handler.end_headers()
            piece = b": keep-alive\n\n" if fault.kind == "keepalive" else b" "
            handler.close_connection = True
            try:
                for _ in range(int(self.hang_seconds * 5)):
                    handler.wfile.write(piece)
                    handler.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass
            return
        if fault.kind == "truncated":
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", "500")
            handler.end_headers()
            handler.wfile.write(b'{"choices": [')
            handler.close_connection = True
            return
        self._send(handler, fault.status, fault.body if fault.body is not None else {"error": "fault"}, fault.headers)

    def _send(self, handler: BaseHTTPRequestHandler, status: int, payload: Any, headers: dict[str, str]) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", headers.pop("Content-Type", "application/json"))
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    # -- subclass API --
    def extract_images(self, body: dict) -> list[bytes]:
        return []

    def answer(self, path: str, body: Any, images: list[bytes], headers: dict[str, str]) -> tuple[int, Any, dict]:
        raise NotImplementedError

    def answer_delete(self, path: str) -> tuple[int, Any, dict]:
        return 404, {"error": "not found"}, {}

    def answer_get(self, path: str) -> tuple[int, Any, dict]:
        return 404, {"error": "not found"}, {}


class FakeOpenAI(FakeServer):
    """OpenAI Chat Completions: POST /v1/chat/completions; and the Batch API:
    POST /v1/files (multipart, purpose=batch), POST /v1/batches, GET /v1/batches[/{id}],
    POST /v1/batches/{id}/cancel, GET /v1/files/{id}/content. A batch is
    `validating`, then `in_progress` for `batch_polls` looks, then `completed`;
    `item_outcome(custom_id)` may make an item "error", "expired" or "missing"."""

    def __init__(self, latency: float = 0.0, output_tokens: int = 20, reasoning_tokens: int = 0) -> None:
        super().__init__(latency)
        self.output_tokens = output_tokens
        self.reasoning_tokens = reasoning_tokens
        self.answer_override: Callable[[dict], dict] | None = None
        self.uploads: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.batch_polls = 1
        self.create_delay = 0.0  # seconds before answering a create (after making the batch)
        self.item_outcome: Callable[[str], str | None] = lambda custom_id: None
        self.batch_bills: list[dict] = []  # usage of every batch item answered
        self.served_models = ["gpt-4o-mini", "gpt-4.1-nano", "llava"]  # what GET /v1/models lists

    def _batch_api(self, method: str, path: str, body: Any, headers: dict[str, str]):
        if method == "POST" and path == "/v1/files":
            content = _multipart_file(body, headers.get("Content-Type", ""))
            file_id = f"file-{len(self.uploads) + 1}"
            self.uploads[file_id] = content
            return 200, {"id": file_id, "object": "file", "purpose": "batch", "bytes": len(content)}, {}
        if method == "POST" and path == "/v1/batches":
            batch_id = f"batch_{len(self.batches) + 1}"
            lines = [json.loads(line) for line in self.uploads[body["input_file_id"]].decode().splitlines()]
            self.batches[batch_id] = {"id": batch_id, "object": "batch", "status": "validating", "polls": 0,
                                      "metadata": body.get("metadata"), "lines": lines, "output_file_id": None,
                                      "error_file_id": None, "endpoint": body["endpoint"],
                                      "request_counts": {"total": len(lines), "completed": 0, "failed": 0}}
            if self.create_delay:
                time.sleep(self.create_delay)
            return 200, self._public(self.batches[batch_id]), {}
        if method == "GET" and path.startswith("/v1/batches?"):
            return 200, {"object": "list", "data": [self._public(b) for b in self.batches.values()]}, {}
        if method == "GET" and path.startswith("/v1/batches/"):
            batch = self.batches[path.rsplit("/", 1)[1]]
            batch["polls"] += 1
            if batch["status"] in ("validating", "in_progress"):
                batch["status"] = "in_progress" if batch["polls"] <= self.batch_polls else self._finish(batch)
            elif batch["status"] == "cancelling":
                batch["status"] = self._finish(batch, cancelled=True)
            return 200, self._public(batch), {}
        if method == "POST" and path.endswith("/cancel"):
            batch = self.batches[path.split("/")[3]]
            batch["status"] = "cancelling"
            return 200, self._public(batch), {}
        if method == "GET" and path.startswith("/v1/files/") and path.endswith("/content"):
            return 200, self.uploads[path.split("/")[3]], {"Content-Type": "application/jsonl"}
        return None

    @staticmethod
    def _public(batch: dict) -> dict:
        return {k: v for k, v in batch.items() if k not in ("polls", "lines")}

    def _finish(self, batch: dict, cancelled: bool = False) -> str:
        """Run every line as a synchronous request would, into an output and an error file."""
        output, errors = [], []
        for n, line in enumerate(batch["lines"]):
            custom_id = line["custom_id"]
            outcome = "cancelled" if cancelled and n % 2 else self.item_outcome(custom_id)
            if outcome == "missing":
                continue
            if outcome in ("expired", "cancelled"):
                errors.append({"id": f"batch_req_{n}", "custom_id": custom_id, "response": None,
                               "error": {"code": f"batch_{outcome}", "message": f"request {outcome}"}})
                continue
            if outcome == "error":
                errors.append({"id": f"batch_req_{n}", "custom_id": custom_id, "error": None, "response": {
                    "status_code": 400, "request_id": f"req_{n}",
                    "body": {"error": {"message": "Invalid image.", "type": "invalid_request_error"}}}})
                continue
            images = self.extract_images(line["body"])
            _, reply, _ = self.answer(line["url"], line["body"], images, {})
            self.batch_bills.append(reply["usage"])
            output.append({"id": f"batch_req_{n}", "custom_id": custom_id, "error": None,
                           "response": {"status_code": 200, "request_id": f"req_{n}", "body": reply}})
        for name, rows in (("output_file_id", output), ("error_file_id", errors)):
            if rows:
                file_id = f"file-{len(self.uploads) + 1}"
                self.uploads[file_id] = "".join(json.dumps(r) + "\n" for r in rows).encode()
                batch[name] = file_id
        batch["request_counts"] = {"total": len(batch["lines"]), "completed": len(output), "failed": len(errors)}
        return "cancelled" if cancelled else "completed"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def extract_images(self, body: dict) -> list[bytes]:
        images = []
        for message in body.get("messages", []):
            content = message.get("content")
            if isinstance(content, list):
                for part in content:
                    if part.get("type") == "image_url":
                        url = part["image_url"]["url"]
                        images.append(base64.b64decode(url.split(",", 1)[1]))
        return images

    def prompt_tokens(self, body: dict, images: list[bytes]) -> int:
        text = " ".join(
            p.get("text", "") if isinstance(p, dict) else ""
            for m in body.get("messages", [])
            for p in (m["content"] if isinstance(m["content"], list) else [{"text": m["content"]}])
        )
        tokens = len(text.split()) + 8
        if body.get("response_format"):
            tokens += text_tokens(json.dumps(body["response_format"]))
        for jpeg in images:
            with Image.open(io.BytesIO(jpeg)) as im:
                tokens += openai_image_tokens(body.get("model", ""), *im.size)
        return tokens

    def answer_get(self, path):
        if path == "/v1/models":
            return 200, {"object": "list", "data": [{"id": m, "object": "model"} for m in self.served_models]}, {}
        return self._batch_api("GET", path, None, {}) or (404, {"error": {"message": "unknown path"}}, {})

    def answer(self, path, body, images, headers):
        batch = self._batch_api("POST", path, body, headers)
        if batch is not None:
            return batch
        if not path.endswith("/chat/completions"):
            return 404, {"error": {"message": "unknown path"}}, {}
        if not images:
            return 400, {"error": {"message": "no image", "type": "invalid_request_error"}}, {}
        content = image_label(images[0])
        output_tokens = self.output_tokens
        response_format = body.get("response_format")
        if response_format is not None:
            spec = response_format.get("json_schema") or {}
            if response_format.get("type") != "json_schema" or not isinstance(spec.get("schema"), dict) \
                    or not spec.get("name"):
                return 400, {"error": {"message": "Invalid response_format", "type": "invalid_request_error"}}, {}
            content = structured_text(spec["schema"], content)
            output_tokens += text_tokens(content)
        reply = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "model": body.get("model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": self.prompt_tokens(body, images),
                "completion_tokens": output_tokens + self.reasoning_tokens,
                "total_tokens": 0,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            },
        }
        reply["usage"]["total_tokens"] = reply["usage"]["prompt_tokens"] + reply["usage"]["completion_tokens"]
        if self.answer_override is not None:
            reply = self.answer_override(reply)
        return 200, reply, {}


class BatchJobs:
    """Batch jobs as the fakes keep them: a job runs its requests as synchronous
    ones once polled `batch_polls` times; `item_outcome(custom_id)` may make an
    item "error", "expired" or "missing"; a cancelled job skips every other item."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.batch_polls = 1
        self.create_delay = 0.0
        self.item_outcome: Callable[[str], str | None] = lambda custom_id: None
        self.batch_bills: list[dict] = []

    def new_job(self, job_id: str, requests: list[tuple[str, dict]], **extra: Any) -> dict[str, Any]:
        job = {"id": job_id, "requests": requests, "polls": 0, "state": "running", "results": None,
               "created_at": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()), **extra}
        self.jobs[job_id] = job
        if self.create_delay:
            time.sleep(self.create_delay)
        return job

    def advance(self, job: dict[str, Any], run_one: Callable[[dict], dict]) -> None:
        job["polls"] += 1
        if job["state"] == "running" and job["polls"] > self.batch_polls:
            job["state"] = "ended"
        if job["state"] in ("ended", "cancelling") and job["results"] is None:
            job["results"] = []
            for n, (custom_id, body) in enumerate(job["requests"]):
                outcome = "cancelled" if job["state"] == "cancelling" and n % 2 else self.item_outcome(custom_id)
                if outcome == "missing":
                    continue
                reply = None
                if outcome is None:
                    reply = run_one(body)
                    self.batch_bills.append(reply)
                job["results"].append((custom_id, outcome, reply))
            job["state"] = "ended"


def _multipart_file(body: Any, content_type: str) -> bytes:
    """The file part of a multipart/form-data body."""
    boundary = content_type.split("boundary=", 1)[1].strip().strip('"').encode()
    for part in bytes(body).split(b"--" + boundary):
        head, _, content = part.partition(b"\r\n\r\n")
        if b"filename=" in head:
            return content.rsplit(b"\r\n", 1)[0]
    raise ValueError("no file in the upload")


def text_tokens(text: str) -> int:
    return len(text.split()) + 8


def image_size(jpeg: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(jpeg)) as im:
        return im.size


class FakeAnthropic(FakeServer, BatchJobs):
    """Anthropic Messages: POST /v1/messages, x-api-key + anthropic-version; and
    Message Batches: POST/GET /v1/messages/batches[/{id}[/cancel|/results]]."""

    def __init__(self, latency: float = 0.0, output_tokens: int = 24) -> None:
        FakeServer.__init__(self, latency)
        BatchJobs.__init__(self)
        self.output_tokens = output_tokens
        self.answer_override: Callable[[dict], dict] | None = None
        self.respond: Callable[[str, list[bytes]], str] | None = None  # (prompt text, images) -> answer text

    def _public(self, job: dict) -> dict:
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if job["state"] == "ended":
            for _, outcome, _ in job["results"]:
                counts[{None: "succeeded", "error": "errored", "cancelled": "canceled"}.get(outcome, outcome)] += 1
        else:
            counts["processing"] = len(job["requests"])
        return {"id": job["id"], "type": "message_batch", "created_at": job["created_at"],
                "processing_status": "ended" if job["state"] == "ended" else (
                    "canceling" if job["state"] == "cancelling" else "in_progress"),
                "request_counts": counts,
                "results_url": f"{self.url}/v1/messages/batches/{job['id']}/results"
                if job["state"] == "ended" else None}

    def _run_one(self, body: dict) -> dict:
        return self.answer("/v1/messages", body, self.extract_images(body), {"anthropic-version": "2023-06-01"})[1]

    def answer_get(self, path):
        if path.startswith("/v1/messages/batches?"):
            return 200, {"data": [self._public(j) for j in self.jobs.values()], "has_more": False}, {}
        parts = path.split("?")[0].split("/")
        job = self.jobs.get(parts[4]) if len(parts) > 4 else None
        if job is None:
            return 404, {"type": "error", "error": {"type": "not_found_error", "message": "no such batch"}}, {}
        if path.endswith("/results"):
            lines = []
            for custom_id, outcome, reply in job["results"]:
                result = {"type": "succeeded", "message": reply} if outcome is None else (
                    {"type": "errored", "error": {"type": "error", "error": {
                        "type": "invalid_request_error", "message": "Could not process image"}}}
                    if outcome == "error" else {"type": "canceled" if outcome == "cancelled" else outcome})
                lines.append(json.dumps({"custom_id": custom_id, "result": result}))
            return 200, ("\n".join(lines) + "\n").encode(), {"Content-Type": "application/binary"}
        self.advance(job, self._run_one)
        return 200, self._public(job), {}

    def extract_images(self, body: dict) -> list[bytes]:
        return [
            base64.b64decode(block["source"]["data"])
            for message in body.get("messages", [])
            for block in message.get("content", [])
            if isinstance(block, dict) and block.get("type") == "image"
        ]

    def answer(self, path, body, images, headers):
        if path == "/v1/messages/batches":
            job = self.new_job(f"msgbatch_{len(self.jobs) + 1}",
                               [(r["custom_id"], r["params"]) for r in body["requests"]])
            return 200, self._public(job), {}
        if path.startswith("/v1/messages/batches/") and path.endswith("/cancel"):
            job = self.jobs[path.split("/")[4]]
            job["state"] = "cancelling"
            return 200, self._public(job), {}
        if path != "/v1/messages":
            return 404, {"type": "error", "error": {"type": "not_found_error", "message": "no such path"}}, {}
        if "anthropic-version" not in {k.lower() for k in headers}:
            return 400, {"type": "error", "error": {"type": "invalid_request_error",
                                                    "message": "anthropic-version header is required"}}, {}
        tokens = 0
        for jpeg in images:
            w, h = image_size(jpeg)
            tokens += math.ceil(w * h / 750)  # the images we send are within Anthropic's size limits
        text = " ".join(b.get("text", "") for m in body["messages"] for b in m["content"] if b.get("type") == "text")
        label = image_label(images[0]) if images else "no image"
        content: list[dict] = [{"type": "text", "text": self.respond(text, images) if self.respond else label}]
        stop, output_tokens = "end_turn", self.output_tokens
        if body.get("tools"):
            tool = body["tools"][0]
            choice = body.get("tool_choice") or {}
            if choice.get("type") != "tool" or choice.get("name") != tool.get("name") or \
                    not isinstance(tool.get("input_schema"), dict):
                return 400, {"type": "error", "error": {"type": "invalid_request_error",
                                                        "message": "tool_choice names no tool"}}, {}
            answer = structured_object(tool["input_schema"], label)
            content = [{"type": "tool_use", "id": "toolu_fake", "name": tool["name"], "input": answer}]
            stop = "tool_use"
            tokens += 313 + text_tokens(json.dumps(body["tools"]))  # the tool-use system prompt and the tool
            output_tokens += text_tokens(json.dumps(answer))
        reply = {
            "id": "msg_fake", "type": "message", "role": "assistant", "model": body["model"],
            "content": content,
            "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": tokens + text_tokens(text) + text_tokens(body.get("system", "")),
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                      "output_tokens": output_tokens},
        }
        if self.answer_override is not None:
            reply = self.answer_override(reply)
        return 200, reply, {}


class FakeGemini(FakeServer, BatchJobs):
    """Gemini generateContent: POST /v1beta/models/{model}:generateContent, x-goog-api-key.

    Videos come inline or through the Files API (resumable upload: start, then
    upload+finalize; the file is PROCESSING for `processing_polls` GETs, then
    ACTIVE; DELETE removes it). A clip is billed as Gemini bills it: 258 tokens a
    second of video (66 at low media resolution) and 32 a second of audio."""

    def __init__(self, latency: float = 0.0, output_tokens: int = 22, thoughts_tokens: int = 0) -> None:
        FakeServer.__init__(self, latency)
        BatchJobs.__init__(self)
        self.output_tokens = output_tokens
        self.thoughts_tokens = thoughts_tokens
        self.files: dict[str, dict[str, Any]] = {}
        self.deleted: list[str] = []
        self.videos: list[bytes] = []  # every clip seen, inline or uploaded
        self.processing_polls = 1
        self.answer_override: Callable[[dict], dict] | None = None

    def _operation(self, job: dict) -> dict:
        """A batch job as Gemini's long-running operation (int64 counts as strings)."""
        ended = job["state"] == "ended"
        stats = {"requestCount": str(len(job["requests"]))}
        state = "BATCH_STATE_RUNNING"
        operation: dict[str, Any] = {"name": job["id"], "done": ended}
        if ended:
            ok = sum(1 for _, outcome, _ in job["results"] if outcome is None)
            stats.update(successfulRequestCount=str(ok), failedRequestCount=str(len(job["results"]) - ok))
            state = "BATCH_STATE_CANCELLED" if job.get("cancelled") else "BATCH_STATE_SUCCEEDED"
            entries = [{"response": reply, "metadata": {"key": key}} if outcome is None
                       else {"error": {"code": 3, "message": "Request contains an invalid argument."},
                             "metadata": {"key": key}}
                       for key, outcome, reply in job["results"] if outcome in (None, "error")]
            if job["from_file"]:
                name = f"files/batch-{job['id'].split('/')[1]}"
                lines = [json.dumps({"key": e["metadata"]["key"], **{k: v for k, v in e.items() if k != "metadata"}})
                         for e in entries]
                self.files[name] = {"data": ("\n".join(lines) + "\n").encode(), "mime": "application/jsonl",
                                    "polls": 99, "size": 0}
                operation["response"] = {"responsesFile": name}
            else:
                operation["response"] = {"inlinedResponses": {"inlinedResponses": entries}}
        operation["metadata"] = {"model": job["model"], "displayName": job["display_name"], "state": state,
                                 "batchStats": stats}
        return operation

    def _run_one(self, body: dict) -> dict:
        images = self.extract_images(body)
        return self.answer(f"/v1beta/models/{self._batch_model}:generateContent", body, images, {})[1]

    def answer_get(self, path):
        if path.startswith("/v1beta/batches/"):
            job = self.jobs[path.removeprefix("/v1beta/")]
            self._batch_model = job["model"].removeprefix("models/")
            self.advance(job, self._run_one)
            return 200, self._operation(job), {}
        if path.startswith("/v1beta/batches"):
            return 200, {"operations": [self._operation(j) for j in self.jobs.values()]}, {}
        if path.startswith("/download/v1beta/"):
            name = path.removeprefix("/download/v1beta/").split(":download")[0]
            return 200, self.files[name]["data"], {"Content-Type": "application/jsonl"}
        name = path.removeprefix("/v1beta/")
        file = self.files.get(name)
        if file is None:
            return 404, {"error": {"code": 404, "message": "no such file", "status": "NOT_FOUND"}}, {}
        file["polls"] += 1
        state = "ACTIVE" if file["polls"] > self.processing_polls else "PROCESSING"
        return 200, {"name": name, "uri": f"{self.url}/v1beta/{name}", "state": state,
                     "mimeType": file["mime"]}, {}

    def answer_delete(self, path):
        name = path.removeprefix("/v1beta/")
        if self.files.pop(name, None) is None:
            return 404, {"error": {"code": 404, "message": "no such file"}}, {}
        self.deleted.append(name)
        return 200, {}, {}

    def _upload(self, path, body, headers):
        if path == "/upload/v1beta/files" and headers.get("X-Goog-Upload-Command") == "start":
            session = f"s{len(self.files) + len(self.deleted) + 1}"
            self.files[f"files/{session}"] = {"data": b"", "mime": headers.get("X-Goog-Upload-Header-Content-Type"),
                                              "polls": 0, "size": int(headers["X-Goog-Upload-Header-Content-Length"])}
            return 200, {}, {"X-Goog-Upload-URL": f"{self.url}/upload/session/{session}",
                             "X-Goog-Upload-Status": "active"}
        name = "files/" + path.rsplit("/", 1)[1]
        file = self.files[name]
        file["data"] = body if isinstance(body, bytes) else json.dumps(body).encode()
        assert len(file["data"]) == file["size"], "upload length differs from the announced one"
        return 200, {"file": {"name": name, "uri": f"{self.url}/v1beta/{name}", "state": "PROCESSING",
                              "mimeType": file["mime"]}}, {"X-Goog-Upload-Status": "final"}

    def _clips(self, body) -> list[bytes]:
        clips = []
        for content in body.get("contents", []):
            for part in content.get("parts", []):
                inline = part.get("inline_data") or {}
                if inline.get("mime_type", "").startswith("video/"):
                    clips.append(base64.b64decode(inline["data"]))
                uri = (part.get("file_data") or {}).get("file_uri")
                if uri:
                    name = uri.split("/v1beta/", 1)[1]
                    assert self.files[name]["polls"] > self.processing_polls, "used before it was ACTIVE"
                    clips.append(self.files[name]["data"])
        return clips

    def extract_images(self, body: dict) -> list[bytes]:
        return [
            base64.b64decode(part["inline_data"]["data"])
            for content in body.get("contents", [])
            for part in content.get("parts", [])
            if "inline_data" in part and part["inline_data"].get("mime_type", "").startswith("image/")
        ]

    def answer(self, path, body, images, headers):
        if path.startswith("/upload/"):
            return self._upload(path, body, headers)
        if path.endswith(":batchGenerateContent"):
            config = body["batch"]["input_config"]
            if "file_name" in config:
                lines = [json.loads(x) for x in self.files[config["file_name"]]["data"].decode().splitlines()]
                requests = [(line["key"], line["request"]) for line in lines]
            else:
                requests = [(r["metadata"]["key"], r["request"]) for r in config["requests"]["requests"]]
            model = "models/" + path.split("/models/")[1].split(":")[0]
            job = self.new_job(f"batches/{len(self.jobs) + 1}", requests, model=model,
                               display_name=body["batch"]["display_name"], from_file="file_name" in config)
            return 200, self._operation(job), {}
        if path.startswith("/v1beta/batches/") and path.endswith(":cancel"):
            job = self.jobs[path.removeprefix("/v1beta/").removesuffix(":cancel")]
            job["state"], job["cancelled"] = "cancelling", True
            return 200, {}, {}
        if not (path.startswith("/v1beta/models/") and path.endswith(":generateContent")):
            return 404, {"error": {"code": 404, "message": "not found", "status": "NOT_FOUND"}}, {}
        text = " ".join(p.get("text", "") for c in body["contents"] for p in c["parts"])
        clips = self._clips(body)
        self.videos.extend(clips)
        video_tokens = audio_tokens = 0
        low = body.get("generationConfig", {}).get("mediaResolution") in ("low", "MEDIA_RESOLUTION_LOW")
        fps = next((p.get("video_metadata", {}).get("fps", 1.0) for c in body["contents"] for p in c["parts"]
                    if "video_metadata" in p), 1.0)
        for clip in clips:
            seconds, has_audio = clip_facts(clip)
            video_tokens += (66 if low else 258) * max(1, math.ceil(seconds * fps))
            audio_tokens += 32 * math.ceil(seconds) if has_audio else 0
        usage = {"promptTokenCount": 258 * len(images) + text_tokens(text) + video_tokens + audio_tokens,
                 "candidatesTokenCount": self.output_tokens,
                 "totalTokenCount": 0}
        if clips:
            usage["promptTokensDetails"] = [{"modality": "VIDEO", "tokenCount": video_tokens},
                                            {"modality": "AUDIO", "tokenCount": audio_tokens}]
        if self.thoughts_tokens:
            usage["thoughtsTokenCount"] = self.thoughts_tokens
        usage["totalTokenCount"] = usage["promptTokenCount"] + self.output_tokens + self.thoughts_tokens
        label = (f"video {hashlib.sha256(clips[0]).hexdigest()[:16]}" if clips
                 else image_label(images[0]) if images else "?")
        generation = body.get("generationConfig", {})
        if "responseSchema" in generation:
            schema = generation["responseSchema"]
            if "additionalProperties" in json.dumps(schema) or generation.get("responseMimeType") != \
                    "application/json":
                return 400, {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message":
                             'Invalid JSON payload received. Unknown name "additionalProperties"'}}, {}
            label = structured_text(schema, label)
            usage["promptTokenCount"] += text_tokens(json.dumps(schema))
            usage["candidatesTokenCount"] += text_tokens(label)
            usage["totalTokenCount"] += text_tokens(json.dumps(schema)) + text_tokens(label)
        reply = {
            "candidates": [{"content": {"parts": [{"text": label}],
                                        "role": "model"}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": usage,
            "modelVersion": path.split("/")[-1].split(":")[0],
        }
        if self.answer_override is not None:
            reply = self.answer_override(reply)
        return 200, reply, {}


class FakeOllama(FakeServer):
    """Ollama: POST /api/chat (non-streamed unless `stream_anyway`), GET /api/tags."""

    def __init__(self, latency: float = 0.0, models: tuple[str, ...] = ("llava:7b",)) -> None:
        super().__init__(latency)
        self.models = models
        self.stream_anyway = False
        self.answer_override: Callable[[dict], Any] | None = None

    def extract_images(self, body: dict) -> list[bytes]:
        return [base64.b64decode(i) for m in body.get("messages", []) for i in m.get("images", [])]

    def answer_get(self, path):
        if path == "/api/tags":
            return 200, {"models": [{"name": n, "model": n} for n in self.models]}, {}
        return 404, {"error": "not found"}, {}

    def answer(self, path, body, images, headers):
        if path != "/api/chat":
            return 404, {"error": "not found"}, {}
        if body.get("model") not in self.models:
            return 404, {"error": f"model '{body.get('model')}' not found, try pulling it first"}, {}
        text = " ".join(m.get("content", "") for m in body["messages"])
        caption = image_label(images[0]) if images else "?"
        if isinstance(body.get("format"), dict):
            caption = structured_text(body["format"], caption)
        final = {"model": body["model"], "created_at": "2026-11-22T00:00:00Z",
                 "message": {"role": "assistant", "content": caption}, "done": True, "done_reason": "stop",
                 "prompt_eval_count": 576 * len(images) + text_tokens(text), "eval_count": 30}
        if self.answer_override is not None:
            return 200, self.answer_override(final), {}
        if not self.stream_anyway:
            return 200, final, {}
        words = caption.split(" ")
        lines = [{"model": body["model"], "message": {"role": "assistant", "content": w + " "}, "done": False}
                 for w in words[:-1]]
        final["message"] = {"role": "assistant", "content": words[-1]}
        lines.append(final)
        ndjson = "".join(json.dumps(line) + "\n" for line in lines).encode()
        return 200, ndjson, {"Content-Type": "application/x-ndjson"}
