"""Image validation and normalisation at the door.

Every image is decoded here, once, before a job is accepted: a caller learns at once,
with a precise 4xx, that an upload is not a usable image, and a worker only ever sees
images that decode. What is stored is the normalised form: first frame, EXIF orientation
applied, RGB (8 bits per channel, transparency flattened onto white), longest side at
most ``max_image_side``, re-encoded as PNG from the pixels alone (no EXIF, XMP, ICC
profile, text chunks or trailing bytes survive). A PNG that already is exactly that (8-bit
RGB, nothing but header, pixel data and end chunks, within the size limit) is decoded in
full all the same, then kept as sent: re-encoding it would only cost time.

Order of the checks, cheapest first, so that hostile input costs little: size in bytes,
format from the magic bytes and the header, declared pixels, declared frames; only then
is one frame decoded.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from shared.error_codes import ErrorCode
from shared.errors import PayloadTooLarge, UnsupportedMediaType, ValidationFailed

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
_ACCEPTED_TEXT = "JPEG, PNG, WebP, GIF, BMP"
DEFAULT_MAX_FRAMES = 1000
# The most a stored image's longer side may be of its shorter one: GLM-4V's image
# processor (transformers' ``smart_resize``) refuses more, so such a job could only fail
# (tests/unit/test_engine.py checks that the processor takes every ratio up to it).
MAX_ASPECT_RATIO = 200

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_BARE_PNG_CHUNKS = (b"IHDR", b"IDAT", b"IEND")
_RGB_8_BITS = b"\x08\x02"  # IHDR bit depth 8, colour type 2 (truecolour)
# Leading bytes of the accepted formats: a file that starts like one of them but that
# Pillow cannot identify is a corrupt image (422), not a foreign format (415).
_ACCEPTED_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (PNG_SIGNATURE, "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
)
# Formats callers send by mistake (or on purpose), named in the refusal. Vector and
# document formats can carry scripts and external references and are never rendered.
_REFUSED_MAGIC = (
    (b"%PDF", "PDF"),
    (b"%!PS", "PostScript"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
    (b"PK\x03\x04", "ZIP"),
)
# Text formats, matched on the lower-cased start after leading whitespace.
_REFUSED_TEXT = (
    (b"<svg", "SVG"),
    (b"<?xml", "XML/SVG"),
    (b"<!doctype html", "HTML"),
    (b"<html", "HTML"),
)
# Pixel modes holding more than 8 bits of grey (16-bit greyscale PNG): scaled, not clipped.
_WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


@dataclass(frozen=True)
class NormalisedImage:
    """A validated image re-encoded as PNG, with its size in pixels and original format."""

    png: bytes
    width: int
    height: int
    source_format: str


def normalise_image(
    data: bytes,
    *,
    max_bytes: int,
    max_pixels: int,
    max_side: int,
    max_frames: int = DEFAULT_MAX_FRAMES,
) -> NormalisedImage:
    """Validate ``data`` and return its normalised PNG.

    Raises, in this order of checking:

    - :class:`ValidationFailed` ``image_empty`` (422) for 0 bytes or a 0-pixel image;
    - :class:`PayloadTooLarge` ``image_too_large`` (413) above ``max_bytes`` bytes;
    - :class:`UnsupportedMediaType` ``unsupported_image_format`` (415) for anything that
      is not JPEG, PNG, WebP, GIF or BMP (SVG, PDF, TIFF, HEIC, text…), named when known;
    - :class:`ValidationFailed` ``image_too_many_pixels`` (422) when the header declares
      more than ``max_pixels`` width×height (read from the header, before any pixel is
      decoded, so a tiny file declaring 60000×60000 costs nothing);
    - :class:`ValidationFailed` ``image_too_many_frames`` (422) when an animated GIF,
      WebP or PNG has more than ``max_frames`` frames (GIF frames are counted by walking
      the block headers, at most ``max_frames + 1`` of them, without decoding any);
    - :class:`ValidationFailed` ``image_undecodable`` (422) for a corrupt, truncated or
      otherwise undecodable image in an accepted format;
    - :class:`ValidationFailed` ``image_aspect_ratio`` (422) when the normalised image's
      longer side is over :data:`MAX_ASPECT_RATIO` times its shorter one (the model's
      image processor would refuse it: the job could only fail).

    Only the first frame of an animation is decoded, once, so decoding costs at most
    ``max_pixels`` pixels whatever the frame count. Large JPEGs are decoded directly at a
    reduced scale (DCT scaling) when the result is scaled down anyway.
    """
    if not data:
        raise ValidationFailed("the image is empty (0 bytes)", code=ErrorCode.IMAGE_EMPTY)
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"the image is {len(data)} bytes; the limit is {max_bytes}",
            code=ErrorCode.IMAGE_TOO_LARGE,
        )
    image = _open(data)
    with image:
        source_format = str(image.format)
        sent = image.size
        _check_declared_size(image, max_pixels)
        _check_frames(image, data, max_frames)
        try:
            rgb = _decode_first_frame(image, max_side)
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
            raise ValidationFailed(
                f"the {source_format} image cannot be decoded: {exc}",
                code=ErrorCode.IMAGE_UNDECODABLE,
            ) from exc
    if source_format == "PNG" and max(rgb.size) <= max_side and _bare_rgb_png(data):
        # Already what re-encoding would produce (8-bit RGB pixels and nothing else):
        # keep the caller's bytes and skip the encoder, the costliest step at the door.
        _check_aspect_ratio(sent, rgb.size)
        return NormalisedImage(data, rgb.width, rgb.height, source_format)
    if max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    _check_aspect_ratio(sent, rgb.size)  # of what is stored: scaling down rounds a side
    # The PNG encoder writes parts of ``info`` back (ICC profile, transparency): keep
    # nothing but the pixels.
    rgb.info.clear()
    out = io.BytesIO()
    # Level 1: several times faster than the default 6 for a few percent more bytes; the
    # encoder sits on the intake path of every job (10,000 per bulk request).
    rgb.save(out, format="PNG", compress_level=1)
    return NormalisedImage(out.getvalue(), rgb.width, rgb.height, source_format)


def _bare_rgb_png(data: bytes) -> bool:
    """Whether the PNG ``data`` is 8-bit RGB (no alpha, no palette) and holds only image
    header, pixel data and end chunks, and not one byte after the end: no text, EXIF, ICC
    profile, transparency or animation chunks, no appended payload (polyglots)."""
    ihdr = len(PNG_SIGNATURE) + 8
    if data[ihdr - 4 : ihdr] != b"IHDR" or data[ihdr + 8 : ihdr + 10] != _RGB_8_BITS:
        return False
    position = len(PNG_SIGNATURE)
    while position + 12 <= len(data):
        length: int = struct.unpack_from(">I", data, position)[0]
        kind = data[position + 4 : position + 8]
        if kind not in _BARE_PNG_CHUNKS:
            return False
        position += 12 + length
        if kind == b"IEND":
            return position == len(data)
    return False


def _open(data: bytes) -> Image.Image:
    """Identify and open (header only); the refusals name what was sent."""
    try:
        with warnings.catch_warnings():
            # Our own pixel limit is checked next; Pillow's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ValidationFailed(str(exc), code=ErrorCode.IMAGE_TOO_MANY_PIXELS) from exc
    except UnidentifiedImageError as exc:
        raise _unidentified(data) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ValidationFailed(
            f"the image header cannot be read: {exc}", code=ErrorCode.IMAGE_UNDECODABLE
        ) from exc


def _unidentified(data: bytes) -> ValidationFailed | UnsupportedMediaType:
    """The error for data Pillow could not identify: corrupt (422) if it starts like an
    accepted format, else unsupported (415), naming the format when it is a known one."""
    accepted = _sniff(data, _ACCEPTED_MAGIC)
    if accepted is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        accepted = "WEBP"
    if accepted is not None:
        return ValidationFailed(
            f"the data starts like a {accepted} image but its header is corrupt",
            code=ErrorCode.IMAGE_UNDECODABLE,
        )
    refused = _sniff(data, _REFUSED_MAGIC) or _sniff(data[:256].lstrip().lower(), _REFUSED_TEXT)
    if refused is None and data[4:8] == b"ftyp":
        refused = "HEIF/AVIF (ISO media)"
    what = f"{refused} is not accepted" if refused else "not a recognised image"
    return UnsupportedMediaType(
        f"{what}; accepted formats: {_ACCEPTED_TEXT}", code=ErrorCode.UNSUPPORTED_IMAGE_FORMAT
    )


def _sniff(head: bytes, table: tuple[tuple[bytes, str], ...]) -> str | None:
    return next((name for magic, name in table if head.startswith(magic)), None)


def _check_declared_size(image: Image.Image, max_pixels: int) -> None:
    width, height = image.size
    if width < 1 or height < 1:
        raise ValidationFailed(
            f"the image has no pixels ({width}x{height})", code=ErrorCode.IMAGE_EMPTY
        )
    if width * height > max_pixels:
        raise ValidationFailed(
            f"the image declares {width}x{height} = {width * height} pixels; "
            f"the limit is {max_pixels}",
            code=ErrorCode.IMAGE_TOO_MANY_PIXELS,
        )


def _check_aspect_ratio(sent: tuple[int, int], stored: tuple[int, int]) -> None:
    """Refuse an image whose ``stored`` size (``sent``, scaled down to the longest side
    allowed) is over :data:`MAX_ASPECT_RATIO` to one."""
    if max(stored) <= MAX_ASPECT_RATIO * min(stored):
        return
    scaled = f" ({stored[0]}x{stored[1]} once scaled down)" if stored != sent else ""
    raise ValidationFailed(
        f"the image is {sent[0]}x{sent[1]}{scaled}: its longer side is over "
        f"{MAX_ASPECT_RATIO} times its shorter one, which the model cannot take; crop or pad it",
        code=ErrorCode.IMAGE_ASPECT_RATIO,
    )


def _check_frames(image: Image.Image, data: bytes, max_frames: int) -> None:
    if image.format == "GIF":
        # Pillow's GIF ``n_frames`` walks every frame in Python: a 20 MB file of empty
        # frames would take seconds. Count the block headers ourselves, and stop early.
        frames = count_gif_frames(data, stop_after=max_frames + 1)
    else:
        # WebP and APNG declare their frame count in a header that is already parsed.
        frames = int(getattr(image, "n_frames", 1))
    if frames > max_frames:
        counted = f"more than {max_frames}" if image.format == "GIF" else str(frames)
        raise ValidationFailed(
            f"the animated {image.format} image has {counted} frames; the limit is {max_frames}",
            code=ErrorCode.IMAGE_TOO_MANY_FRAMES,
        )


def count_gif_frames(data: bytes, *, stop_after: int) -> int:
    """Image descriptors in the GIF ``data``, counting no further than ``stop_after``.

    Walks block headers and sub-block lengths only (no LZW decoding), so it costs a few
    operations per 255 bytes. Stops at the trailer, at the end of the data, or at the
    first byte that starts no known block (Pillow reports such damage when decoding).
    """
    if len(data) < 13:
        return 0
    pos = 13 + _colour_table_bytes(data[10])
    frames = 0
    while pos < len(data) and frames < stop_after:
        kind = data[pos]
        if kind == 0x21:  # extension: introducer, label, then sub-blocks
            pos += 2
        elif kind == 0x2C and pos + 10 <= len(data):  # image descriptor
            frames += 1
            pos += 10 + _colour_table_bytes(data[pos + 9]) + 1  # +1: LZW minimum code size
        else:  # 0x3B trailer, or damage
            break
        while pos < len(data):  # data sub-blocks, each prefixed by its length
            size = data[pos]
            pos += 1 + size
            if size == 0:
                break
    return frames


def _colour_table_bytes(flags: int) -> int:
    return 3 << ((flags & 0x07) + 1) if flags & 0x80 else 0


def _decode_first_frame(image: Image.Image, max_side: int) -> Image.Image:
    """Decode frame 0, apply its EXIF orientation and return it as 8-bit RGB."""
    if image.format == "JPEG" and max(image.size) > max_side:
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale (never below the target size).
        scale = max_side / max(image.size)
        image.draft(None, (max(1, int(image.width * scale)), max(1, int(image.height * scale))))
    image.load()
    ImageOps.exif_transpose(image, in_place=True)
    return _to_rgb(image)


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: 16-bit grey scaled (not clipped) to 8 bits; transparency (alpha
    channel, palette or colour-key ``tRNS``) flattened onto white, which a model sees
    as background (it would see black otherwise); CMYK, palette and bilevel converted."""
    if image.mode in _WIDE_GREY_MODES:
        return image.convert("I").point(lambda value: value * (1 / 257)).convert("RGB")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")
