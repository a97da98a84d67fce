"""Scaling out: throughput with 1, 2 and 4 fake OpenAI-compatible endpoints of 300 ms
latency and a fixed capacity each (--concurrency 8 per endpoint), as a ratio to one;
and batch-file export/import throughput and peak RSS.

    python benchmarks/scaleout.py [--photos 400] [--items 100000]

Target: >= 3.5x with 4 endpoints, limited only by this machine's prepare CPU (reported).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from contextlib import ExitStack

from _common import CORPUS, FakeServerProcess, captioner_bin, fake_env, machine, photo_library, run_captioner, workdir


def prepare_ceiling(library) -> float:
    """Photos a second this machine can prepare (2 threads), the limit no endpoint count can pass."""
    from concurrent.futures import ThreadPoolExecutor

    from captioner.media import prepare_image

    datas = [p.read_bytes() for p in sorted(library.iterdir())[:200]]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(lambda d: prepare_image(d, 1024), datas))
    return len(datas) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=400)
    parser.add_argument("--items", type=int, default=100_000)
    args = parser.parse_args()
    work = workdir()
    library = photo_library(work / "lib", [CORPUS / "photos" / "grace_hopper.jpg"], args.photos)
    print(f"# scale-out benchmark, {args.photos} photos (512x600), 300 ms latency, --concurrency 8 per endpoint; "
          f"{machine()}")
    print(f"prepare ceiling of this machine: {prepare_ceiling(library):.0f} photos/s")
    rates = {}
    for count in (1, 2, 4):
        with ExitStack() as stack:
            servers = [stack.enter_context(FakeServerProcess(0.3)) for _ in range(count)]
            urls = [arg for s in servers for arg in ("--base-url", s.base_url)]
            seconds, summary, _ = run_captioner(
                [str(library), "-m", "openai/llava", "--db", str(work / f"pool{count}.db"), "--concurrency", "8",
                 *urls], fake_env(servers[0].base_url, work))
            for server in servers:
                server.finish()
        rates[count] = summary["ok"] / seconds
        print(f"{count} endpoint(s): {rates[count]:6.1f} photos/s ({rates[count] / rates[1]:.2f}x one)")
    export_import(work, args.items)
    shutil.rmtree(work, ignore_errors=True)


def export_import(work, items: int) -> None:
    """Export and import throughput for `items` photos (file-url lines, so the shards stay small)."""
    library = photo_library(work / "many", [CORPUS / "photos" / "grace_hopper.jpg"], items)
    env = {**os.environ, "CAPTIONER_USER_DIR": str(work / "user")}
    db = str(work / "files.db")
    started = time.perf_counter()
    export_kb = peak_kb([captioner_bin(), "batches", "--db", db, "export", str(library), "-m", "openai/llava", "--out",
                         str(work / "shards"), "--images", "file-url", "--shard-lines", "25000"], env)
    export_s = time.perf_counter() - started
    outputs = []
    for n, shard in enumerate(sorted((work / "shards").glob("*.jsonl"))):
        out = work / f"out{n}.jsonl"
        with open(shard) as source, open(out, "w") as target:
            for line in source:
                custom_id = json.loads(line)["custom_id"]
                target.write(json.dumps({"id": "vllm-x", "custom_id": custom_id, "error": None, "response": {
                    "status_code": 200, "body": {"choices": [{"message": {"content": "A photo."},
                                                              "finish_reason": "stop"}],
                                                 "usage": {"prompt_tokens": 800, "completion_tokens": 4}}}}) + "\n")
        outputs.append(str(out))
    started = time.perf_counter()
    import_kb = peak_kb([captioner_bin(), "batches", "--db", db, "import", *outputs], env)
    import_s = time.perf_counter() - started
    print(f"export {items:,} items: {export_s:.1f} s ({items / export_s:,.0f} rows/s), "
          f"peak RSS {export_kb / 1024:.0f} MB")
    print(f"import {items:,} results: {import_s:.1f} s ({items / import_s:,.0f} rows/s), "
          f"peak RSS {import_kb / 1024:.0f} MB")


def peak_kb(command: list[str], env: dict[str, str]) -> int:
    """Run a command; its own peak RSS in KB (GNU time), not the running maximum of all children."""
    done = subprocess.run(["/usr/bin/time", "-f", "%M", *command], env=env, check=True, capture_output=True,
                          text=True)
    return int(done.stderr.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
