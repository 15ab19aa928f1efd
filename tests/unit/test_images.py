"""Image validation and normalisation (``shared.images``)."""

from __future__ import annotations

import io

import pytest
from PIL import GifImagePlugin, Image

from shared.errors import PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from shared.images import count_gif_frames, normalise_image
from tests.integration.test_bad_input import SVG, png_bomb

LIMITS = {"max_bytes": 1_000_000, "max_pixels": 5_000_000, "max_side": 256}


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP"])
def test_accepted_formats_become_rgb_png(fmt: str) -> None:
    result = normalise_image(encode(Image.new("RGB", (40, 30), "red"), fmt), **LIMITS)

    decoded = Image.open(io.BytesIO(result.png))
    assert decoded.format == "PNG" and decoded.mode == "RGB"
    assert (result.width, result.height) == (40, 30) == decoded.size
    assert result.source_format == fmt


def test_longest_side_is_scaled_down_keeping_aspect() -> None:
    result = normalise_image(encode(Image.new("RGB", (1000, 500)), "PNG"), **LIMITS)
    assert (result.width, result.height) == (256, 128)


def test_exif_orientation_is_applied_and_metadata_dropped() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    exif[0x010E] = "secret description"
    data = encode(Image.new("RGB", (60, 20), "blue"), "JPEG", exif=exif.tobytes())

    result = normalise_image(data, **LIMITS)

    assert (result.width, result.height) == (20, 60)
    assert b"secret description" not in result.png
    assert not Image.open(io.BytesIO(result.png)).getexif()


def test_transparency_is_flattened_onto_white() -> None:
    data = encode(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), "PNG")
    result = normalise_image(data, **LIMITS)
    assert Image.open(io.BytesIO(result.png)).getpixel((4, 4)) == (255, 255, 255)


def test_animated_gif_keeps_its_first_frame() -> None:
    frames = [Image.new("RGB", (10, 10), c) for c in ("red", "lime", "blue")]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    result = normalise_image(data, **LIMITS)
    assert Image.open(io.BytesIO(result.png)).getpixel((5, 5)) == (255, 0, 0)


@pytest.mark.parametrize(
    ("data", "error", "code"),
    [
        (b"", ValidationFailed, "image_empty"),
        (b"plain text", UnsupportedMediaType, "unsupported_image_format"),
        (SVG, UnsupportedMediaType, "unsupported_image_format"),
        (b"%PDF-1.7\n", UnsupportedMediaType, "unsupported_image_format"),
        (png_bomb(), ValidationFailed, "image_too_many_pixels"),
        (png_bomb(3000, 3000), ValidationFailed, "image_too_many_pixels"),
        (b"\0" * 1_000_001, PayloadTooLarge, "image_too_large"),
    ],
    ids=["empty", "text", "svg", "pdf", "bomb-20000", "bomb-3000", "too-many-bytes"],
)
def test_refusals(data: bytes, error: type[Exception], code: str) -> None:
    with pytest.raises(error) as raised:
        normalise_image(data, **LIMITS)
    assert getattr(raised.value, "code") == code  # noqa: B009


@pytest.mark.parametrize(
    ("size", "fmt"),
    [((201, 1), "PNG"), ((1, 201), "JPEG"), ((1000, 2), "GIF"), ((256, 1), "PNG")],
)
def test_a_strip_the_model_cannot_take_is_refused(size: tuple[int, int], fmt: str) -> None:
    with pytest.raises(ValidationFailed) as raised:
        normalise_image(encode(Image.new("RGB", size, "red"), fmt), **LIMITS)
    assert raised.value.code == "image_aspect_ratio"
    assert f"{size[0]}x{size[1]}" in raised.value.detail


def test_the_aspect_ratio_is_checked_on_the_stored_image() -> None:
    """A strip within the ratio that scaling down to the longest side pushes past it
    (its short side rounds down) is refused; one at the limit exactly is kept."""
    assert normalise_image(encode(Image.new("RGB", (200, 1)), "PNG"), **LIMITS).width == 200
    # 2151x11 is 195.5:1; scaled to 2048 wide it is 2048x10.47, stored as 2048x10.
    with pytest.raises(ValidationFailed) as raised:
        normalise_image(encode(Image.new("RGB", (2151, 11)), "PNG"), **{**LIMITS, "max_side": 2048})
    assert raised.value.code == "image_aspect_ratio"
    assert "2151x11 (2048x10 once scaled down)" in raised.value.detail


