"""Throughput against a fake OpenAI-compatible server with 300 ms latency.

captioner at concurrency 16, vs captioner one request at a time, vs `llm`'s own
async Python API at the same concurrency (16 prompts in flight, each with the
photo attached), vs a shell loop of the `llm` CLI (one process per photo), all
against the same server in one run. Several rounds; the median is reported.

    python benchmarks/throughput.py [--photos 200] [--latency 0.3] [--rounds 3]

For the llm loop: python -m venv benchmarks/.llm-venv && benchmarks/.llm-venv/bin/pip install llm
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import (
    FakeServerProcess,
    camera_jpegs,
    fake_env,
    find_llm,
    llm_env,
    machine,
    photo_library,
    run_captioner,
    workdir,
)

# Run with the llm venv's Python: `llm`'s async API, N prompts in flight, each with a photo
# attached, as a Python program using llm would caption a folder. Prints the seconds taken.
LLM_ASYNC = """
import asyncio, sys, time
import llm

async def main(concurrency, paths):
    model = llm.get_async_model("fake-vision")
    gate = asyncio.Semaphore(concurrency)

    async def one(path):
        async with gate:
            response = model.prompt("Describe this photo.", attachments=[llm.Attachment(path=path)], stream=False)
            await response.text()

    started = time.perf_counter()
    await asyncio.gather(*(one(p) for p in paths))
    print(time.perf_counter() - started)

asyncio.run(main(int(sys.argv[1]), sys.argv[2:]))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--llm-photos", type=int, default=None, help="photos for the llm loop (default: all)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the concurrent runs (median reported)")
    args = parser.parse_args()
    work = workdir()
    library = photo_library(work / "library", camera_jpegs(work / "originals"), args.photos)
    print(f"{args.photos} camera photos (~12 MP), server latency {args.latency * 1000:.0f} ms, "
          f"median of {args.rounds} rounds; {machine()}; load before: {os.getloadavg()[0]:.2f}")

    results = {}
    for label, concurrency in (("captioner --concurrency 16", 16), ("captioner --concurrency 1", 1)):
        rates = []
        for round_ in range(args.rounds if concurrency > 1 else 1):
            with FakeServerProcess(args.latency) as server:
                seconds, summary, _ = run_captioner(
                    [str(library), "-m", "gpt-4o-mini", "--db", str(work / f"c{concurrency}-{round_}.db"),
                     "--concurrency", str(concurrency)], fake_env(server.base_url, work))
                server.finish()
            assert summary["ok"] == args.photos, summary
            rates.append(args.photos / seconds)
        results[label] = statistics.median(rates)
        print(f"{label:32s} {args.photos / results[label]:7.1f} s  {results[label]:6.2f} images/s"
              f"  (rounds: {', '.join(f'{r:.2f}' for r in rates)})")

    llm = find_llm()
    if llm is not None:
        python = str(Path(llm).with_name("python"))
        rates = []
        for _ in range(args.rounds):
            with FakeServerProcess(args.latency) as server:
                env = {**os.environ, **llm_env(server.base_url, work)}
                run = subprocess.run([python, "-c", LLM_ASYNC, "16", *map(str, sorted(library.iterdir()))],
                                     env=env, capture_output=True, text=True)
                stats = server.finish()
            if run.returncode != 0:
                sys.exit(f"llm async run failed: {run.stderr[-1500:]}")
            assert stats["requests"] == args.photos, stats
            rates.append(args.photos / float(run.stdout.strip()))
        results["llm async"] = statistics.median(rates)
        print(f"{'llm async API, 16 in flight':32s} {args.photos / results['llm async']:7.1f} s  "
              f"{results['llm async']:6.2f} images/s  (rounds: {', '.join(f'{r:.2f}' for r in rates)})")

    llm = find_llm()
    if llm is None:
        print("llm loop: skipped (llm CLI not installed; see this script's docstring)")
    else:
        photos = sorted(library.iterdir())[: args.llm_photos or args.photos]
        with FakeServerProcess(args.latency) as server:
            env = {**__import__("os").environ, **llm_env(server.base_url, work)}
            started = time.perf_counter()
            for photo in photos:
                subprocess.run([llm, "-m", "fake-vision", "--no-stream", "--no-log", "-a", str(photo),
                                "Describe this photo."], env=env, check=True, capture_output=True)
            seconds = time.perf_counter() - started
            stats = server.finish()
        assert stats["requests"] == len(photos)
        results["llm loop"] = len(photos) / seconds
        print(f"{'shell loop of llm (one per photo)':32s} {seconds:7.1f} s  {results['llm loop']:6.2f} images/s"
              f"  ({len(photos)} photos)")

    fast = results["captioner --concurrency 16"]
    print(f"ratio captioner c16 / captioner c1: {fast / results['captioner --concurrency 1']:.1f}x")
    if "llm async" in results:
        print(f"ratio captioner c16 / llm async c16: {fast / results['llm async']:.2f}x   (target >= 3x)")
    if "llm loop" in results:
        print(f"ratio captioner c16 / llm loop:     {fast / results['llm loop']:.1f}x   (target >= 20x)")


if __name__ == "__main__":
    main()
