"""Per-request overhead: the client's CPU per request, preparing the photo left
out, at concurrency 64 against a fake server that answers at once, with tiny
photos (so the client, not the photos or the network, is what is measured).

Two runs of different sizes give the marginal CPU per photo (start-up cancels
out); the CPU of reading, hashing and preparing one photo, measured here in
the same process, is taken off. Baseline in the same run: a bare httpx loop
(one shared AsyncClient, the same concurrency, the same body size) - the least
any Python client pays per request.

    python benchmarks/request_overhead.py [--small 500] [--large 2500] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import subprocess
import time
from pathlib import Path

from PIL import Image

from captioner.media import file_sha256, prepare_image, read_file

from _common import FakeServerProcess, captioner_bin, fake_env, machine, photo_library, workdir


def tiny_photo(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.jpg"
    Image.new("RGB", (96, 64), (40, 120, 200)).save(path, "JPEG", quality=85)
    return path


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def captioner_cpu(library: Path, db: Path, concurrency: int, env: dict[str, str]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one `captioner caption` run."""
    before, started = child_cpu(), time.perf_counter()
    run = subprocess.run([captioner_bin(), "caption", str(library), "-m", "gpt-4o-mini", "--db", str(db),
                          "--concurrency", str(concurrency), "--json"], env={**os.environ, **env},
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"captioner failed: {run.stderr[-1000:]}")
    assert json.loads(run.stdout)["ok"] == len(list(library.iterdir()))
    return child_cpu() - before, time.perf_counter() - started


def prepare_cpu(library: Path) -> float:
    """CPU seconds per photo of what the pipeline does before sending: read, hash, prepare."""
    files = sorted(library.iterdir())
    started = time.process_time()
    for path in files:
        data, _ = read_file(str(path))
        file_sha256(str(path))
        prepare_image(data)
    return (time.process_time() - started) / len(files)


async def bare_httpx(url: str, body: bytes, requests: int, concurrency: int, per_worker: bool) -> float:
    """CPU seconds per request of a bare httpx loop: one shared client, or one client per worker."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as shared:
        queue = iter(range(requests))

        async def worker() -> None:
            client = httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=1)) if per_worker else shared
            for _ in queue:
                for _attempt in range(5):  # the fake's listen backlog is small: a connect may be reset
                    try:
                        response = await client.post(url + "/chat/completions", content=body,
                                                     headers={"content-type": "application/json",
                                                              "Authorization": "Bearer not-a-real-key-benchmark"})
                        response.json()
                        break
                    except httpx.TransportError:
                        await asyncio.sleep(0.01)
            if per_worker:
                await client.aclose()

        started = time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return (time.process_time() - started) / requests


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=500)
    parser.add_argument("--large", type=int, default=2500)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    work = workdir() / "overhead"
    source = tiny_photo(work)
    print(f"{machine()}; concurrency {args.concurrency}; a fake server answering at once, in its own process")
    runs = {}
    with FakeServerProcess(0.0) as server:
        env = fake_env(server.base_url, work)
        for count in (args.small, args.large):
            library = photo_library(work / f"lib{count}", [source], count)
            runs[count] = captioner_cpu(library, work / f"o{count}.db", args.concurrency, env)
            (work / f"o{count}.db").unlink()
        prepare = prepare_cpu(work / f"lib{args.small}")
        data = prepare_image(source.read_bytes()).jpeg
        image = {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(data).decode()}}
        content = [{"type": "text", "text": "Describe this photo."}, image]
        body = json.dumps({"model": "gpt-4o-mini", "max_completion_tokens": 400,
                           "messages": [{"role": "user", "content": content}]}).encode()
        bare = asyncio.run(bare_httpx(server.base_url, body, args.large, args.concurrency, False))
        bare_each = asyncio.run(bare_httpx(server.base_url, body, args.large, args.concurrency, True))
        server.finish()
    marginal = (runs[args.large][0] - runs[args.small][0]) / (args.large - args.small)
    overhead = marginal - prepare
    rate = (args.large - args.small) / (runs[args.large][1] - runs[args.small][1])
    print(f"captioner: {marginal * 1000:.2f} ms CPU per photo, of which read + hash + prepare "
          f"{prepare * 1000:.2f} ms: {overhead * 1000:.2f} ms per request (target <= 1 ms); "
          f"{rate:.0f} photos/s marginal")
    print(f"bare httpx, one shared client: {bare * 1000:.2f} ms CPU per request; "
          f"one client per worker: {bare_each * 1000:.2f} ms; captioner / shared-client httpx = {overhead / bare:.2f}")


if __name__ == "__main__":
    main()
