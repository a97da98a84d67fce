"""Prepare cost: CPU time per ~12 MP camera JPEG in captioner's prepare step vs a
full decode + resize (+ the same JPEG encode) with Pillow defaults.

    python benchmarks/prepare_cost.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import io
import time

from PIL import Image

from captioner.media import prepare_image

from _common import camera_jpegs, machine, workdir


def baseline(data: bytes, size: tuple[int, int]) -> bytes:
    im = Image.open(io.BytesIO(data)).convert("RGB").resize(size)
    out = io.BytesIO()
    im.save(out, "JPEG", quality=85)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"CPU time per photo, mean of {args.rounds} rounds; {machine()}")
    ours_total = base_total = 0.0
    for path in camera_jpegs(workdir() / "originals"):
        data = path.read_bytes()
        started = time.process_time()
        for _ in range(args.rounds):
            prepared = prepare_image(data)
        ours = (time.process_time() - started) / args.rounds
        started = time.process_time()
        for _ in range(args.rounds):
            baseline(data, (prepared.sent_width, prepared.sent_height))
        base = (time.process_time() - started) / args.rounds
        ours_total, base_total = ours_total + ours, base_total + base
        with Image.open(path) as im:
            size = f"{im.width}x{im.height}{' progressive' if im.info.get('progressive') else ''}"
        print(f"{path.name:22s} {size:22s} prepare {ours * 1000:6.1f} ms   full decode+resize {base * 1000:6.1f} ms"
              f"   ratio {ours / base:.2f}")
    print(f"overall ratio {ours_total / base_total:.2f}   (target <= 0.33)")


if __name__ == "__main__":
    main()
