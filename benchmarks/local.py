"""The in-process model's speed: images per second and CPU seconds per photo at
low and high detail, one photo at a time against batched, on a random-weight
model of SmolVLM-256M-Instruct's real size and architecture (built here, never
downloaded). Every photo generates exactly `--tokens` tokens, so the timings
compare like with like; the baseline (low detail, batch 1) runs in the same process.

    python benchmarks/local.py [--photos 4] [--tokens 16] [--high-photos 2] [--device cpu]

It times the runtime's own `generate` (what `captioner caption -m local/...`
calls per batch), after the model is loaded; preparing the photos is not
counted (see prepare_cost.py for that).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from tiny_vlm import build, smolvlm_256m

from captioner.default_plugins.local_models import LocalModel, LocalRuntime
from captioner.local_weights import Weights
from captioner.media import prepare_image
from captioner.models import CaptionRequest

from _common import REPO, machine


def requests(count: int, options: dict[str, str]) -> list[CaptionRequest]:
    photos = sorted(p for p in (REPO / "sample_photos").iterdir() if p.suffix.lower() in (".jpg", ".png"))
    prepared = [prepare_image(photos[i % len(photos)].read_bytes(), LocalModel.max_side) for i in range(count)]
    return [CaptionRequest(jpeg=p.jpeg, width=p.sent_width, height=p.sent_height,
                           prompt="Describe this photo in one or two factual sentences.", options=options)
            for p in prepared]


def timed(runtime: LocalRuntime, batch: list[CaptionRequest], size: int) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, input tokens of the first photo) to caption `batch` in groups of `size`."""
    wall, cpu = time.perf_counter(), time.process_time()
    results = []
    for start in range(0, len(batch), size):
        results += runtime.generate(batch[start:start + size])
    assert all(r.output_tokens == results[0].output_tokens for r in results), "generation length must be fixed"
    return time.perf_counter() - wall, time.process_time() - cpu, int(results[0].input_tokens or 0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=4, help="photos at low detail")
    parser.add_argument("--high-photos", type=int, default=2, help="photos at high detail")
    parser.add_argument("--tokens", type=int, default=16, help="tokens generated per photo (fixed)")
    parser.add_argument("--batch", type=int, default=4, help="the batched run's batch size (the CPU default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        folder = build(Path(scratch) / "smolvlm-256m-random", smolvlm_256m())
        import json

        config_path = folder / "generation_config.json"
        generation = json.loads(config_path.read_text())
        generation["min_new_tokens"] = args.tokens  # every photo generates the same number of tokens
        config_path.write_text(json.dumps(generation))
        model = LocalModel("local/bench", Weights(folder=folder))
        runtime = LocalRuntime(model)
        params = None
        runtime.load({"device": args.device})
        _, loaded, device = runtime.loaded or (None, None, "")
        params = sum(p.numel() for p in loaded.parameters())
        print(f"{machine()}; device {device}; random-weight SmolVLM-256M shapes ({params / 1e6:.0f}M parameters, "
              f"built and loaded in {time.perf_counter() - started:.1f} s); {args.tokens} tokens per photo")
        print(f"{'detail':6}  {'batch':>5}  {'photos':>6}  {'input tokens':>12}  {'images/s':>8}  "
              f"{'CPU s/photo':>11}  {'vs low, batch 1':>15}")
        baseline = None
        for detail, count, size in (("low", args.photos, 1), ("low", args.photos, args.batch),
                                    ("high", args.high_photos, 1), ("high", args.high_photos, args.high_photos)):
            options = {"detail": detail, "max_tokens": str(args.tokens), "device": args.device}
            batch = requests(count, options)
            runtime.generate(batch[:1])  # warm up this shape
            wall, cpu, tokens = timed(runtime, batch, size)
            rate = count / wall
            baseline = baseline or rate
            print(f"{detail:6}  {size:5d}  {count:6d}  {tokens:12d}  {rate:8.3f}  {cpu / count:11.2f}  "
                  f"{rate / baseline:14.2f}x")


if __name__ == "__main__":
    main()
