"""Image validation and normalisation at the door.

Every image is decoded here, once, before a job is accepted: a caller learns at once,
with a precise 4xx, that an upload is not a usable image, and a worker only ever sees
images that decode. What is stored is the normalised form: first frame, EXIF orientation
applied, RGB, longest side at most ``max_image_side``, re-encoded as PNG (which also
strips all metadata).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from shared.errors import PayloadTooLarge, UnsupportedMediaType, ValidationFailed

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
_ACCEPTED_TEXT = "JPEG, PNG, WebP, GIF, BMP"


@dataclass(frozen=True)
class NormalisedImage:
    """A validated image re-encoded as PNG, with its size in pixels and original format."""

    png: bytes
    width: int
    height: int
    source_format: str


def normalise_image(
    data: bytes, *, max_bytes: int, max_pixels: int, max_side: int
) -> NormalisedImage:
    """Validate ``data`` and return its normalised PNG.

    Raises :class:`PayloadTooLarge` (413) above ``max_bytes``; :class:`ValidationFailed`
    (422) for an empty or undecodable (e.g. truncated) image, or one whose decoded size
    exceeds ``max_pixels`` (checked from the header, before any pixel is decoded, so a
    tiny file declaring 20000×20000 costs nothing); :class:`UnsupportedMediaType` (415)
    for anything that is not one of the accepted raster formats (SVG, PDF, text…).
    """
    if not data:
        raise ValidationFailed("the image is empty (0 bytes)", code="image_empty")
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"the image is {len(data)} bytes; the limit is {max_bytes}", code="image_too_large"
        )
    image = _open(data)
    width, height = image.size
    if width < 1 or height < 1:
        raise ValidationFailed(f"the image has no pixels ({width}x{height})", code="image_empty")
    if width * height > max_pixels:
        raise ValidationFailed(
            f"the image declares {width}x{height} = {width * height} pixels; "
            f"the limit is {max_pixels}",
            code="image_too_many_pixels",
        )
    source_format = str(image.format)
    try:
        image.seek(0)
        image.load()
        image = ImageOps.exif_transpose(image)
        rgb = _to_rgb(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValidationFailed(
            f"the {source_format} image cannot be decoded: {exc}", code="image_undecodable"
        ) from exc
    if max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    rgb.save(out, format="PNG")
    return NormalisedImage(out.getvalue(), rgb.width, rgb.height, source_format)


def _open(data: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Our own pixel limit is checked next; Pillow's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ValidationFailed(str(exc), code="image_too_many_pixels") from exc
    except UnidentifiedImageError as exc:
        raise UnsupportedMediaType(
            f"not a recognised image; accepted formats: {_ACCEPTED_TEXT}",
            code="unsupported_image_format",
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ValidationFailed(
            f"the image header cannot be read: {exc}", code="image_undecodable"
        ) from exc


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB with transparency flattened onto white (a model sees black otherwise)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")
