"""Video clips made in the tests with PyAV: colour segments, a corner marker to
check frames come out upright, rotation metadata, creation time, place and camera
tags, and an optional audio track."""

from __future__ import annotations

import io
from pathlib import Path

import av
from PIL import Image, ImageDraw

COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 220, 40)]
APPLE_TAGS = {
    "com.apple.quicktime.creationdate": "2024-07-14T20:03:21+0200",
    "com.apple.quicktime.location.ISO6709": "+48.8584+002.2945+035.000/",
    "com.apple.quicktime.make": "Apple",
    "com.apple.quicktime.model": "iPhone 15",
    "creation_time": "2024-07-14T18:03:21Z",
}


def upright_frame(colour: tuple[int, int, int], width: int, height: int) -> Image.Image:
    """A frame as the viewer should see it: one colour, a white block in the top-left corner."""
    image = Image.new("RGB", (width, height), colour)
    ImageDraw.Draw(image).rectangle((0, 0, width // 4, height // 4), fill=(255, 255, 255))
    return image


def make_clip(path: Path, seconds: float = 4.0, width: int = 320, height: int = 180, fps: int = 10,
              rotation: int = 0, audio: bool = True, tags: dict[str, str] | None = None, gop: int = 10) -> Path:
    """A clip whose colour changes in equal segments (one per COLOURS entry).
    `rotation`: degrees counter-clockwise a player turns the stored frames, as
    phones record portrait video; the stored frames are turned the other way."""
    container = av.open(str(path), "w", options={"movflags": "use_metadata_tags"})
    container.metadata.update(tags or {})
    stored_w, stored_h = (height, width) if rotation % 180 else (width, height)
    video = container.add_stream("libx264", rate=fps)
    video.width, video.height, video.pix_fmt = stored_w, stored_h, "yuv420p"
    video.options = {"g": str(gop)}
    if rotation:
        video.set_display_rotation(rotation)
    total = int(seconds * fps)
    for index in range(total):
        colour = COLOURS[min(len(COLOURS) - 1, index * len(COLOURS) // total)]
        shown = upright_frame(colour, width, height)
        stored = shown.rotate(-rotation, expand=True) if rotation else shown
        for packet in video.encode(av.VideoFrame.from_image(stored).reformat(format="yuv420p")):
            container.mux(packet)
    for packet in video.encode():
        container.mux(packet)
    container.close()
    if audio:
        _add_audio(path, seconds)
    return path


def _add_audio(path: Path, seconds: float) -> None:
    """Remux the clip with a silent AAC track (PyAV writes streams in one pass, so we copy)."""
    source = av.open(str(path))
    out = io.BytesIO()
    target = av.open(out, "w", format="mov", options={"movflags": "use_metadata_tags"})
    target.metadata.update(source.metadata)
    video_in = source.streams.video[0]
    video_out = target.add_stream_from_template(video_in)
    sound = target.add_stream("aac", rate=16000, layout="mono")
    for packet in source.demux(video_in):
        if packet.dts is None:
            continue
        packet.stream = video_out
        target.mux(packet)
    pts = 0
    for _ in range(int(seconds * 16000 / 1024)):
        frame = av.AudioFrame(format="fltp", layout="mono", samples=1024)
        frame.sample_rate, frame.pts = 16000, pts
        frame.planes[0].update(bytes(4096))
        pts += 1024
        for packet in sound.encode(frame):
            target.mux(packet)
    for packet in sound.encode():
        target.mux(packet)
    target.close()
    source.close()
    path.write_bytes(out.getvalue())


def clip_facts(data: bytes) -> tuple[float, bool]:
    """(duration in seconds, has audio) of a clip's bytes, as a server would read them."""
    with av.open(io.BytesIO(data)) as container:
        return container.duration / 1_000_000, bool(container.streams.audio)
