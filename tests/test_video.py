"""Video clips: read, prepared, sent natively to Gemini and as frames to the rest, priced, estimated, exported."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from clips import APPLE_TAGS, COLOURS, make_clip
from PIL import Image, ImageStat

from captioner.video import contact_sheet, frames_at, prepare_video, probe, sample_times

from conftest import rows, run


@pytest.fixture
def library(photos, tmp_path):
    """Photos and phone-style clips in one folder."""
    make_clip(photos / "beach.mov", seconds=4, rotation=90, tags=APPLE_TAGS)
    make_clip(photos / "street.mp4", seconds=6, width=256, height=144, audio=False,
              tags={"creation_time": "2023-05-01T09:30:00Z", "location": "+40.7128-074.0060/"})
    return photos


def is_white(pixel) -> bool:
    return all(channel > 200 for channel in pixel)


# -- reading ---------------------------------------------------------------------------


def test_probe_reads_the_container_facts(library):
    facts = probe(str(library / "beach.mov"))
    assert (facts.width, facts.height, facts.rotation) == (320, 180, 90)  # as displayed
    assert facts.duration_s == pytest.approx(4.0, abs=0.1) and facts.has_audio
    assert facts.exif.taken_at == "2024-07-14T20:03:21"  # Apple's local time, not the UTC creation_time
    assert (facts.exif.gps_lat, facts.exif.gps_lon) == (48.8584, 2.2945)
    assert (facts.exif.camera_make, facts.exif.camera_model) == ("Apple", "iPhone 15")
    other = probe(str(library / "street.mp4"))
    assert other.exif.taken_at == "2023-05-01T09:30:00" and (other.exif.gps_lat, other.exif.gps_lon) == (
        40.7128, -74.006)
    assert not other.has_audio


def test_frames_are_spread_over_the_whole_clip_and_upright(library):
    facts = probe(str(library / "beach.mov"))
    times = sample_times(facts.duration_s, 4)
    frames = frames_at(str(library / "beach.mov"), times, facts.rotation, 512, tolerance=0.5)
    # A keyframe each second: each sample is the keyframe of its own second.
    assert [round(at, 1) for at, _ in frames] == pytest.approx([0.0, 1.0, 2.0, 3.0], abs=0.15)
    for (_, image), colour in zip(frames, COLOURS):
        assert image.size == (320, 180)  # landscape as shown, though stored portrait
        assert is_white(image.getpixel((10, 10)))  # the marker is top-left: upright
        assert not is_white(image.getpixel((310, 170)))
        mean = ImageStat.Stat(image.crop((160, 90, 320, 180))).mean
        assert max(range(3), key=lambda c: mean[c]) == max(range(3), key=lambda c: colour[c])


def test_the_contact_sheet_shows_every_segment(library):
    facts = probe(str(library / "beach.mov"))
    frames = frames_at(str(library / "beach.mov"), sample_times(facts.duration_s, 4), facts.rotation, 512)
    sheet = contact_sheet(frames, 1024)
    assert sheet.size == (640, 360)  # 2 x 2 cells of the 320 x 180 frames (never enlarged)
    for index, colour in enumerate(COLOURS):  # in reading order, one segment per cell
        x, y = (index % 2) * 320, (index // 2) * 180
        mean = ImageStat.Stat(sheet.crop((x + 160, y + 90, x + 320, y + 180))).mean
        assert max(range(3), key=lambda c: mean[c]) == max(range(3), key=lambda c: colour[c])


def test_a_long_clip_is_clipped_for_native_and_says_so(tmp_path):
    clip = make_clip(tmp_path / "long.mp4", seconds=8, audio=False)
    prepared = prepare_video(str(clip), 1024, native=True, max_seconds=3)
    video = prepared.parts[0]
    assert prepared.clipped and video.duration_s == 3
    assert probe_bytes_duration(video.data) <= 3.6


def probe_bytes_duration(data: bytes) -> float:
    from clips import clip_facts

    return clip_facts(data)[0]


# -- captioning --------------------------------------------------------------------------


def test_gemini_watches_each_clip_inline_and_bills_it_by_the_second(fake_gemini, library, db):
    result = run("caption", library, "-m", "gemini-2.5-flash-lite", "--db", db, "--json")
    assert result.exit_code == 0, result.output
    assert len(fake_gemini.videos) == 2 and fake_gemini.files == {}
    clips = {r["path"].rsplit("/", 1)[1]: r for r in rows(
        db, "SELECT i.path, i.kind, i.duration_s, i.width, i.height, i.taken_at, i.gps_lat, i.camera_model, "
            "c.caption, c.input_tokens, c.cost_usd, c.prompt FROM images i JOIN captions c ON c.image_id = i.id "
            "WHERE i.kind = 'video'")}
    beach = clips["beach.mov"]
    assert (beach["width"], beach["height"], beach["taken_at"], beach["gps_lat"], beach["camera_model"]) == (
        320, 180, "2024-07-14T20:03:21", 48.8584, "iPhone 15")
    assert beach["caption"].startswith("video ") and "video clip" in beach["prompt"]
    # 4 s with sound at the defaults (a frame every 4 s, low resolution): 1 x 66 video
    # + 4 x 32 audio tokens, the audio at its own (higher) rate.
    text = beach["input_tokens"] - (66 + 4 * 32)
    assert 0 < text < 60
    expected = (beach["input_tokens"] - 128) * 0.10e-6 + 128 * 0.30e-6 + 22 * 0.40e-6
    assert beach["cost_usd"] == pytest.approx(expected, rel=1e-6)
    assert 0 < clips["street.mp4"]["input_tokens"] - 2 * 66 < 60  # 2 frames in 6 s; no sound, no audio tokens
    assert rows(db, "SELECT kind, duration_s FROM photo_captions WHERE kind = 'video' ORDER BY path")[0][
        "duration_s"] == pytest.approx(4.0, abs=0.1)


def test_a_clip_over_the_inline_limit_goes_through_the_files_api(fake_gemini, library, db, monkeypatch):
    from captioner.default_plugins import gemini_models

    monkeypatch.setattr(gemini_models, "INLINE_LIMIT_BYTES", 1000)
    monkeypatch.setattr(gemini_models, "FILE_POLL_SECONDS", 0.01)
    fake_gemini.processing_polls = 2  # still PROCESSING on the first two looks
    result = run("caption", library / "beach.mov", "-m", "gemini-2.5-flash-lite", "--db", db)
    assert result.exit_code == 0, result.output
    assert fake_gemini.deleted == ["files/s1"] and fake_gemini.files == {}  # uploaded, used once ACTIVE, deleted
    (generate,) = [r for r in fake_gemini.received if r.path.endswith(":generateContent")]
    assert "file_data" in json.dumps(generate.body) and "inline_data" not in json.dumps(generate.body)
    assert rows(db, "SELECT status FROM captions")[0]["status"] == "ok"


def test_models_without_video_get_one_contact_sheet(fake_openai, library, db):
    run("caption", library / "beach.mov", "-m", "gpt-4o-mini", "--db", db)
    (request,) = fake_openai.image_requests
    assert len(request.images) == 1
    with Image.open(__import__("io").BytesIO(request.images[0])) as sheet:
        assert sheet.size[0] > sheet.size[1]  # a grid of upright landscape frames


def test_video_frames_sends_several_images_where_the_model_takes_them(fake_openai, fake_anthropic, library, db):
    run("caption", library / "beach.mov", "-m", "gpt-4o-mini", "--db", db, "-o", "video_frames", "4")
    assert len(fake_openai.image_requests[0].images) == 4
    run("caption", library / "beach.mov", "-m", "claude-haiku-4-5", "--db", db, "-o", "video_frames", "3")
    assert len(fake_anthropic.image_requests[0].images) == 3


def test_no_videos_leaves_clips_out(fake_openai, library, db):
    result = run("caption", library, "-m", "gpt-4o-mini", "--db", db, "--no-videos", "--json")
    reasons = [s["reason"] for s in json.loads(result.output)["skipped"]]
    assert reasons.count("video (--no-videos)") == 2


def test_a_live_photo_is_one_moment(fake_openai, photos, db):
    shutil.copy(photos / "pug.heic", photos / "IMG_1234.HEIC")
    make_clip(photos / "IMG_1234.MOV", seconds=2)
    result = run("caption", photos, "-m", "gpt-4o-mini", "--db", db, "--json")
    skipped = {s["path"].rsplit("/", 1)[1]: s["reason"] for s in json.loads(result.output)["skipped"]}
    assert skipped["IMG_1234.MOV"].startswith("motion part of IMG_1234.HEIC")
    both = run("caption", photos, "-m", "gpt-4o-mini", "--db", db, "--live-photos", "separate", "--json")
    assert json.loads(both.output)["ok"] == 1  # now the clip too


def test_bad_videos_fail_or_are_skipped_and_the_run_goes_on(fake_gemini, photos, db, tmp_path):
    good = make_clip(tmp_path / "good.mp4", seconds=2)
    data = good.read_bytes()
    (photos / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (photos / "zero.mov").write_bytes(b"")
    (photos / "corrupt_moov.mov").write_bytes(data[:64] + b"\0" * 400)
    audio_only = bytearray(data[:40])
    audio_only[8:12] = b"M4A "
    (photos / "song.m4a").write_bytes(bytes(audio_only) + b"\0" * 100)
    result = run("caption", photos, "-m", "gemini-2.5-flash-lite", "--db", db, "--json")
    assert "Traceback" not in result.output
    summary = json.loads(result.output)
    assert summary["ok"] == len(list(photos.glob("*"))) - 4 and summary["status"] == "completed"
    failures = {f["path"].rsplit("/", 1)[1] for f in summary["failures"]}
    assert {"truncated.mp4", "corrupt_moov.mov"} <= failures
    skipped = {s["path"].rsplit("/", 1)[1]: s["reason"] for s in summary["skipped"]}
    assert skipped["zero.mov"] == "empty file" and skipped["song.m4a"] == "not an image"


# -- estimate, cost, exports -------------------------------------------------------------------


@pytest.mark.parametrize("model, fixture", [("gemini-2.5-flash-lite", "fake_gemini"), ("gpt-4o-mini", "fake_openai"),
                                            ("claude-haiku-4-5", "fake_anthropic")])
def test_estimate_for_clips_is_within_5_percent_of_the_bill(model, fixture, request, tmp_path, db):
    request.getfixturevalue(fixture)
    folder = tmp_path / "clips"
    folder.mkdir()
    make_clip(folder / "a.mov", seconds=4, rotation=90, tags=APPLE_TAGS)
    make_clip(folder / "b.mp4", seconds=7, width=256, height=144, audio=False)
    estimate = json.loads(run("estimate", folder, "-m", model, "--json").output)[0]
    assert estimate["videos"] == 2
    run("caption", folder, "-m", model, "--db", db)
    billed = rows(db, "SELECT sum(input_tokens) AS n FROM captions")[0]["n"]
    assert abs(estimate["input_tokens"] - billed) / billed < 0.05


def test_cost_by_kind_separates_photo_and_video_spending(fake_gemini, library, db):
    run("caption", library, "-m", "gemini-2.5-flash-lite", "--db", db)
    by_kind = {r["kind"]: r for r in json.loads(run("cost", "--db", db, "--by", "kind", "--json").output)}
    assert set(by_kind) == {"image", "video"} and by_kind["video"]["ok"] == 2


def test_xmp_sidecars_for_clips_are_read_by_exiftool(fake_gemini, library, db):
    run("caption", library, "-m", "gemini-2.5-flash-lite", "--db", db)
    before = (library / "beach.mov").read_bytes()
    assert run("export", "--db", db, "--format", "xmp").exit_code == 0
    assert run("export", "--db", db, "--format", "xmp", "--sidecar-name", "replace").exit_code == 0
    assert (library / "beach.mov").read_bytes() == before  # the clip itself is never rewritten
    for sidecar in (library / "beach.mov.xmp", library / "beach.xmp"):
        assert sidecar.exists()
        if shutil.which("exiftool"):
            out = subprocess.run(["exiftool", "-s3", "-XMP-dc:Description", str(sidecar)], capture_output=True,
                                 text=True).stdout.strip()
            assert out.startswith("video ")


def test_the_gallery_shows_a_poster_frame_with_a_duration_badge(fake_gemini, library, db, tmp_path):
    run("caption", library, "-m", "gemini-2.5-flash-lite", "--db", db)
    page = tmp_path / "g.html"
    assert run("export", "--db", db, "--format", "html", "--out", page).exit_code == 0
    text = page.read_text()
    assert "▶ 0:04" in text and "▶ 0:06" in text
    assert len(list((tmp_path / "g_files").iterdir())) == len(list(library.iterdir()))


def test_gemini_video_options_change_the_bill_and_the_estimate_follows(fake_gemini, tmp_path, db):
    folder = tmp_path / "clips"
    folder.mkdir()
    make_clip(folder / "a.mov", seconds=4, audio=True)
    options = ["-o", "video_fps", "1", "-o", "media_resolution", "high", "-o", "video_audio", "off"]
    estimate = json.loads(run("estimate", folder, "-m", "gemini-2.5-flash-lite", *options, "--json").output)[0]
    run("caption", folder, "-m", "gemini-2.5-flash-lite", "--db", db, *options)
    billed = rows(db, "SELECT input_tokens FROM captions")[0]["input_tokens"]
    assert 4 * 258 < billed < 4 * 258 + 60  # four frames at full resolution, no sound sent
    assert abs(estimate["input_tokens"] - billed) / billed < 0.05
    assert fake_gemini.videos and not __import__("clips").clip_facts(fake_gemini.videos[0])[1]
