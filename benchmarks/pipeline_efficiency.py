"""Pipeline efficiency: images/s achieved ÷ the most this machine could do, which is
min(concurrency ÷ latency, the prepare ceiling): on ~12 MP camera JPEGs the CPU
that decodes them is the limit on 2 cores, so the ceiling is measured here, in
the same run (every photo of the mix prepared on all cores, nothing else
running). Then small photos at concurrency 64, where the network is the limit.

1.0 means the run never waits for anything but the slower of the two.

    python benchmarks/pipeline_efficiency.py [--photos 320] [--concurrency 32] [--latency 0.3]
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor

from captioner.media import file_sha256, prepare_image, read_file

from _common import FakeServerProcess, camera_jpegs, fake_env, machine, photo_library, run_captioner, workdir


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=320)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.3)
    args = parser.parse_args()
    work = workdir()
    originals = camera_jpegs(work / "originals")
    library = photo_library(work / "library", originals, args.photos)
    ceiling = prepare_ceiling(sorted(library.iterdir())[:60])
    ideal = min(args.concurrency / args.latency, ceiling)
    print(f"{args.photos} camera JPEGs (~12 MP), concurrency {args.concurrency}, latency {args.latency * 1000:.0f} ms;"
          f" {machine()}")
    with FakeServerProcess(args.latency) as server:
        seconds, summary, _ = run_captioner(
            [str(library), "-m", "gpt-4o-mini", "--db", str(work / "eff.db"), "--concurrency", str(args.concurrency)],
            fake_env(server.base_url, work))
        server.finish()
    assert summary["ok"] == args.photos, summary
    rate = args.photos / seconds
    steady = steady_rate(work / "eff.db")
    print(f"achieved {rate:.1f} images/s over the whole run (start-up included), {steady:.1f} images/s steady;"
          f" concurrency / latency {args.concurrency / args.latency:.1f}/s, prepare ceiling {ceiling:.1f}/s")
    print(f"efficiency {rate / ideal:.2f} whole run, {steady / ideal:.2f} steady   (target >= 0.95)")

    # Small photos at concurrency 64: the network is the limit, not the CPU.
    small = photo_library(work / "small", [_small_photo(work)], args.photos * 2)
    with FakeServerProcess(args.latency) as server:
        seconds, summary, _ = run_captioner(
            [str(small), "-m", "gpt-4o-mini", "--db", str(work / "small.db"), "--concurrency", "64"],
            fake_env(server.base_url, work))
        server.finish()
    small_ideal = 64 / args.latency
    small_rate = args.photos * 2 / seconds
    small_steady = steady_rate(work / "small.db")
    print(f"640-px photos at concurrency 64: {small_steady:.1f} images/s steady of {small_ideal:.1f} asked:"
          f" efficiency {small_rate / small_ideal:.2f} whole run, {small_steady / small_ideal:.2f} steady"
          f"   (target >= 0.9)")


def prepare_ceiling(paths: list) -> float:
    """Photos per second this machine can read, hash and prepare on all its cores."""
    def one(path) -> None:
        data, _ = read_file(str(path))
        file_sha256(str(path))
        prepare_image(data)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(one, paths[:4]))  # warm up
        started = time.perf_counter()
        list(pool.map(one, paths))
        return len(paths) / (time.perf_counter() - started)


def steady_rate(db) -> float:
    """Captions per second between the first and the last answer stored."""
    import sqlite3
    from datetime import datetime

    conn = sqlite3.connect(db)
    first, last, n = conn.execute("SELECT min(created_at), max(created_at), count(*) FROM captions").fetchone()
    conn.close()
    span = (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds()
    return (n - 1) / span if span > 0 else float("nan")


def _small_photo(work):
    import shutil

    from _common import CORPUS

    target = work / "rocket.jpg"
    shutil.copy(CORPUS / "photos" / "rocket.jpg", target)
    return target


if __name__ == "__main__":
    main()
