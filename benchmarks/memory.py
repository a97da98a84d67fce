"""Memory: peak RSS of `captioner caption` on 10,000 photos at concurrency 32,
vs the same run on 200 photos (a ratio near 1 means memory does not grow with
the library). Then a re-scan of the finished library, which must read nothing.
With --camera the photos are the ~12 MP camera originals (3-5 MB each) instead
of a 61 KB portrait.

    python benchmarks/memory.py [--photos 10000] [--latency 0.05] [--camera]
"""

from __future__ import annotations

import argparse
import shutil

from _common import CORPUS, FakeServerProcess, camera_jpegs, fake_env, machine, photo_library, run_captioner, workdir


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=10_000)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--camera", action="store_true", help="~12 MP camera photos instead of a 61 KB one")
    args = parser.parse_args()
    work = workdir()
    # A real photo (512x600, 61 KB), repeated with unique bytes: 10,000 of them fit on any disk.
    source = camera_jpegs(work / "originals") if args.camera else [CORPUS / "photos" / "grace_hopper.jpg"]
    kind = "12 MP camera photos" if args.camera else "61 KB photos"
    print(f"concurrency 32, latency {args.latency * 1000:.0f} ms, {kind}; {machine()}")
    peaks = {}
    for count in (200, args.photos):
        library = photo_library(work / f"lib{count}", source, count)
        with FakeServerProcess(args.latency) as server:
            seconds, summary, peak_kb = run_captioner(
                [str(library), "-m", "gpt-4o-mini", "--db", str(work / f"m{count}.db"), "--concurrency", "32"],
                fake_env(server.base_url, work))
            server.finish()
        assert summary["ok"] == count, summary
        peaks[count] = peak_kb / 1024
        print(f"{count:6d} photos: {seconds:6.1f} s, peak RSS {peaks[count]:6.1f} MB")
        if count == args.photos:
            with FakeServerProcess(args.latency) as server:
                seconds, summary, _ = run_captioner(
                    [str(library), "-m", "gpt-4o-mini", "--db", str(work / f"m{count}.db")],
                    fake_env(server.base_url, work))
                requests = server.finish()["requests"]
            print(f"re-scan of the finished {count} photos: {seconds:.2f} s, {requests} requests,"
                  f" {summary['skipped_done']} skipped as done")
        shutil.rmtree(library)
    print(f"peak RSS {args.photos} / 200 photos: {peaks[args.photos] / peaks[200]:.2f}   "
          f"(target: <= {200 if args.camera else 250} MB at {args.photos})")


if __name__ == "__main__":
    main()
