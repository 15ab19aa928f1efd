"""Downloading an image named by URL, under the SSRF guard, a size cap and a timeout."""

from __future__ import annotations

import requests

from shared.errors import PayloadTooLarge, ValidationFailed
from shared.ssrf import OutboundPolicy

_CHUNK_BYTES = 64 * 1024


def fetch_image(
    url: str, policy: OutboundPolicy, *, max_bytes: int, timeout_s: float, session: requests.Session
) -> bytes:
    """The body of ``GET url``; raises a 4xx :class:`~shared.errors.SightlineError`:
    ``forbidden_destination`` (SSRF guard), ``image_fetch_failed`` (network error,
    timeout, non-200 answer, redirect — not followed), ``image_too_large`` (over
    ``max_bytes``, checked while streaming so a huge body is not read)."""
    policy.check(url, field="image_url")
    try:
        with session.get(url, stream=True, timeout=timeout_s, allow_redirects=False) as response:
            if response.status_code != 200:
                raise ValidationFailed(
                    f"image_url answered HTTP {response.status_code}", code="image_fetch_failed"
                )
            body = bytearray()
            for chunk in response.iter_content(_CHUNK_BYTES):
                body += chunk
                if len(body) > max_bytes:
                    raise PayloadTooLarge(
                        f"image_url body exceeds {max_bytes} bytes", code="image_too_large"
                    )
            return bytes(body)
    except requests.RequestException as exc:
        raise ValidationFailed(
            f"image_url could not be fetched: {type(exc).__name__}", code="image_fetch_failed"
        ) from exc
