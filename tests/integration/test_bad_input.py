"""Bad input gets the documented 4xx problem document and never reaches a worker."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import pytest
import requests
from PIL import Image

from tests.stack import Stack, make_image

SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'


def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A valid PNG header declaring ``width``×``height`` with a tiny (bogus) payload."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def truncated_jpeg() -> bytes:
    data = make_image(3, size=(400, 300), fmt="JPEG")
    return data[: len(data) // 2]


def _multipart(
    stack: Stack, image: bytes, key: str | None = None, **fields: Any
) -> requests.Response:
    return requests.post(
        f"{stack.url}/v1/jobs",
        files={"image": ("upload", image)},
        data={"prompt": "what is this?", **fields},
        headers={"Authorization": f"Bearer {key or stack.key}"},
        timeout=30,
    )


CASES = [
    (
        "not an image",
        lambda s: _multipart(s, b"hello, I am plain text"),
        415,
        "unsupported_image_format",
    ),
    ("truncated JPEG", lambda s: _multipart(s, truncated_jpeg()), 422, "image_undecodable"),
    ("0-byte file", lambda s: _multipart(s, b""), 422, "image_empty"),
    ("SVG", lambda s: _multipart(s, SVG), 415, "unsupported_image_format"),
    ("20000x20000 PNG bomb", lambda s: _multipart(s, png_bomb()), 422, "image_too_many_pixels"),
    (
        "prompt missing",
        lambda s: requests.post(
            f"{s.url}/v1/jobs",
            files={"image": ("a.png", make_image(1))},
            headers={"Authorization": f"Bearer {s.key}"},
            timeout=30,
        ),
        422,
        "invalid_fields",
    ),
    (
        "prompt too long",
        lambda s: _multipart(s, make_image(1), prompt="x" * 9000),
        422,
        "prompt_too_long",
    ),
    ("empty prompt", lambda s: _multipart(s, make_image(1), prompt=""), 422, "invalid_fields"),
    (
        "max_new_tokens above ceiling",
        lambda s: _multipart(s, make_image(1), max_new_tokens="100000"),
        422,
        "max_new_tokens_too_large",
    ),
    (
        "max_new_tokens not a number",
        lambda s: _multipart(s, make_image(1), max_new_tokens="many"),
        422,
        "invalid_fields",
    ),
    ("unknown field", lambda s: _multipart(s, make_image(1), colour="red"), 422, "invalid_fields"),
    (
        "wrong content type",
        lambda s: requests.post(
            f"{s.url}/v1/jobs",
            data=make_image(1),
            headers={"Authorization": f"Bearer {s.key}", "Content-Type": "image/png"},
            timeout=30,
        ),
        415,
        "unsupported_content_type",
    ),
    (
        "bad base64",
        lambda s: requests.post(
            f"{s.url}/v1/jobs",
            json={"image": "not*base64!", "prompt": "hi"},
            headers={"Authorization": f"Bearer {s.key}"},
            timeout=30,
        ),
        400,
        "invalid_base64",
    ),
    (
        "malformed JSON",
        lambda s: requests.post(
            f"{s.url}/v1/jobs",
            data=b'{"prompt": ',
            headers={"Authorization": f"Bearer {s.key}", "Content-Type": "application/json"},
            timeout=30,
        ),
        400,
        "invalid_json",
    ),
    (
        "bad key",
        lambda s: _multipart(s, make_image(1), key="sl_not-a-real-key"),
        401,
        "unauthorized",
    ),
    (
        "no key",
        lambda s: requests.post(
            f"{s.url}/v1/jobs", files={"image": ("a.png", make_image(1))}, timeout=30
        ),
        401,
        "unauthorized",
    ),
]


@pytest.mark.parametrize(("name", "send", "status", "code"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_a_problem(
    pg_stack: Stack, name: str, send: Any, status: int, code: str
) -> None:
    response = send(pg_stack)

    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status
    assert problem["code"] == code
    assert problem["detail"], "a precise detail is always given"
    assert pg_stack.jobs() == [], "nothing was written for a refused request"
    assert pg_stack.redis.llen("interactive") == 0, "nothing reached the broker"


def test_accepted_formats_are_normalised_to_png(pg_stack: Stack) -> None:
    frames = [Image.new("RGB", (2000, 500), c) for c in ("red", "blue")]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    for fmt, data in [
        ("JPEG", make_image(1, fmt="JPEG")),
        ("WEBP", make_image(2, fmt="WEBP")),
        ("BMP", make_image(3, fmt="BMP")),
        ("GIF", gif.getvalue()),
    ]:
        response = _multipart(pg_stack, data)
        assert response.status_code == 202, (fmt, response.text)
    big = max(pg_stack.jobs(), key=lambda j: j.image_width)
    assert (big.image_width, big.image_height) == (1024, 256), "longest side scaled to 1024"
