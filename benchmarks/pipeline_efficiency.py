"""Pipeline efficiency: images/s achieved ÷ (concurrency ÷ latency), on ~12 MP camera JPEGs.

1.0 means the network slots never wait for prepare, the event loop or the database.

    python benchmarks/pipeline_efficiency.py [--photos 320] [--concurrency 32] [--latency 0.3]
"""

from __future__ import annotations

import argparse

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
    ideal = args.concurrency / args.latency
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
          f" ideal {ideal:.1f} images/s")
    print(f"efficiency {rate / ideal:.2f} whole run, {steady / ideal:.2f} steady   (target >= 0.9)")

    # The same run with small photos shows what the network pipeline alone can do.
    small = photo_library(work / "small", [p for p in (work.parent,)][:0] or [_small_photo(work)], args.photos)
    with FakeServerProcess(args.latency) as server:
        seconds, summary, _ = run_captioner(
            [str(small), "-m", "gpt-4o-mini", "--db", str(work / "small.db"), "--concurrency", str(args.concurrency)],
            fake_env(server.base_url, work))
        server.finish()
    small_rate = args.photos / seconds
    small_steady = steady_rate(work / "small.db")
    print(f"same run with 640-px photos: efficiency {small_rate / ideal:.2f} whole run,"
          f" {small_steady / ideal:.2f} steady (prepare mostly removed as a cost)")


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
