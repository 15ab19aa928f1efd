"""Image validation and normalisation (``shared.images``)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from shared.errors import PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from shared.images import normalise_image
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


def test_truncated_image_is_undecodable() -> None:
    full = encode(Image.effect_noise((300, 300), 60).convert("RGB"), "JPEG")
    with pytest.raises(ValidationFailed) as raised:
        normalise_image(full[: len(full) // 2], **LIMITS)
    assert raised.value.code == "image_undecodable"
    assert "JPEG" in raised.value.detail
