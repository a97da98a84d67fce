"""Video: CPU to prepare a 30 s 1080p phone-style clip in each mode, against
decoding every frame and against preparing ten ~12 MP photos; bytes sent per
clip; input tokens per clip per provider.

    python benchmarks/video.py [--seconds 30] [--rounds 3]

Targets: a clip costs at most the CPU of ten 12 MP photos to prepare, and a
30 s 1080p clip sends at most 3 MB to Gemini.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import av
from PIL import Image, ImageDraw

from captioner.estimate import clip_tokens
from captioner.media import prepare_image
from captioner.plugins import get_model
from captioner.video import prepare_video, probe

from _common import CORPUS, camera_jpegs, machine, workdir


def phone_clip(path: Path, seconds: int) -> Path:
    """1920x1080 at 30 fps, a keyframe a second (as phones record), moving shapes, mono AAC."""
    if path.exists():
        return path
    container = av.open(str(path), "w")
    video = container.add_stream("libx264", rate=30)
    video.width, video.height, video.pix_fmt = 1920, 1080, "yuv420p"
    video.options = {"g": "30", "preset": "ultrafast", "crf": "20"}
    video.bit_rate = 12_000_000
    for index in range(seconds * 30):
        image = Image.new("RGB", (1920, 1080), (40 + index % 120, 90, 160))
        draw = ImageDraw.Draw(image)
        for k in range(12):
            x = (index * (7 + k) + k * 150) % 1800
            draw.ellipse((x, 80 * k, x + 120, 80 * k + 120), fill=(255 - 20 * k, 30 * (k % 8), 200))
        for packet in video.encode(av.VideoFrame.from_image(image)):
            container.mux(packet)
    for packet in video.encode():
        container.mux(packet)
    container.close()
    return path


def cpu(action) -> float:
    start = time.process_time()
    action()
    return time.process_time() - start


def decode_every_frame(path: Path) -> None:
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frame.to_image()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    folder = workdir()
    clip = phone_clip(folder / f"phone_{args.seconds}s_1080p.mp4", args.seconds)
    path = str(clip)
    modes = {
        "contact sheet (any model)": lambda: prepare_video(path, 1024),
        "6 separate frames": lambda: prepare_video(path, 1024, frames=6, separate_frames=True),
        "native for Gemini (re-encoded)": lambda: prepare_video(path, 1024, native=True),
        "baseline: decode every frame": lambda: decode_every_frame(clip),
    }
    photos = [p.read_bytes() for p in camera_jpegs(folder / "camera")] if CORPUS else []
    if photos:
        ten = (photos * 2)[:10]
        modes["ten 12 MP photos (prepare_image)"] = lambda: [prepare_image(d, 1024) for d in ten]
    print(f"# video benchmark, {machine()}")
    print(f"clip: {args.seconds} s, 1920x1080, 30 fps, {clip.stat().st_size / 2**20:.1f} MB")
    results = {}
    for name, action in modes.items():
        results[name] = statistics.median(cpu(action) for _ in range(args.rounds))
    base = results["baseline: decode every frame"]
    for name, seconds in results.items():
        print(f"  {name:34s} {seconds * 1000:8.0f} ms CPU  ({seconds / base:.3f} of decoding every frame)")
    if photos:
        ratio = results["native for Gemini (re-encoded)"] / results["ten 12 MP photos (prepare_image)"]
        print(f"  native prepare / ten photos: {ratio:.2f} (target <= 1)")
    sheet = prepare_video(path, 1024)
    native = prepare_video(path, 1024, native=True)
    sent = len(native.parts[0].data)
    print(f"bytes sent: Gemini clip {sent / 2**20:.2f} MB (target <= 3 MB), "
          f"contact sheet {len(sheet.jpeg) / 1024:.0f} KB")
    facts = probe(path)
    print("input tokens per clip (estimate, default prompt):")
    for name in ("gemini-2.5-flash-lite", "gpt-4.1-nano", "gpt-4o-mini", "claude-haiku-4-5"):
        model = get_model(name)
        tokens, audio = clip_tokens(model, facts, model.max_side, {}, "Describe this video clip.", None, 60.0)
        print(f"  {name:24s} {tokens:7,d} tokens ({audio:,d} audio)")


if __name__ == "__main__":
    main()
