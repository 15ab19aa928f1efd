"""A corpus of hostile submissions, generated here, sent through the real HTTP API.

Each input gets the 4xx problem document its case names (status, stable code, a detail
that says what is wrong), or is accepted (202) as a valid image; never a 5xx. Then a
worker runs every accepted input of the corpus: each job ends (succeeded, or failed with
an error code) on its first claim, and the worker never dies; none fails in the model
(an image the model cannot take, such as a 1000x2 strip, is refused at the door).
"""

from __future__ import annotations

import base64
import io
import json
import random
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
import requests
from PIL import Image, ImageDraw

from tests.integration.test_bad_input import SVG, png_bomb
from tests.stack import Stack

PROMPT = "describe it"
ACCEPTED = (202, None)
# What a randomly damaged image may become: fine, corrupt, unknown, or nonsense sizes.
DAMAGED = {
    ACCEPTED,
    (415, "unsupported_image_format"),
    (422, "image_undecodable"),
    (422, "image_too_many_pixels"),
    (422, "image_empty"),
}


# --- image builders -------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def picture(size: tuple[int, int] = (96, 64), mode: str = "RGB") -> Image.Image:
    image = Image.effect_noise(size, 40).convert("RGB")
    inset = min(size) // 4
    ImageDraw.Draw(image).ellipse((inset, inset, size[0] - inset, size[1] - inset), fill="red")
    return image.convert(mode)


def seed(fmt: str) -> bytes:
    image = picture()
    return encode(image.convert("P") if fmt == "GIF" else image, fmt)


