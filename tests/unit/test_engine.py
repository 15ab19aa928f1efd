"""The continuous-batching engine on the medium random checkpoint, on CPU, in fp32.

The promise under test: in greedy decoding a request's tokens are exactly those of the
same request run alone through ``generate``, whatever joins or leaves the batch around it
and whenever it joins itself. The requests differ in image size, prompt length,
``max_new_tokens``, JSON schema and thinking switch, so every join needs real left
padding, every row its own M-RoPE position and its own grammar.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch
from PIL import Image

from shared.images import MAX_ASPECT_RATIO
from tests.unit.test_structured import TAGS
from worker.model import hf_engine
from worker.model.base import GenerationOptions, GenerationRequest, GenerationResult
from worker.model.engine import EngineLimits, StepEvents, StepFailed
from worker.model.hf import TransformersBackend
from worker.model.hf_engine import BudgetExceeded, TransformersEngine

BOX = {
    "type": "object",
    "properties": {
        "x": {"type": "number", "minimum": 0, "maximum": 1000},
        "label": {"type": "string", "maxLength": 6},
    },
    "required": ["x", "label"],
}
# (image size, colour, prompt, max_new_tokens, schema, thinking)
CASES: list[tuple[tuple[int, int], tuple[int, int, int], str, int, Any, bool]] = [
    ((64, 64), (200, 30, 30), "Describe this image.", 5, None, False),
    ((30, 90), (20, 40, 220), "What is in this picture? Answer in detail, please.", 21, None, True),
    ((200, 120), (10, 180, 60), "Hi", 48, TAGS, False),
    ((17, 17), (250, 250, 250), "Read the sign.", 2, None, False),
    ((300, 40), (0, 0, 0), "Is there a car? Say which colour it is.", 50, BOX, True),
    ((90, 60), (120, 120, 0), "Count the animals.", 13, None, False),
]


def _request(index: int) -> GenerationRequest:
    size, colour, prompt, tokens, schema, thinking = CASES[index]
    return GenerationRequest(
        image=Image.new("RGB", size, colour),
        prompt=prompt,
        options=GenerationOptions(max_new_tokens=tokens),
        json_schema=schema,
        thinking=thinking,
    )


@pytest.fixture(scope="module")
def backend(medium_checkpoint: Path) -> Iterator[TransformersBackend]:
    loaded = TransformersBackend(medium_checkpoint, dtype="float32")
    loaded.load("cpu")
    yield loaded


@pytest.fixture(scope="module")
def alone(backend: TransformersBackend) -> list[GenerationResult]:
    """Each case run alone through the static ``generate``: the reference."""
    return [backend.generate([_request(i)])[0] for i in range(len(CASES))]


def _run(
    engine: TransformersEngine, joins: dict[int, list[int]]
) -> tuple[dict[int, GenerationResult], list[StepEvents]]:
    """Add case ``i`` before step ``s`` for each ``s: [i, ...]`` of ``joins``; step until
    every added case finished. Returns results by case and every step's events."""
    ids = {index: uuid.uuid4() for indices in joins.values() for index in indices}
    cases = {job_id: index for index, job_id in ids.items()}
    results: dict[int, GenerationResult] = {}
    steps: list[StepEvents] = []
    while len(results) < len(ids):
        for index in joins.get(len(steps), []):
            engine.add(ids[index], _request(index))
        events = engine.step()
        assert not events.failed, events.failed
        steps.append(events)
        results.update({cases[job_id]: result for job_id, result in events.finished.items()})
        assert len(steps) < 200, "the engine stopped making progress"
    return results, steps


SCHEDULES = {
    "all at once": {0: [0, 1, 2, 3, 4, 5]},
    "staggered joins": {0: [0, 1], 2: [2], 5: [3, 4], 9: [5]},
    "one per step, longest first": {0: [4], 1: [2], 2: [1], 3: [5], 4: [0], 5: [3]},
    # Case 0 (5 tokens) and 3 (2 tokens) leave before the others join: a join after a
    # leave, into a cache whose leading padding was trimmed.
    "joins after leaves": {0: [0, 3, 4], 6: [1, 2], 7: [5]},
}


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_row_equals_the_request_run_alone(
    backend: TransformersBackend, alone: list[GenerationResult], schedule: str
) -> None:
    engine = backend.start_engine(EngineLimits(max_rows=8, max_tokens=1 << 20))
    results, steps = _run(engine, SCHEDULES[schedule])

    for index, result in results.items():
        assert result == alone[index], f"case {index} differs from its run alone"
        schema = CASES[index][4]
        if schema is not None:
            jsonschema.validate(result.json, schema)
    assert max(len(events.tokens) for events in steps) >= 3, "rows really ran side by side"
    assert engine.running == [] and engine.free_rows == 8


