"""Batch mode: peak RSS and time to build and upload the job input for N photos
(`caption --batch --no-wait`), against captioning the same photos synchronously
(concurrency 32, 50 ms latency). Memory must stay flat: the input is streamed to
a temporary file, never held.

    python benchmarks/batch_submit.py [--photos 10000]
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil

from _common import CORPUS, fake_env, machine, photo_library, run_captioner, workdir


def _serve(port_queue, stop_event) -> None:
    import fakes
    from fakes import FakeOpenAI

    fakes.image_label = lambda jpeg: f"photo {len(jpeg)}"
    with FakeOpenAI(latency=0.05) as server:
        server.prompt_tokens = lambda body, images: 1000
        port_queue.put(server.base_url)
        stop_event.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=10_000)
    args = parser.parse_args()
    work = workdir()
    library = photo_library(work / "lib", [CORPUS / "photos" / "grace_hopper.jpg"], args.photos)
    ctx = multiprocessing.get_context("spawn")
    ports, stop = ctx.Queue(), ctx.Event()
    server = ctx.Process(target=_serve, args=(ports, stop))
    server.start()
    try:
        env = fake_env(ports.get(timeout=30), work)
        print(f"# batch submit benchmark, {args.photos:,} photos (512x600 JPEG), {machine()}")
        # Batch first: the children's peak RSS is a running maximum, so the first figure is its own.
        batch_s, batch, batch_kb = run_captioner([str(library), "-m", "gpt-4.1-nano", "--db",
                                                  str(work / "batch.db"), "--batch", "--no-wait"], env)
        sync_s, sync, sync_kb = run_captioner([str(library), "-m", "gpt-4.1-nano", "--db", str(work / "sync.db"),
                                               "--concurrency", "32"], env)
        submitted = batch["submitted"]["submitted"]
        print(f"synchronous: {sync['ok']:,} captioned in {sync_s:.1f} s, peak RSS {sync_kb / 1024:.0f} MB "
              "(the larger of the two runs)")
        print(f"batch submit: {submitted:,} submitted in {batch_s:.1f} s, peak RSS {batch_kb / 1024:.0f} MB")
        print(f"time batch / sync: {batch_s / sync_s:.2f}   peak RSS batch / sync: {batch_kb / sync_kb:.2f}")
    finally:
        stop.set()
        server.join(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
