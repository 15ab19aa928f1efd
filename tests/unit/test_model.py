"""The transformers backend and the offline tiny checkpoint, on CPU."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from worker.model.base import GenerationOptions, GenerationRequest
from worker.model.hf import NUL_STANDIN, ModelLoadError, TransformersBackend, count_generated
from worker.model.tiny import build_tiny_checkpoint

GREEDY = GenerationOptions(max_new_tokens=12, temperature=0.0)

# Different prompt lengths and image sizes (1 to 4 image tokens after resizing, odd aspect
# ratios, one smaller than a patch) so a batch needs real left padding.
CASES = [
    ((64, 64), (200, 30, 30), "Describe this image."),
    ((30, 90), (20, 40, 220), "What is in this picture? Answer in detail, please, and count."),
    ((200, 120), (10, 180, 60), "Hi"),
    ((17, 17), (250, 250, 250), "Read the text on the sign and tell me what it says."),
    ((300, 40), (0, 0, 0), "Is there a car?"),
]


def _requests(options: GenerationOptions = GREEDY) -> list[GenerationRequest]:
    return [
        GenerationRequest(image=Image.new("RGB", size, colour), prompt=prompt, options=options)
        for size, colour, prompt in CASES
    ]


def _digest(path: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.iterdir())}


@pytest.fixture(scope="module")
def backend(tiny_checkpoint: Path) -> Iterator[TransformersBackend]:
    loaded = TransformersBackend(tiny_checkpoint)
    loaded.load("cpu")
    yield loaded


def test_same_seed_builds_byte_identical_checkpoint(tiny_checkpoint: Path, tmp_path: Path) -> None:
    build_tiny_checkpoint(tmp_path / "again", seed=0)
    build_tiny_checkpoint(tmp_path / "other", seed=1)

    assert _digest(tmp_path / "again") == _digest(tiny_checkpoint)
    assert (
        _digest(tmp_path / "other")["model.safetensors"]
        != _digest(tiny_checkpoint)["model.safetensors"]
    )


def test_tiny_checkpoint_is_a_glm4v_checkpoint(tiny_checkpoint: Path) -> None:
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    template = (tiny_checkpoint / "chat_template.jinja").read_text()

    assert config["architectures"] == ["Glm4vForConditionalGeneration"]
    assert template.startswith("[gMASK]<sop>")
    assert "<|begin_of_image|><|image|><|end_of_image|>" in template


def test_chat_template_has_the_glm_v_thinking_switch(tiny_checkpoint: Path) -> None:
    from transformers import AutoProcessor

    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    processor: Any = AutoProcessor.from_pretrained(tiny_checkpoint)

    def render(**switch: bool) -> str:
        text: str = processor.apply_chat_template(chat, add_generation_prompt=True, **switch)
        return text

    assert render(enable_thinking=False).endswith("Hi/nothink<|assistant|>\n<think></think>\n")
    assert render(enable_thinking=True) == render()
    assert render().endswith("Hi<|assistant|>\n")


def test_generate_returns_one_result_per_request(backend: TransformersBackend) -> None:
    results = backend.generate(_requests()[:3])

    assert len(results) == 3
    for result in results:
        assert 0 <= result.tokens <= GREEDY.max_new_tokens
        assert isinstance(result.text, str)
    assert any(result.text for result in results)


def test_batched_greedy_output_equals_single_output(backend: TransformersBackend) -> None:
    requests = _requests()
    alone = [backend.generate([request])[0] for request in requests]

    assert backend.generate(requests) == alone
    assert backend.generate(requests[::-1]) == alone[::-1]


def test_sampling_generates_within_the_token_cap(backend: TransformersBackend) -> None:
    options = GenerationOptions(max_new_tokens=5, temperature=1.0)

    results = backend.generate(_requests(options)[:2])

    assert all(0 <= result.tokens <= 5 for result in results)


def test_mixed_options_raise_value_error(backend: TransformersBackend) -> None:
    requests = _requests()[:2]
    other = GenerationRequest(requests[1].image, requests[1].prompt, GenerationOptions(8, 0.0))

    with pytest.raises(ValueError, match="same GenerationOptions"):
        backend.generate([requests[0], other])


def test_empty_batch_raises_value_error(backend: TransformersBackend) -> None:
    with pytest.raises(ValueError, match="empty batch"):
        backend.generate([])


def test_revision_is_stable_and_device_is_reported(
    backend: TransformersBackend, tiny_checkpoint: Path
) -> None:
    again = TransformersBackend(tiny_checkpoint)
    again.load("cpu")

    assert backend.device == "cpu"
    assert len(backend.model_revision) == 16
    assert again.model_revision == backend.model_revision


def test_a_nul_the_model_writes_never_reaches_the_text(backend: TransformersBackend) -> None:
    # PostgreSQL's text refuses NUL: a sampled byte token made a whole run's commit fail.
    tokenizer = backend._processor.tokenizer
    nul = tokenizer.encode("a\x00b", add_special_tokens=False)
    assert tokenizer.decode(nul) == "a\x00b", "the tokenizer can write a NUL"
    assert backend.decode(nul) == f"a{NUL_STANDIN}b"
    assert backend.result(nul, structured=False).text == f"a{NUL_STANDIN}b"


def test_count_generated_stops_at_first_stop_token() -> None:
    stop = frozenset({2, 7})

    assert count_generated([5, 6, 7, 2, 2], stop) == 3
    assert count_generated([2, 2, 2], stop) == 1
    assert count_generated([5, 6], stop) == 2


def test_missing_path_raises_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        TransformersBackend(tmp_path / "missing").load("cpu")


def test_directory_without_config_raises_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        TransformersBackend(tmp_path).load("cpu")


def test_unsupported_checkpoint_raises_model_load_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-model"}))

    with pytest.raises(ModelLoadError, match="cannot load"):
        TransformersBackend(tmp_path).load("cpu")


def test_unknown_dtype_is_refused_before_loading(tiny_checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="unsupported dtype"):
        TransformersBackend(tiny_checkpoint, dtype="int8")


def test_methods_before_load_raise_runtime_error(tiny_checkpoint: Path) -> None:
    idle = TransformersBackend(tiny_checkpoint)

    with pytest.raises(RuntimeError, match="load"):
        idle.generate(_requests()[:1])
    with pytest.raises(RuntimeError, match="load"):
        _ = idle.model_revision