def test_the_cases_really_differ(alone: list[GenerationResult]) -> None:
    """Equal texts would make the equality above prove little: on this checkpoint every
    case writes its own text."""
    texts = [result.text for result in alone if result.tokens > 3]
    assert len(set(texts)) == len(texts)


def test_an_aborted_row_frees_its_slot_at_once_and_leaves_the_others_intact(
    backend: TransformersBackend, alone: list[GenerationResult]
) -> None:
    engine = backend.start_engine(EngineLimits(max_rows=3, max_tokens=1 << 20))
    long_id = uuid.uuid4()
    engine.add(
        long_id, GenerationRequest(Image.new("RGB", (64, 64)), "go on", GenerationOptions(500))
    )
    others = {uuid.uuid4(): 1, uuid.uuid4(): 5}
    for job_id, index in others.items():
        engine.add(job_id, _request(index))
    assert engine.free_rows == 0
    for _ in range(3):
        assert long_id in engine.step().tokens

    engine.abort(long_id)

    assert long_id not in engine.running and engine.free_rows == 1
    results: dict[uuid.UUID, GenerationResult] = {}
    while engine.running:
        events = engine.step()
        assert long_id not in events.tokens
        results.update(events.finished)
    assert {others[job_id]: result for job_id, result in results.items()} == {
        1: alone[1],
        5: alone[5],
    }


def test_the_token_budget_holds_rows_back_until_others_leave(
    backend: TransformersBackend, alone: list[GenerationResult]
) -> None:
    # Each row counts at its full length: prompt plus max_new_tokens.
    encoded = backend.encode([_request(i) for i in (0, 3, 5)])
    lengths = [
        item["input_ids"].shape[1] + CASES[i][3] for item, i in zip(encoded, (0, 3, 5), strict=True)
    ]
    budget = 2 * max(lengths[:2])  # room for cases 0 and 3 together, not for a third
    assert 3 * max(lengths) > budget
    engine = backend.start_engine(EngineLimits(max_rows=8, max_tokens=budget))
    results, steps = _run(engine, {0: [0, 3, 5]})

    assert steps[0].prefilled == 2, "the third row waited"
    assert sum(events.prefilled for events in steps) == 3
    assert max(len(events.tokens) for events in steps) == 2
    assert results == {0: alone[0], 3: alone[3], 5: alone[5]}


def test_a_request_bigger_than_the_whole_budget_fails_alone(backend: TransformersBackend) -> None:
    engine = backend.start_engine(EngineLimits(max_rows=8, max_tokens=64))
    huge, small = uuid.uuid4(), uuid.uuid4()
    engine.add(huge, _request(4))
    engine.add(small, GenerationRequest(Image.new("RGB", (16, 16)), "x", GenerationOptions(2)))

    events = engine.step()

    assert isinstance(events.failed[huge], BudgetExceeded)
    assert "more than the worker's budget of 64" in str(events.failed[huge])
    assert small in events.tokens


def test_requests_encoded_together_get_exactly_their_inputs_alone(
    backend: TransformersBackend,
) -> None:
    """The engine encodes the requests added between two steps in one processor call:
    cut apart, each must be what encoding it alone gives (no padding, its own patches)."""
    together = backend.encode([_request(i) for i in range(len(CASES))])

    for index, inputs in enumerate(together):
        (single,) = backend.encode([_request(index)])
        assert inputs.keys() == single.keys()
        for key, value in single.items():
            assert torch.equal(inputs[key], value), f"case {index}: {key} differs"
    assert len({item["input_ids"].shape[1] for item in together}) > 1, "lengths really differ"


def test_a_request_the_processor_refuses_fails_alone_and_the_others_run(
    backend: TransformersBackend, alone: list[GenerationResult]
) -> None:
    # GLM-4V's image processor refuses an aspect ratio over 200 (the API never lets one
    # through: tests/unit/test_images.py); here it arrives with two good requests.
    engine = backend.start_engine(EngineLimits(max_rows=8, max_tokens=1 << 20))
    strip, first, second = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    engine.add(first, _request(0))
    engine.add(strip, GenerationRequest(Image.new("RGB", (1000, 2)), "x", GenerationOptions(4)))
    engine.add(second, _request(5))

    events = engine.step()

    assert set(events.failed) == {strip}
    assert "aspect ratio" in str(events.failed[strip])
    assert strip not in engine.running and engine.free_rows == 6
    results = dict(events.finished)
    while engine.running:
        results.update(engine.step().finished)
    assert results == {first: alone[0], second: alone[5]}


