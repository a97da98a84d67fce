"""Prepare cost: CPU time per ~12 MP camera photo in captioner's prepare step vs a
full decode + resize (+ the same JPEG encode) with Pillow defaults, for baseline
and progressive camera JPEGs, HEIC and PNG; and, for JPEGs, the fidelity of what
is sent (PSNR against the full decode resized to the same size).

    python benchmarks/prepare_cost.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import io
import math
import shutil
import time
from pathlib import Path

from PIL import Image, ImageChops, ImageStat

from captioner.media import prepare_image

from _common import CORPUS, camera_jpegs, machine, workdir


def baseline(data: bytes, size: tuple[int, int]) -> bytes:
    im = Image.open(io.BytesIO(data)).convert("RGB").resize(size)
    out = io.BytesIO()
    im.save(out, "JPEG", quality=85)
    return out.getvalue()


def psnr(sent: bytes, reference: bytes) -> float:
    a, b = Image.open(io.BytesIO(sent)).convert("RGB"), Image.open(io.BytesIO(reference)).convert("RGB")
    mse = sum(ImageStat.Stat(ImageChops.difference(a, b).point(lambda v: v * v)).mean) / 3
    return 99.0 if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def sources(folder: Path) -> list[tuple[str, Path]]:
    jpegs = camera_jpegs(folder / "originals")
    photos = [("progressive JPEG" if Image.open(p).info.get("progressive") else "JPEG", p) for p in jpegs]
    for name in ("pug.heic", "IMG_2682.heic"):
        target = folder / name
        shutil.copy(CORPUS / "photos" / name, target)
        photos.append(("HEIC", target))
    png = folder / "camera.png"
    Image.open(jpegs[0]).save(png, "PNG")  # a 12 MP PNG, as a screenshot tool or an export would write
    photos.append(("PNG", png))
    return photos


def cpu_ms(fn, rounds: int) -> float:
    started = time.process_time()
    for _ in range(rounds):
        fn()
    return (time.process_time() - started) / rounds * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import pillow_heif

    pillow_heif.register_heif_opener()
    print(f"CPU time per photo, mean of {args.rounds} rounds; {machine()}")
    by_kind: dict[str, list[tuple[float, float]]] = {}
    for kind, path in sources(workdir()):
        data = path.read_bytes()
        prepared = prepare_image(data)
        size = (prepared.sent_width, prepared.sent_height)
        ours = cpu_ms(lambda: prepare_image(data), args.rounds)  # noqa: B023 (used at once)
        base = cpu_ms(lambda: baseline(data, size), args.rounds)  # noqa: B023
        fidelity = f"PSNR {psnr(prepared.jpeg, baseline(data, size)):5.1f} dB" if "JPEG" in kind else ""
        with Image.open(path) as im:
            pixels = f"{im.width}x{im.height}"
        print(f"{path.name:22s} {kind:16s} {pixels:10s} prepare {ours:6.1f} ms   full decode+resize {base:6.1f} ms"
              f"   ratio {ours / base:.2f}   {fidelity}")
        by_kind.setdefault(kind, []).append((ours, base))
    for kind, pairs in by_kind.items():
        ours_total, base_total = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
        print(f"{kind:16s} mean prepare {ours_total / len(pairs):6.1f} ms, ratio {ours_total / base_total:.2f}")
    jpeg_pairs = by_kind.get("JPEG", []) + by_kind.get("progressive JPEG", [])
    print(f"camera JPEGs overall ratio {sum(p[0] for p in jpeg_pairs) / sum(p[1] for p in jpeg_pairs):.2f}"
          f"   (target: <= 0.33, progressive ones too)")


if __name__ == "__main__":
    main()
