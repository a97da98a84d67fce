"""Export memory: peak RSS of `captioner export` in every format on a database of
100,000 captions, against the same export of 1,000 captions in the same run (a
ratio near 1 means memory does not grow with the library). Each export runs in
a process of its own.

    python benchmarks/export_memory.py [--captions 100000] [--formats csv,jsonl,html,xmp,txt]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time

from search_speed import fill

from captioner.store import Store

from _common import machine, workdir

# Runs one export in this child process and reports the child's own peak RSS (KB).
CHILD = """
import resource, sys
from captioner.cli import cli
try:
    cli.main(sys.argv[1:], standalone_mode=False)
finally:
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def peak_mb(args: list[str]) -> tuple[float, float]:
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"export failed: {run.stderr[-1000:]}")
    return int(run.stderr.strip().splitlines()[-1]) / 1024, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--captions", type=int, default=100_000)
    parser.add_argument("--formats", default="csv,jsonl,html,xmp,txt")
    args = parser.parse_args()
    work = workdir() / "export"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    databases = {}
    for count in (1_000, args.captions):
        path = work / f"c{count}.db"
        store = Store(str(path))
        fill(store, count)
        store.close()
        databases[count] = path
    print(f"{machine()}; peak RSS of each export process (target: <= 100 MB at {args.captions:,})")
    print(f"{'format':6}  {'1,000 MB':>9}  {f'{args.captions:,} MB':>11}  {'ratio':>5}  {'seconds':>7}")
    for fmt in args.formats.split(","):
        peaks = []
        seconds = 0.0
        for count, db in databases.items():
            out = work / f"out-{fmt}-{count}" if fmt in ("xmp", "txt") else work / f"out-{count}.{fmt}"
            peak, seconds = peak_mb(["export", "--db", str(db), "--format", fmt, "--out", str(out)])
            peaks.append(peak)
            shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)
        print(f"{fmt:6}  {peaks[0]:9.1f}  {peaks[1]:11.1f}  {peaks[1] / peaks[0]:5.2f}  {seconds:7.1f}")


if __name__ == "__main__":
    main()
