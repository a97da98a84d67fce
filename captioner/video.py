"""Reading video clips with PyAV (its wheels carry FFmpeg: no ffmpeg binary needed).

`probe` reads the container headers only (duration, displayed size, rotation,
audio, creation time, place, camera). `prepare_video` turns a clip into what a
model is sent: frames sampled across the whole clip, upright, as one contact
sheet with timestamps (every model) or several images; and, for models that
take video (Gemini), a small re-encoded copy: keyframes only at 720p, audio
kept unless asked not to, at most `max_seconds` long. Decoding never holds more
than the frames it keeps, so a 4K ten-minute clip does not load whole.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction

import av
from PIL import Image, ImageDraw

from .media import ExifFacts, ImageError, PreparedImage, encode_jpeg

# A typical phone clip of 15 s costs about what 1-3 photos cost with these.
DEFAULT_SHEET_FRAMES = 6
MAX_FRAMES = 16
from .defaults import DEFAULT_MAX_VIDEO_SECONDS  # noqa: E402

NATIVE_SHORT_SIDE = 720
NATIVE_VIDEO_BITRATE = 600_000
NATIVE_AUDIO_BITRATE = 32_000
VIDEO_FORMATS = {"mov,mp4,m4a,3gp,3g2,mj2": "MP4", "matroska,webm": "MKV", "avi": "AVI"}


class VideoError(ImageError):
    """This clip cannot be read (truncated, no video stream, unknown codec)."""


@dataclass(frozen=True)
class VideoFacts:
    duration_s: float
    width: int  # as displayed, rotation applied
    height: int
    rotation: int  # degrees counter-clockwise the stored frames need to be upright
    fps: float
    codec: str
    has_audio: bool
    format: str
    exif: ExifFacts = field(default_factory=ExifFacts)


@dataclass(frozen=True)
class MediaPart:
    """One piece of media a request carries besides the prompt."""

    kind: str  # "image" or "video"
    data: bytes = field(repr=False)
    mime_type: str
    width: int = 0
    height: int = 0
    duration_s: float | None = None
    has_audio: bool = False
    at_s: float | None = None  # where in the clip a frame comes from
    uri: str | None = None  # where a provider holds an uploaded copy (then `data` is empty)

    def __repr__(self) -> str:
        return f"MediaPart({self.kind}, {self.mime_type}, {len(self.data):,} bytes, {self.width}x{self.height})"


def probe(path: str) -> VideoFacts:
    """What the container says, without decoding a frame."""
    try:
        with av.open(path, metadata_errors="ignore") as container:
            if not container.streams.video:
                raise VideoError("no video stream (audio only?)")
            stream = container.streams.video[0]
            duration = _duration(container, stream)
            if duration <= 0:
                raise VideoError("the clip has no duration (truncated or still being written?)")
            rotation = _rotation(container, stream)
            width, height = stream.codec_context.width, stream.codec_context.height
            if not width or not height:
                raise VideoError(f"unreadable video stream ({stream.codec_context.name})")
            if rotation % 180:
                width, height = height, width
            tags = {k.lower(): v for k, v in {**container.metadata, **stream.metadata}.items()}
            fmt = next((name for key, name in VIDEO_FORMATS.items() if container.format.name == key), "video")
            return VideoFacts(
                duration_s=round(duration, 3),
                width=width,
                height=height,
                rotation=rotation,
                fps=float(stream.average_rate or 0),
                codec=stream.codec_context.name,
                has_audio=bool(container.streams.audio),
                format=fmt,
                exif=_facts(tags),
            )
    except VideoError:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError) as exc:
        raise VideoError(f"not a readable video: {exc}") from exc


def _duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float:
    if container.duration:
        return container.duration / 1_000_000
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return 0.0


def _rotation(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int:
    """Counter-clockwise degrees from the display matrix (or the old `rotate` tag)."""
    tag = stream.metadata.get("rotate")
    if tag is not None:
        try:
            return (-int(tag)) % 360
        except ValueError:
            return 0
    try:
        for frame in container.decode(stream):  # side data travels with the first frame
            return round(frame.rotation or 0) % 360
    except av.FFmpegError:
        return 0
    return 0


ISO6709 = re.compile(r"([+-]\d+(?:\.\d+)?)([+-]\d+(?:\.\d+)?)")


def _facts(tags: dict[str, str]) -> ExifFacts:
    """Taken-at (Apple's local creation date first, else the UTC creation time), place and camera."""
    taken = tags.get("com.apple.quicktime.creationdate") or tags.get("creation_time")
    place = (tags.get("com.apple.quicktime.location.iso6709") or tags.get("location")
             or tags.get("location-eng") or tags.get("\xa9xyz"))
    lat = lon = None
    if place and (match := ISO6709.match(place.strip())):
        lat, lon = float(match.group(1)), float(match.group(2))
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            lat = lon = None
    return ExifFacts(
        taken_at=_iso(taken) if taken else None,
        camera_make=tags.get("com.apple.quicktime.make") or tags.get("make"),
        camera_model=tags.get("com.apple.quicktime.model") or tags.get("model"),
        gps_lat=lat,
        gps_lon=lon,
    )


def _iso(text: str) -> str:
    """`2024-07-14T20:03:21+0200` → `2024-07-14T20:03:21`: local wall time, as photos keep it."""
    return text.strip().replace(" ", "T")[:19]


def sample_times(duration: float, count: int) -> list[float]:
    """The centres of `count` equal parts of the clip: spread over all of it, never all from its start."""
    return [duration * (i + 0.5) / count for i in range(count)]


def frames_at(path: str, times: list[float], rotation: int, max_side: int, tolerance: float = 0.0
              ) -> list[tuple[float, Image.Image]]:
    """One upright frame for each time: the keyframe before it when that is
    within `tolerance` seconds (phones put one every second or two, and it
    costs one decode), else the frame at the time, decoding forward from there."""
    found: list[tuple[float, Image.Image]] = []
    try:
        with av.open(path, metadata_errors="ignore") as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            time_base = stream.time_base or Fraction(1, 1_000_000)
            for target in times:
                container.seek(int(target / time_base), stream=stream, backward=True, any_frame=False)
                for frame in container.decode(stream):
                    at = float(frame.time or 0.0)
                    if at + 1e-3 >= target - max(tolerance, 0.5 / max(1.0, float(stream.average_rate or 25))):
                        found.append((at, _upright(frame.to_image(), rotation, max_side)))
                        break
    except (av.FFmpegError, OSError, IndexError) as exc:
        raise VideoError(f"cannot decode the clip: {exc}") from exc
    if not found:
        raise VideoError("no frame could be decoded")
    return found


def _upright(image: Image.Image, rotation: int, max_side: int) -> Image.Image:
    image = image.convert("RGB")
    if rotation:
        image = image.rotate(rotation, expand=True)
    image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return image


def contact_sheet(frames: list[tuple[float, Image.Image]], max_side: int) -> Image.Image:
    """The frames on one grid in reading order, each labelled with its time."""
    count = len(frames)
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    cell_w = max(1, max_side // columns)
    cells = []
    for at, image in frames:
        image = image.copy()
        image.thumbnail((cell_w, cell_w), Image.Resampling.BILINEAR)
        cells.append((at, image))
    cell_h = max(image.height for _, image in cells)
    cell_w = max(image.width for _, image in cells)
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    for index, (at, image) in enumerate(cells):
        x, y = (index % columns) * cell_w, (index // columns) * cell_h
        sheet.paste(image, (x, y))
        label = f"{int(at // 60)}:{at % 60:04.1f}"
        draw.rectangle((x, y, x + 6 * len(label) + 4, y + 12), fill=(0, 0, 0))
        draw.text((x + 2, y + 1), label, fill=(255, 255, 255))
    return sheet


def frame_count(duration: float, requested: int | None) -> int:
    """How many frames to sample: as asked, else one per 2.5 s, 4 to 6."""
    if requested:
        return max(1, min(MAX_FRAMES, requested))
    return max(4, min(DEFAULT_SHEET_FRAMES, round(duration / 2.5)))


def sheet_size(facts: VideoFacts, frames: int, max_side: int) -> tuple[int, int]:
    """The contact sheet's pixel size, from the headers alone (for estimates)."""
    columns = math.ceil(math.sqrt(frames))
    rows = math.ceil(frames / columns)
    cell = max(1, max_side // columns)
    scale = min(1.0, cell / max(facts.width, facts.height))
    w, h = max(1, round(facts.width * scale)), max(1, round(facts.height * scale))
    return columns * w, rows * h


@dataclass(frozen=True)
class PreparedVideo(PreparedImage):
    """A clip made ready to send: the contact sheet as `jpeg` (what any model can
    take), plus the parts a model that takes more receives."""

    duration_s: float = 0.0
    parts: tuple[MediaPart, ...] = ()
    clipped: bool = False


def prepare_video(path: str, max_side: int, *, frames: int | None = None, separate_frames: bool = False,
                  native: bool = False, keep_audio: bool = True,
                  max_seconds: float = DEFAULT_MAX_VIDEO_SECONDS) -> PreparedVideo:
    facts = probe(path)
    count = frame_count(min(facts.duration_s, max_seconds) if native else facts.duration_s, frames)
    # A keyframe anywhere in a frame's half of its segment will do: it stays in that part of the clip.
    segment = facts.duration_s / count
    sampled = frames_at(path, sample_times(facts.duration_s, count), facts.rotation, max_side, segment / 2)
    sheet = contact_sheet(sampled, max_side)
    parts: tuple[MediaPart, ...] = ()
    if native:
        data, sent_seconds, has_audio = reencode(path, facts, keep_audio, max_seconds)
        parts = (MediaPart("video", data, "video/mp4", facts.width, facts.height, sent_seconds, has_audio),)
    elif separate_frames:
        parts = tuple(MediaPart("image", encode_jpeg(image), "image/jpeg", image.width, image.height, at_s=at)
                      for at, image in sampled)
    return PreparedVideo(
        jpeg=encode_jpeg(sheet),
        width=facts.width,
        height=facts.height,
        sent_width=sheet.width,
        sent_height=sheet.height,
        format=facts.format,
        exif=facts.exif,
        duration_s=facts.duration_s,
        parts=parts,
        clipped=facts.duration_s > max_seconds,
    )


def reencode(path: str, facts: VideoFacts, keep_audio: bool, max_seconds: float) -> tuple[bytes, float, bool]:
    """A small MP4 for a model that watches video: keyframes only (Gemini samples
    one frame a second anyway), short side at most 720 px, upright, mono AAC
    audio, and no longer than `max_seconds`. Returns the bytes, the seconds
    kept and whether audio was kept."""
    limit = min(facts.duration_s, max_seconds)
    out = io.BytesIO()
    try:
        with av.open(path, metadata_errors="ignore") as source, av.open(out, "w", format="mp4") as target:
            video_in = source.streams.video[0]
            video_in.codec_context.skip_frame = "NONKEY"
            scale = min(1.0, NATIVE_SHORT_SIDE / min(facts.width, facts.height))
            width, height = (max(2, int(facts.width * scale) // 2 * 2), max(2, int(facts.height * scale) // 2 * 2))
            video_out = target.add_stream("libx264", rate=2)
            video_out.width, video_out.height, video_out.pix_fmt = width, height, "yuv420p"
            video_out.bit_rate = NATIVE_VIDEO_BITRATE
            # A frame or two a second of still-ish pictures: the fastest preset loses nothing that matters.
            video_out.options = {"preset": "ultrafast", "tune": "stillimage"}
            video_out.time_base = Fraction(1, 1000)
            audio_in = source.streams.audio[0] if keep_audio and source.streams.audio else None
            audio_out = target.add_stream("aac", rate=16000, layout="mono") if audio_in is not None else None
            if audio_out is not None:
                audio_out.bit_rate = NATIVE_AUDIO_BITRATE
            last_ms = -1
            for frame in source.decode(video_in):
                at = float(frame.time or 0.0)
                if at > limit:
                    break
                if facts.rotation:
                    image = _upright(frame.to_image(), facts.rotation, 10_000).resize((width, height))
                    out_frame = av.VideoFrame.from_image(image).reformat(format="yuv420p")
                else:  # scaled by libswscale, no detour through Pillow
                    out_frame = frame.reformat(width=width, height=height, format="yuv420p")
                out_frame.pts = max(last_ms + 1, int(at * 1000))
                last_ms = out_frame.pts
                out_frame.time_base = Fraction(1, 1000)
                for packet in video_out.encode(out_frame):
                    target.mux(packet)
            for packet in video_out.encode():
                target.mux(packet)
            if audio_in is not None and audio_out is not None:
                resampler = av.AudioResampler(format="fltp", layout="mono", rate=16000)
                source.seek(0)
                for frame in source.decode(audio_in):
                    if float(frame.time or 0.0) > limit:
                        break
                    for resampled in resampler.resample(frame):
                        for packet in audio_out.encode(resampled):
                            target.mux(packet)
                for resampled in resampler.resample(None):
                    for packet in audio_out.encode(resampled):
                        target.mux(packet)
                for packet in audio_out.encode():
                    target.mux(packet)
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoError(f"cannot re-encode the clip: {exc}") from exc
    return out.getvalue(), round(limit, 3), audio_in is not None


def poster_jpeg(path: str, side: int) -> bytes:
    """A frame from the middle of the clip, upright, for galleries."""
    facts = probe(path)
    (_, image), = frames_at(path, [facts.duration_s / 2], facts.rotation, side)
    return encode_jpeg(image)


@dataclass(frozen=True)
class SendMode:
    """How a clip goes to a model: the clip itself, several frames, or one contact sheet."""

    native: bool
    separate_frames: bool
    frames: int | None
    keep_audio: bool


def send_mode(accepts_video: bool, max_images: int, options: dict[str, str]) -> SendMode:
    requested = int(options["video_frames"]) if "video_frames" in options else None
    native = accepts_video and options.get("video_mode", "native") != "frames"
    separate = not native and max_images > 1 and (requested or 0) > 1
    return SendMode(native, separate, requested, options.get("video_audio", "on") != "off")


def frame_size(facts: VideoFacts, max_side: int) -> tuple[int, int]:
    """The size one sampled frame is sent at."""
    scale = min(1.0, max_side / max(facts.width, facts.height))
    return max(1, round(facts.width * scale)), max(1, round(facts.height * scale))