def test_truncated_image_is_undecodable() -> None:
    full = encode(Image.effect_noise((300, 300), 60).convert("RGB"), "JPEG")
    with pytest.raises(ValidationFailed) as raised:
        normalise_image(full[: len(full) // 2], **LIMITS)
    assert raised.value.code == "image_undecodable"
    assert "JPEG" in raised.value.detail


def pixel(result_png: bytes, xy: tuple[int, int] = (2, 2)) -> object:
    return Image.open(io.BytesIO(result_png)).getpixel(xy)


def test_16_bit_grey_is_scaled_not_clipped() -> None:
    result = normalise_image(encode(Image.new("I;16", (8, 8), 40000), "PNG"), **LIMITS)
    assert pixel(result.png) == (155, 155, 155)  # 40000 / 257, not 255


def test_colour_key_transparency_is_flattened_onto_white() -> None:
    data = encode(Image.new("RGB", (8, 8), (10, 20, 30)), "PNG", transparency=(10, 20, 30))
    assert pixel(normalise_image(data, **LIMITS).png) == (255, 255, 255)


def test_cmyk_and_bilevel_become_rgb() -> None:
    for image in (Image.new("CMYK", (8, 8), (0, 255, 255, 0)), Image.new("1", (8, 8), 1)):
        result = normalise_image(encode(image, "JPEG" if image.mode == "CMYK" else "PNG"), **LIMITS)
        assert Image.open(io.BytesIO(result.png)).mode == "RGB"


def test_icc_profile_and_trailing_bytes_are_not_kept() -> None:
    data = encode(Image.new("RGB", (8, 8)), "JPEG", icc_profile=b"private profile text" * 8)
    result = normalise_image(data + b"PK\x03\x04 trailing zip", **LIMITS)
    assert b"private profile" not in result.png and b"PK\x03\x04" not in result.png
    assert "icc_profile" not in Image.open(io.BytesIO(result.png)).info


def test_a_bare_8_bit_rgb_png_is_stored_as_sent() -> None:
    data = encode(Image.new("RGB", (40, 30), "red"), "PNG", compress_level=9)
    assert normalise_image(data, **LIMITS).png == data


def _png_with_text() -> bytes:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "private name")
    return encode(Image.new("RGB", (8, 8)), "PNG", pnginfo=info)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_png_with_text(), id="text chunk"),
        pytest.param(encode(Image.new("RGB", (8, 8)), "PNG") + b"PK\x03\x04zip", id="trailing"),
        pytest.param(encode(Image.new("RGB", (8, 8)), "PNG", dpi=(300, 300)), id="pHYs chunk"),
        pytest.param(encode(Image.new("RGBA", (8, 8)), "PNG"), id="alpha"),
        pytest.param(encode(Image.new("P", (8, 8)), "PNG"), id="palette"),
        pytest.param(encode(Image.new("I;16", (8, 8)), "PNG"), id="16-bit grey"),
        pytest.param(encode(Image.new("RGB", (300, 10)), "PNG"), id="too wide"),
    ],
)
def test_any_other_png_is_re_encoded_from_its_pixels(data: bytes) -> None:
    result = normalise_image(data, **LIMITS)
    assert result.png != data
    assert b"private name" not in result.png and b"PK\x03\x04" not in result.png
    assert Image.open(io.BytesIO(result.png)).mode == "RGB"


def test_large_jpeg_is_decoded_at_reduced_scale_to_the_right_size() -> None:
    data = encode(Image.new("RGB", (4000, 1000), "green"), "JPEG")
    result = normalise_image(data, **LIMITS)
    assert (result.width, result.height) == (256, 64)


def animation(fmt: str, frames: int) -> bytes:
    images = [Image.new("RGB", (6, 6), (i * 40 % 256, 0, 0)) for i in range(frames)]
    return encode(images[0], fmt, save_all=True, append_images=images[1:])


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_frame_count_is_limited(fmt: str) -> None:
    assert normalise_image(animation(fmt, 5), **LIMITS, max_frames=5).width == 6
    with pytest.raises(ValidationFailed) as raised:
        normalise_image(animation(fmt, 6), **LIMITS, max_frames=5)
    assert raised.value.code == "image_too_many_frames"


def test_gif_frames_are_counted_like_pillow_and_counting_stops_early() -> None:
    data = animation("GIF", 9)
    gif = Image.open(io.BytesIO(data))
    assert isinstance(gif, GifImagePlugin.GifImageFile)  # n_frames is the GIF plugin's
    assert count_gif_frames(data, stop_after=100) == gif.n_frames == 9
    assert count_gif_frames(data, stop_after=3) == 3
    assert count_gif_frames(data[:20], stop_after=100) == 0


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (encode(Image.new("RGB", (4, 4)), "TIFF"), "TIFF"),
        (b"\x00\x00\x00\x18ftypheic" + bytes(16), "HEIF"),
        (b"  <!DOCTYPE html><p>hi", "HTML"),
        (SVG, "SVG"),
    ],
    ids=["tiff", "heic", "html", "svg"],
)
def test_refused_formats_are_named(data: bytes, named: str) -> None:
    with pytest.raises(UnsupportedMediaType) as raised:
        normalise_image(data, **LIMITS)
    assert named in raised.value.detail


def test_a_corrupt_header_of_an_accepted_format_is_undecodable_not_unsupported() -> None:
    with pytest.raises(ValidationFailed) as raised:
        normalise_image(b"\x89PNG\r\n\x1a\n" + bytes(40), **LIMITS)
    assert raised.value.code == "image_undecodable" and "PNG" in raised.value.detail
