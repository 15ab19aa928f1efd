"""Downloading an image named by URL through the outbound client: SSRF guard with the
address pinned, a size cap and a total deadline."""

from __future__ import annotations

from shared.error_codes import ErrorCode
from shared.errors import PayloadTooLarge, ValidationFailed
from shared.outbound import DeadlineExceeded, OutboundClient, OutboundFailed
from shared.ssrf import OutboundPolicy


def fetch_image(
    url: str,
    policy: OutboundPolicy,
    *,
    max_bytes: int,
    timeout_s: float,
) -> bytes:
    """The body of ``GET url``, all of it within ``timeout_s`` seconds; raises a 4xx
    :class:`~shared.errors.SightlineError`: ``forbidden_destination`` (SSRF guard),
    ``image_fetch_failed`` (network or TLS error, deadline passed, non-200 answer,
    redirect — not followed), ``image_too_large`` (over ``max_bytes``: reading stops
    there)."""
    try:
        response = OutboundClient(policy).request(
            "GET", url, field="image_url", deadline_s=timeout_s, max_body_bytes=max_bytes
        )
    except DeadlineExceeded as exc:
        raise ValidationFailed(
            f"image_url did not answer within {timeout_s:g} s", code=ErrorCode.IMAGE_FETCH_FAILED
        ) from exc
    except OutboundFailed as exc:
        raise ValidationFailed(
            f"image_url could not be fetched: {exc}", code=ErrorCode.IMAGE_FETCH_FAILED
        ) from exc
    if response.status != 200:
        raise ValidationFailed(
            f"image_url answered HTTP {response.status}", code=ErrorCode.IMAGE_FETCH_FAILED
        )
    if response.truncated:
        raise PayloadTooLarge(
            f"image_url body exceeds {max_bytes} bytes", code=ErrorCode.IMAGE_TOO_LARGE
        )
    return response.body