def test_the_processor_takes_every_strip_the_api_accepts(backend: TransformersBackend) -> None:
    """The API refuses images over ``MAX_ASPECT_RATIO`` to one (``image_aspect_ratio``)
    because the processor refuses them; everything up to it must encode, in either
    orientation, whatever the processor does to short sides (it scales a side under 28
    pixels up); one pixel more is refused."""
    strips = [(MAX_ASPECT_RATIO * side, side) for side in range(1, 30)]
    strips += [(long, short) for short, long in strips]
    requests = [
        GenerationRequest(Image.new("RGB", size), "x", GenerationOptions(1)) for size in strips
    ]

    assert len(backend.encode(requests)) == len(strips)
    beyond = GenerationRequest(
        Image.new("RGB", (MAX_ASPECT_RATIO * 3 + 1, 3)), "x", GenerationOptions(1)
    )
    with pytest.raises(ValueError, match="aspect ratio"):
        backend.encode([beyond])


def test_rows_sample_at_their_own_temperature_beside_greedy_rows(
    backend: TransformersBackend, alone: list[GenerationResult]
) -> None:
    engine = backend.start_engine(EngineLimits(max_rows=8, max_tokens=1 << 20))
    greedy, hot = uuid.uuid4(), uuid.uuid4()
    engine.add(greedy, _request(5))
    sampled = GenerationRequest(
        Image.new("RGB", (64, 64)),
        "Describe.",
        GenerationOptions(max_new_tokens=30, temperature=1.5),
    )
    engine.add(hot, sampled)
    results: dict[uuid.UUID, GenerationResult] = {}
    while engine.running:
        results.update(engine.step().finished)

    assert results[greedy] == alone[5]
    assert 1 <= results[hot].tokens <= 30


def test_add_refuses_duplicates_and_a_full_engine(backend: TransformersBackend) -> None:
    engine = backend.start_engine(EngineLimits(max_rows=1, max_tokens=1 << 20))
    job_id = uuid.uuid4()
    engine.add(job_id, _request(0))
    with pytest.raises(ValueError, match="already in the engine"):
        engine.add(job_id, _request(0))
    with pytest.raises(ValueError, match="no free row"):
        engine.add(uuid.uuid4(), _request(0))


def test_rows_added_ahead_are_prefilled_with_the_joiners_and_take_rows_as_they_free(
    backend: TransformersBackend, alone: list[GenerationResult]
) -> None:
    engine = backend.start_engine(EngineLimits(max_rows=3, max_tokens=1 << 20, ahead_rows=3))
    ids = [uuid.uuid4() for _ in CASES]
    for index in (3, 0, 5):  # 2, 5 and 13 tokens: rows free at steps 1, 4 and 12
        engine.add(ids[index], _request(index))
    for index in (1, 2, 4):
        engine.add(ids[index], _request(index), ahead=True)
    assert engine.free_rows == 0 and engine.free_ahead == 0
    assert set(engine.ahead) == {ids[1], ids[2], ids[4]}

    first = engine.step()

    assert first.prefilled == 6, "one pass for the joiners and the rows added ahead"
    assert set(engine.ahead) == {ids[1], ids[2], ids[4]}, "no row was free for them"
    results: dict[uuid.UUID, GenerationResult] = {}
    seated_without_a_pass = False
    while engine.running:
        waiting = len(engine.ahead)
        events = engine.step()
        assert events.prefilled == 0
        assert len(events.tokens) <= 3, "rows added ahead decode only once seated"
        seated_without_a_pass |= len(engine.ahead) < waiting
        results.update(events.finished)
    assert seated_without_a_pass
    by_case = {ids.index(job_id): result for job_id, result in results.items()}
    assert by_case == {i: alone[i] for i in range(len(CASES)) if i in by_case}
    assert len(by_case) == len(CASES)
    assert engine.free_rows == 3 and engine.free_ahead == 3