def truncated(fmt: str) -> bytes:
    data = seed(fmt)
    return data[: len(data) // 2]


def bit_flipped(fmt: str, rng_seed: int) -> bytes:
    data = bytearray(seed(fmt))
    rng = random.Random(rng_seed)
    for _ in range(rng_seed % 7 + 1):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return bytes(data)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_with_zero_width() -> bytes:
    header = struct.pack(">IIBBBBB", 0, 10, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IEND", b"")


def gif_declaring(width: int, height: int) -> bytes:
    data = bytearray(encode(picture((8, 8), "P"), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    descriptor = data.index(b"\x2c", 13)  # the image descriptor's own size too
    data[descriptor + 5 : descriptor + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def jpeg_declaring(width: int, height: int) -> bytes:
    data = bytearray(encode(picture((16, 16)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def bmp_declaring(width: int, height: int) -> bytes:
    data = bytearray(encode(picture((4, 4)), "BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def gif_frames(count: int, size: tuple[int, int]) -> bytes:
    """``count`` frames of alternating colours (identical frames would be merged)."""
    frames = [Image.new("P", size, i % 2) for i in range(count)]
    frames[0].putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], optimize=False)


def webp_frames(count: int) -> bytes:
    frames = [Image.new("RGB", (4, 4), ((i * 37) % 256, i % 256, 0)) for i in range(count)]
    return encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)


def apng_declaring(frames: int) -> bytes:
    two = [picture((8, 8)), picture((8, 8)).rotate(90)]
    data = bytearray(encode(two[0], "PNG", save_all=True, append_images=two[1:]))
    actl = data.index(b"acTL")
    data[actl + 4 : actl + 8] = struct.pack(">I", frames)
    data[actl + 12 : actl + 16] = struct.pack(">I", zlib.crc32(bytes(data[actl : actl + 12])))
    return bytes(data)


def palette_tricks() -> bytes:
    """A 2-entry palette, pixels indexing far past it, and a tRNS longer than the palette."""
    image = Image.new("P", (16, 16))
    image.putdata([(i * 17) % 256 for i in range(256)])
    image.putpalette([0, 0, 0, 255, 255, 255])
    data = encode(image, "PNG")
    iend = data.rindex(b"IEND") - 4
    return data[:iend] + png_chunk(b"tRNS", bytes(range(256))) + data[iend:]


def png_16bit(mode: str) -> bytes:
    if mode == "I;16":
        return encode(Image.new("I;16", (20, 10), 40000), "PNG")
    raw = struct.pack(">HHHH", 65535, 0, 30000, 40000) * 200  # 16-bit RGBA, 20x10
    rows = b"".join(b"\x00" + raw[i * 160 : (i + 1) * 160] for i in range(10))
    header = struct.pack(">IIBBBBB", 20, 10, 16, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


def jpeg_with_exif(orientation: int | None, garbage: bool = False) -> bytes:
    image = picture((60, 20))
    if garbage:
        data = encode(image, "JPEG")
        app1 = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff" + bytes(40)
        return data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:]
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", exif=exif.tobytes())


def png_with_colour_key() -> bytes:
    return encode(picture((16, 16)), "PNG", transparency=(200, 40, 40))


def zip_archive() -> bytes:
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("payload.html", "<script>alert(1)</script>")
    return out.getvalue()


GIF_JS_POLYGLOT = (
    b"GIF89a/*\x00\x00\x00\x00\x00*/=1;alert(document.domain);//" + b"\x00" * 16 + b";"
)
HTML = b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>"


# --- request senders ------------------------------------------------------------------


Part = tuple[str, str | None, str | None, bytes]  # name, filename, content type, body


def multipart_body(parts: list[Part], boundary: str = "corpus-boundary") -> bytes:
    lines = []
    for name, filename, content_type, body in parts:
        disposition = f'form-data; name="{name}"' + (
            f'; filename="{filename}"' if filename is not None else ""
        )
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        lines.append(head.encode() + b"\r\n" + body + b"\r\n")
    return b"".join(lines) + f"--{boundary}--\r\n".encode()


def raw(content_type: str, body: bytes) -> Callable[[Stack], requests.Response]:
    def send(stack: Stack) -> requests.Response:
        return requests.post(
            f"{stack.url}/v1/jobs",
            data=body,
            headers={"Authorization": f"Bearer {stack.key}", "Content-Type": content_type},
            timeout=60,
        )

    return send


def parts(
    *extra: Part, image: bytes | None = None, **meta: str
) -> Callable[[Stack], requests.Response]:
    """Multipart with ``image`` (built lazily) and a prompt, plus ``extra`` raw parts."""
    filename = meta.get("filename", "upload.bin")
    content_type = meta.get("content_type", "application/octet-stream")
    image_parts: list[Part] = [] if image is None else [("image", filename, content_type, image)]
    fields: list[Part] = [("max_new_tokens", None, None, b"4")]
    if not any(part[0] == "prompt" for part in extra):
        fields.append(("prompt", None, None, PROMPT.encode()))
    body = multipart_body([*image_parts, *fields, *extra])
    return raw("multipart/form-data; boundary=corpus-boundary", body)


def image(builder: Callable[[], bytes], **meta: str) -> Callable[[Stack], requests.Response]:
    def send(stack: Stack) -> requests.Response:
        return parts(image=builder(), **meta)(stack)

    return send


def json_text(text: str) -> Callable[[Stack], requests.Response]:
    return raw("application/json", text.encode("utf-8", "surrogatepass"))


def json_job(**fields: Any) -> str:
    body = {"image": base64.b64encode(seed("PNG")).decode(), "max_new_tokens": 4, **fields}
    return json.dumps({"prompt": PROMPT, **body} if "prompt" not in fields else body)


def nested(depth: int) -> str:
    return json_job().rstrip("}") + ', "extra": ' + "[" * depth + "]" * depth + "}"


# --- the corpus -----------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    send: Callable[[Stack], requests.Response]
    expect: frozenset[tuple[int, str | None]]
    detail: str = ""  # a fragment the refusal's detail must contain


def case(
    name: str,
    send: Callable[[Stack], requests.Response],
    *expect: tuple[int, str | None],
    detail: str = "",
) -> Case:
    return Case(name, send, frozenset(expect), detail)


FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
CORPUS = [
    *[
        case(f"truncated {fmt}", image(partial(truncated, fmt)), (422, "image_undecodable"))
        for fmt in FORMATS
    ],
    *[
        case(f"bit-flipped {fmt} #{n}", image(partial(bit_flipped, fmt, n)), *DAMAGED)
        for fmt in FORMATS
        for n in range(5)
    ],
    case("PNG signature and header only", image(lambda: seed("PNG")[:33]), *DAMAGED),
    case("JPEG SOI marker only", image(lambda: b"\xff\xd8\xff"), (422, "image_undecodable")),
    case("RIFF/WEBP header only", image(lambda: b"RIFF\x04\x00\x00\x00WEBP"), *DAMAGED),
    case("zero-size file", image(lambda: b""), (422, "image_empty"), detail="0 bytes"),
    case("PNG 0 pixels wide", image(png_with_zero_width), (422, "image_empty"), *DAMAGED),
    case("PNG declaring 60000x60000", image(lambda: png_bomb(60000, 60000)),
         (422, "image_too_many_pixels"), detail="3600000000 pixels"),
    case("GIF declaring 65535x65535", image(lambda: gif_declaring(65535, 65535)),
         (422, "image_too_many_pixels")),
    case("JPEG declaring 65000x65000", image(lambda: jpeg_declaring(65000, 65000)),
         (422, "image_too_many_pixels")),
    case("BMP declaring 30000x30000", image(lambda: bmp_declaring(30000, 30000)),
         (422, "image_too_many_pixels")),
    case("palette with out-of-range indices and long tRNS", image(palette_tricks), ACCEPTED),
    case("palette PNG with transparency", image(
        lambda: encode(picture(mode="P"), "PNG", transparency=3)), ACCEPTED),
    case("CMYK JPEG", image(lambda: encode(picture(mode="CMYK"), "JPEG")), ACCEPTED),
    case("16-bit greyscale PNG", image(lambda: png_16bit("I;16")), ACCEPTED),
    case("16-bit RGBA PNG", image(lambda: png_16bit("RGBA")), ACCEPTED),
    case("greyscale+alpha PNG", image(lambda: encode(picture(mode="LA"), "PNG")), ACCEPTED),
    case("1-bit PNG", image(lambda: encode(picture(mode="1"), "PNG")), ACCEPTED),
    case("RGB PNG with colour-key tRNS", image(png_with_colour_key), ACCEPTED),
    case("JPEG with EXIF rotation", image(lambda: jpeg_with_exif(6)), ACCEPTED),
    case("JPEG with EXIF orientation 99", image(lambda: jpeg_with_exif(99)), ACCEPTED),
    case("JPEG with garbage EXIF", image(lambda: jpeg_with_exif(None, garbage=True)), ACCEPTED),
    case("GIF with 1001 frames", image(lambda: gif_frames(1001, (1, 1))),
         (422, "image_too_many_frames"), detail="more than 1000 frames"),
    case("WebP with 1001 frames", image(lambda: webp_frames(1001)),
         (422, "image_too_many_frames"), detail="1001 frames"),
    case("APNG declaring 2**31 frames", image(lambda: apng_declaring(2**31)),
         (422, "image_too_many_frames")),
    case("GIF 4 frames of 3000x3000", image(lambda: gif_frames(4, (3000, 3000))), ACCEPTED),
    case("PNG strip 1000x2", image(lambda: encode(picture((1000, 2)), "PNG")),
         (422, "image_aspect_ratio"), detail="1000x2"),
    case("JPEG strip 3x700", image(lambda: encode(picture((3, 700)), "JPEG")),
         (422, "image_aspect_ratio"), detail="3x700"),
    case("PNG strip 200x1, the most the model takes", image(
        lambda: encode(picture((200, 1)), "PNG")), ACCEPTED),
    case("PNG + ZIP polyglot", image(lambda: seed("PNG") + zip_archive()), ACCEPTED),
    case("GIF + JavaScript polyglot", image(lambda: GIF_JS_POLYGLOT), *DAMAGED),
    case("JPEG + trailing HTML", image(lambda: seed("JPEG") + HTML), ACCEPTED),
    case("HTML named cat.png", image(lambda: HTML, filename="cat.png", content_type="image/png"),
         (415, "unsupported_image_format"), detail="HTML"),
    case("SVG with script named cat.png",
         image(lambda: SVG.replace(b"/>", b"><script>alert(1)</script></svg>"),
               filename="cat.png", content_type="image/png"),
         (415, "unsupported_image_format"), detail="SVG"),
    case("PDF", image(lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"), (415, "unsupported_image_format"),
         detail="PDF"),
    case("TIFF", image(lambda: encode(picture(), "TIFF")), (415, "unsupported_image_format"),
         detail="TIFF"),
    case("ICO", image(lambda: encode(picture((32, 32)), "ICO")),
         (415, "unsupported_image_format"), detail="ICO"),
    case("ZIP", image(zip_archive), (415, "unsupported_image_format"), detail="ZIP"),
    case("PNG named virus.exe", image(lambda: seed("PNG"), filename="virus.exe",
         content_type="application/x-msdownload"), ACCEPTED),
    case("JPEG sent as text/plain", image(lambda: seed("JPEG"), content_type="text/plain"),
         ACCEPTED),
    case("body as image/png", raw("image/png", seed("PNG")), (415, "unsupported_content_type")),
    case("url-encoded form", raw("application/x-www-form-urlencoded", b"prompt=hi&image=x"),
         (415, "unsupported_content_type")),
    case("text/plain body", raw("text/plain", b"hello"), (415, "unsupported_content_type")),
    case("JSON in latin-1", raw("application/json; charset=latin-1", json_job().encode()),
         (415, "unsupported_content_type"), detail="latin-1"),
]  # fmt: skip
CORPUS += [
    case("multipart prompt not UTF-8 (\\xff)", parts(("prompt", None, None, b"hi \xff there"),
         image=seed("PNG")), (422, "invalid_text"), detail="0xff at offset 3"),
    case("multipart prompt with NUL", parts(("prompt", None, None, b"hi\x00there"),
         image=seed("PNG")), (422, "invalid_text"), detail="NUL"),
    case("multipart repeated prompt", parts(("prompt", None, None, b"a"),
         ("prompt", None, None, b"b"), image=seed("PNG")), (400, "invalid_multipart"),
         detail="repeated"),
    case("multipart prompt sent as a file", parts(("prompt", "p.txt", "text/plain", b"hi"),
         image=seed("PNG")), (400, "invalid_multipart")),
    case("multipart two images", parts(("image", "b.png", None, seed("PNG")),
         image=seed("PNG")), (400, "invalid_multipart")),
    case("multipart 40 parts", parts(*[(f"f{i}", None, None, b"x") for i in range(40)],
         image=seed("PNG")), (400, "invalid_multipart"), detail="more than 32 parts"),
    case("multipart body over the size limit", image(lambda: bytes(30 << 20)),
         (413, "body_too_large")),
    case("multipart prompt part over 1 MiB", parts(("prompt", None, None, b"x" * (1 << 21)),
         image=seed("PNG")), (413, "body_too_large"), detail="'prompt'"),
    case("multipart without boundary", raw("multipart/form-data", b"--x\r\n\r\n"),
         (400, "invalid_multipart"), detail="boundary"),
    case("multipart garbage", raw("multipart/form-data; boundary=b", b"\x00" * 64),
         (400, "invalid_multipart")),
    case("multipart deeply nested response_format", parts(
         ("response_format", None, None, b"[" * 5000 + b"]" * 5000), image=seed("PNG")),
         (422, "invalid_fields")),
    case("multipart prompt with emoji, RTL and control characters", parts(
         ("prompt", None, None, "a\u202eb\u0007c\U0001f600 \ufffd".encode()),
         image=seed("PNG")), ACCEPTED),
    case("JSON prompt with \\u0000", json_text(json_job(prompt="a\u0000b")),
         (422, "invalid_text"), detail="position 1"),
    case("JSON prompt with a lone surrogate",
         json_text(json_job(prompt="x").replace('"x"', '"\\ud800"')),
         (422, "invalid_text"), detail="U+D800"),
    case("JSON body not UTF-8", raw("application/json", b'{"prompt": "\xff"}'),
         (400, "invalid_json"), detail="UTF-8"),
    case("JSON nested 100 deep", json_text(nested(100)), (400, "json_too_deep")),
    case("JSON nested 100000 deep", json_text(nested(100_000)), (400, "json_too_deep")),
    case("JSON with 20000 values", json_text(json_job().rstrip("}") + ', "x": ['
         + ",".join(["0"] * 20_000) + "]}"), (400, "json_too_complex")),
    case("JSON 5000-digit integer", json_text(json_job().replace('"max_new_tokens": 4',
         '"max_new_tokens": ' + "9" * 5000)), (400, "invalid_json")),
    case("JSON 300-digit integer", json_text(json_job().replace('"max_new_tokens": 4',
         '"max_new_tokens": ' + "9" * 300)), (422, "max_new_tokens_too_large")),
    case("JSON temperature 1e999", json_text(json_job().replace('"max_new_tokens": 4',
         '"temperature": 1e999')), (422, "invalid_fields")),
    case("JSON NaN", json_text(json_job().replace('"max_new_tokens": 4', '"temperature": NaN')),
         (400, "invalid_json"), detail="NaN"),
    case("JSON duplicate keys", json_text(json_job().replace("{", '{"prompt": "a", ', 1)),
         (400, "invalid_json"), detail="duplicate key 'prompt'"),
    case("JSON array at the top", json_text("[1, 2]"), (400, "invalid_json")),
    case("JSON with a BOM", raw("application/json", b"\xef\xbb\xbf" + json_job().encode()),
         (400, "invalid_json")),
    case("JSON empty body", raw("application/json", b""), (400, "invalid_json")),
    case("JSON data URL image", json_text(json_job(image="data:image/png;base64,"
         + base64.b64encode(seed("PNG")).decode())), ACCEPTED),
]  # fmt: skip


@pytest.mark.parametrize("item", CORPUS, ids=[c.name for c in CORPUS])
def test_hostile_input_gets_a_precise_answer(pg_stack: Stack, item: Case) -> None:
    response = item.send(pg_stack)

    assert response.status_code < 500, response.text
    if response.status_code == 202:
        assert ACCEPTED in item.expect, f"accepted, expected {sorted(item.expect, key=str)}"
        assert response.json()["status"] == "queued"
        return
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert (response.status_code, problem["code"]) in item.expect, problem
    assert problem["status"] == response.status_code
    assert problem["detail"] and item.detail in problem["detail"], problem["detail"]
    assert pg_stack.jobs() == [], "nothing is written for a refused request"


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 50


def test_every_accepted_input_runs_on_a_worker_that_survives(pg_stack: Stack) -> None:
    accepted = [
        response.json()["id"]
        for item in CORPUS
        if ACCEPTED in item.expect
        for response in [item.send(pg_stack)]
        if response.status_code == 202
    ]
    assert len(accepted) >= 15

    worker = pg_stack.start_worker()
    jobs = pg_stack.wait_all(accepted, timeout_s=300)

    for job in jobs:
        assert job["status"] in ("succeeded", "failed"), job
        assert job["status"] == "succeeded" or job["error"]["code"], job
        assert job["status"] == "succeeded" or job["error"]["code"] != "inference_error", job
        assert job["attempts"] == 1, f"claimed again: a worker died under {job['id']}"
    assert worker.poll() is None, "the worker is still running"
