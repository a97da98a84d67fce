"""Preparing images: orientation, pixel formats, size, EXIF, and clear failures."""

from __future__ import annotations

import io
import math

import pytest
from PIL import Image, ImageChops, ImageStat

from captioner.media import ImageError, prepare_image, read_file


def prepared(path, max_side=1024):
    data, _ = read_file(path)
    return prepare_image(data, max_side)


def picture(result):
    return Image.open(io.BytesIO(result.jpeg))


def difference(a, b):
    return ImageStat.Stat(ImageChops.difference(a.convert("L"), b.convert("L"))).mean[0]


def test_all_eight_exif_orientations_come_out_upright(corpus):
    folder = corpus / "photos" / "orientation"
    shown = [picture(prepared(folder / f"Portrait_{n}.jpg")) for n in range(2, 9)]
    assert {im.size for im in shown} == {(683, 1024)}
    for im in shown[1:]:
        # Every file is the same photo stored differently; only the digit overlay differs.
        assert difference(shown[0], im) < 6


def test_heic_rotation_is_not_applied_twice(corpus):
    arrow = picture(prepared(corpus / "photos" / "orientation" / "arrow.heic"))
    assert arrow.size == (768, 1024)
    dark = arrow.convert("L").point(lambda v: 255 if v < 80 else 0)
    top = dark.crop((0, 0, 768, 480)).getbbox()
    bottom = dark.crop((0, 560, 768, 1024)).getbbox()
    # An arrow pointing up is wide at the head (top) and narrow at the shaft (bottom).
    assert (top[2] - top[0]) > 1.8 * (bottom[2] - bottom[0])


def test_16_bit_grey_is_scaled_not_clipped_to_white(corpus):
    im = picture(prepared(corpus / "bad" / "gray16_camera.png"))
    reference = picture(prepared(corpus / "bad" / "camera.png"))
    assert difference(im, reference) < 3


def test_transparent_areas_become_white_not_black(corpus):
    im = picture(prepared(corpus / "bad" / "alpha_photo.png"))
    assert min(im.getpixel((0, 0))) > 240


def test_cmyk_is_converted_to_rgb(corpus):
    im = picture(prepared(corpus / "bad" / "cmyk_photo.jpg"))
    assert im.mode == "RGB" and im.size == (1024, 768)
    red, _, blue = ImageStat.Stat(im.crop((880, 40, 1000, 120))).mean
    assert blue > red + 20 and blue > 150  # the sky is blue; inverted CMYK would make it dark orange


def test_animations_show_several_frames(corpus):
    sheet = picture(prepared(corpus / "bad" / "chi.gif"))
    first_only = Image.open(corpus / "bad" / "chi.gif").convert("L")
    dark_in_sheet = sum(1 for v in sheet.convert("L").get_flattened_data() if v < 100)
    dark_in_first = sum(1 for v in first_only.get_flattened_data() if v < 100)
    assert dark_in_sheet > 5 * dark_in_first


def test_large_photos_shrink_to_max_side_as_jpeg(corpus):
    result = prepared(corpus / "photos" / "craft-beer.jpg")
    assert (result.width, result.height) == (6000, 4000)
    assert (result.sent_width, result.sent_height) == (1024, 683)
    assert picture(result).format == "JPEG"


@pytest.mark.parametrize(
    "name, words",
    [
        ("truncated_photo.jpg", "truncated"),
        ("decompression_bomb.gif", "too large"),
        ("huge_dimensions_header.png", "too large"),
        ("broken.png", "not a readable image"),
        ("corrupted.heic", "not a readable image"),
    ],
)
def test_broken_files_raise_a_clear_image_error(corpus, name, words):
    with pytest.raises(ImageError, match=words):
        prepared(corpus / "bad" / name)


def test_exif_facts(corpus):
    oppo = prepared(corpus / "photos" / "Oppo_R7_Plus.jpg").exif
    assert (oppo.camera_make, oppo.camera_model, oppo.taken_at) == ("OPPO", "R7plusf", "2018-07-16T17:52:22")
    assert oppo.gps_lat == pytest.approx(60.267, abs=1e-3) and oppo.gps_lon == pytest.approx(8.771, abs=1e-3)
    heic = prepared(corpus / "photos" / "IMG_2682.heic").exif
    assert heic.gps_lon == pytest.approx(-96.07, abs=1e-2)  # West is negative


@pytest.mark.parametrize("name", ["photos/empty_gps.jpg", "bad/exif_gps_garbage.jpg"])
def test_nan_or_garbage_gps_is_none(corpus, name):
    exif = prepared(corpus / name).exif
    assert exif.gps_lat is None and exif.gps_lon is None


def test_noisy_photos_stay_under_the_upload_cap(corpus):
    from captioner.media import MAX_JPEG_BYTES

    result = prepared(corpus / "bad" / "cmyk_photo.jpg")  # fine grass texture: 320 KB at quality 85
    assert len(result.jpeg) <= MAX_JPEG_BYTES
    assert (result.sent_width, result.sent_height) == (1024, 768)


def _progressive_photo(width: int = 2400, height: int = 1600) -> bytes:
    """A progressive JPEG with detail in it (refinement scans carry real bits)."""
    import random

    rng = random.Random(3)
    im = Image.radial_gradient("L").resize((width, height)).convert("RGB")
    noise = Image.frombytes("RGB", (width // 8, height // 8),
                            bytes(rng.randrange(256) for _ in range(width // 8 * height // 8 * 3)))
    im = Image.blend(im, noise.resize((width, height)), 0.5)
    out = io.BytesIO()
    im.save(out, "JPEG", quality=90, progressive=True)
    return out.getvalue()


def test_a_progressive_jpeg_is_cut_before_its_refinement_scans_and_still_looks_the_same(monkeypatch):
    from captioner import media

    data = _progressive_photo()
    cut = media.without_refinement_scans(data)
    assert len(cut) < len(data) and cut.endswith(b"\xff\xd9")
    Image.open(io.BytesIO(cut)).load()  # a valid JPEG on its own
    sent = prepare_image(data, 512)
    monkeypatch.setattr(media, "without_refinement_scans", lambda data: data)
    every_scan = prepare_image(data, 512)
    assert (sent.sent_width, sent.sent_height) == (every_scan.sent_width, every_scan.sent_height)
    difference = ImageChops.difference(Image.open(io.BytesIO(sent.jpeg)).convert("RGB"),
                                       Image.open(io.BytesIO(every_scan.jpeg)).convert("RGB"))
    mse = sum(ImageStat.Stat(difference.point(lambda v: v * v)).mean) / 3
    assert 10 * math.log10(255 ** 2 / mse) > 33  # what is sent barely differs from decoding every scan


def test_anything_but_a_whole_progressive_jpeg_is_left_as_it_is():
    from captioner.media import without_refinement_scans

    baseline = io.BytesIO()
    Image.new("RGB", (300, 200), "red").save(baseline, "JPEG")
    progressive = _progressive_photo(400, 300)
    for data in (baseline.getvalue(), b"not a jpeg", b"\xff\xd8\xff\xe0\x00", progressive[: len(progressive) // 10]):
        assert without_refinement_scans(data) == data
