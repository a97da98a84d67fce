"""Start-up: import time (`python -X importtime`) and whole-process wall time of
the quick commands (`--help`, `search`, `cost`, `sql`), median of several
rounds, against a bare `python -c pass` measured in the same run.

    python benchmarks/startup.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine

COMMANDS = {
    "--help": ["--help"],
    "search": ["search", "dog", "--db", "{db}"],
    "cost": ["cost", "--db", "{db}"],
    "sql": ["sql", "SELECT count(*) FROM captions", "--db", "{db}"],
}


def import_ms(args: list[str]) -> float:
    """Milliseconds spent importing modules (every top-level import, the interpreter's own `site` left out)."""
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", "captioner", *args],
                         capture_output=True, text=True, check=True)
    total = 0
    for line in run.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|")
        if cumulative.strip().isdigit() and not name.startswith("  ") and name.strip() not in ("site",):
            total += int(cumulative)
    return total / 1000


def wall_ms(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, capture_output=True, check=True)
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        db = str(Path(scratch) / "captions.db")
        subprocess.run([sys.executable, "-m", "captioner", "sql", "SELECT 1", "--db", db], capture_output=True)
        from captioner.store import Store

        Store(db).close()  # an up-to-date, empty database
        bare = statistics.median(wall_ms([sys.executable, "-c", "pass"]) for _ in range(args.rounds))
        print(f"{machine()}; median of {args.rounds} rounds; bare interpreter start: {bare:.0f} ms")
        print(f"{'command':8}  {'import ms':>9}  {'process ms':>10}  {'over bare':>9}   (target: import <= 150 ms)")
        for name, command in COMMANDS.items():
            argv = [a.replace("{db}", db) for a in command]
            imports = statistics.median(import_ms(argv) for _ in range(args.rounds))
            process = statistics.median(wall_ms([sys.executable, "-m", "captioner", *argv])
                                        for _ in range(args.rounds))
            print(f"{name:8}  {imports:9.0f}  {process:10.0f}  {process - bare:9.0f}")


if __name__ == "__main__":
    main()
