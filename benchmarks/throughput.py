"""Throughput against a fake OpenAI-compatible server with 300 ms latency.

captioner at concurrency 16, vs captioner one request at a time, vs a shell
loop of the `llm` CLI (one process per photo) against the same server.

    python benchmarks/throughput.py [--photos 200] [--latency 0.3]

For the llm loop: python -m venv benchmarks/.llm-venv && benchmarks/.llm-venv/bin/pip install llm
"""

from __future__ import annotations

import argparse
import subprocess
import time

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--llm-photos", type=int, default=None, help="photos for the llm loop (default: all)")
    args = parser.parse_args()
    work = workdir()
    library = photo_library(work / "library", camera_jpegs(work / "originals"), args.photos)
    print(f"{args.photos} camera photos (~12 MP), server latency {args.latency * 1000:.0f} ms; {machine()}")

    results = {}
    for label, concurrency in (("captioner --concurrency 16", 16), ("captioner --concurrency 1", 1)):
        with FakeServerProcess(args.latency) as server:
            seconds, summary, _ = run_captioner(
                [str(library), "-m", "gpt-4o-mini", "--db", str(work / f"c{concurrency}.db"),
                 "--concurrency", str(concurrency)], fake_env(server.base_url, work))
            server.finish()
        assert summary["ok"] == args.photos, summary
        results[label] = args.photos / seconds
        print(f"{label:32s} {seconds:7.1f} s  {results[label]:6.2f} images/s")

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
    if "llm loop" in results:
        print(f"ratio captioner c16 / llm loop:     {fast / results['llm loop']:.1f}x   (target >= 20x)")


if __name__ == "__main__":
    main()