def test_rows_added_ahead_leave_the_headroom_to_others_and_abort_while_they_wait(
    backend: TransformersBackend, alone: list[GenerationResult]
) -> None:
    limits = EngineLimits(max_rows=3, max_tokens=1 << 20, ahead_rows=2, ahead_seats=1)
    engine = backend.start_engine(limits)
    first, later, gone = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    engine.add(first, _request(0))  # 5 tokens
    engine.add(later, _request(5), ahead=True)
    engine.add(gone, _request(1), ahead=True)
    engine.step()
    assert engine.free_rows == 2, "rows past ahead_seats stay free for the others"
    assert set(engine.ahead) == {later, gone}

    engine.abort(gone)

    assert engine.ahead == [later] and engine.free_ahead == 1 and gone not in engine.running
    results: dict[uuid.UUID, GenerationResult] = {}
    while engine.running:
        events = engine.step()
        assert gone not in events.tokens
        results.update(events.finished)
    assert results == {first: alone[0], later: alone[5]}


def test_add_ahead_refuses_a_full_pool(backend: TransformersBackend) -> None:
    engine = backend.start_engine(EngineLimits(max_rows=1, max_tokens=1 << 20, ahead_rows=1))
    engine.add(uuid.uuid4(), _request(0), ahead=True)
    with pytest.raises(ValueError, match="no free row ahead"):
        engine.add(uuid.uuid4(), _request(0), ahead=True)
    engine.add(uuid.uuid4(), _request(0))  # the batch's own row is still free


def test_a_merge_that_fails_half_way_fails_the_step_and_leaves_nothing_behind(
    backend: TransformersBackend, alone: list[GenerationResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Out of memory while joiners' caches are merged into the batch (on a card, where
    # a merge's copies peak): the batch's first layer has its keys merged, not its values.
    engine = backend.start_engine(EngineLimits(max_rows=4, max_tokens=1 << 20))
    ids = {index: uuid.uuid4() for index in (1, 5, 0, 2)}
    for index in (1, 5):
        engine.add(ids[index], _request(index))
    engine.step()
    engine.step()
    for index in (0, 2):
        engine.add(ids[index], _request(index))
    calls = 0
    real_left_pad = hf_engine.left_pad

    def out_of_memory_at_the_third_copy(tensor: Any, length: int, dim: int, value: int = 0) -> Any:
        nonlocal calls
        if dim == 2:  # a cache's copy (a prefill's inputs are padded too, on dim 1)
            calls += 1
            if calls == 3:
                raise RuntimeError("CUDA out of memory (injected)")
        return real_left_pad(tensor, length, dim, value)

    monkeypatch.setattr(hf_engine, "left_pad", out_of_memory_at_the_third_copy)

    with pytest.raises(StepFailed) as failed:
        engine.step()

    assert set(failed.value.dropped) == set(ids.values()), "every request it held"
    assert engine.running == [] and engine.free_rows == 4
    # Run again (as the worker's isolation does), each is what it is alone: no token
    # was recorded twice, no row merged twice.
    results, _ = _run(engine, {0: list(ids)})
    assert results == {index: alone[index] for index in ids}


def test_rows_staged_below_the_seats_keep_their_rows_from_joiners(
    backend: TransformersBackend, alone: list[GenerationResult]
) -> None:
    # Running rows aborted between steps leave staged rows below ahead_seats: those
    # rows are theirs at the next step, not free for a joiner (which, long enough to
    # miss the token budget beside them, once left them waiting for good).
    engine = backend.start_engine(EngineLimits(max_rows=2, max_tokens=1 << 20, ahead_rows=3))
    running, staged = [uuid.uuid4(), uuid.uuid4()], [uuid.uuid4(), uuid.uuid4(), uuid.uuid4()]
    for job_id in running:
        engine.add(job_id, _request(1))
    for job_id, index in zip(staged, (0, 5, 3), strict=True):
        engine.add(job_id, _request(index), ahead=True)
    engine.step()
    assert engine.ahead == staged
    held = engine._staged.cache.layers[0].keys.untyped_storage().nbytes()  # type: ignore[union-attr]

    engine.abort(running[0])

    assert engine.free_rows == 0, "the freed row is the oldest staged row's"
    engine.abort(running[1])
    assert engine.free_rows == 0
    engine.step()
    assert engine.ahead == staged[2:], "seated, oldest first"
    assert engine.free_rows == 0
    events = engine.step()
    assert events.prefilled == 0 and set(events.tokens) == set(staged[:2])
    # The staged row left behind holds its own cache only, not the seated rows' too.
    keys = engine._staged.cache.layers[0].keys  # type: ignore[union-attr]
    assert keys.untyped_storage().nbytes() <= held // len(staged)
    results: dict[uuid.UUID, GenerationResult] = {}
    while engine.running:
        results.update(engine.step().finished)
    assert results == dict(zip(staged, (alone[0], alone[5], alone[3]), strict=True))
