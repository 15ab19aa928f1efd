"""Per-label policies: every threshold edge, the allow list, the default rule, answers
without a score, the older single-pair shape and the version each decision records.

Expected actions are written out in the tables, never computed by the policy under test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared.presets import Policy, PresetError, load_presets

POLICY = Policy.model_validate(
    {
        "version": "test-2026-11-30",
        "label_field": "label",
        "score_field": "score",
        "allow_labels": ["safe"],
        "labels": {
            "nudity": {"flag_at": 0.5, "block_at": 0.8},
            "violence": {"flag_at": 0.3, "block_at": 0.6},
            "spam": {"flag_at": 0.7},
        },
        "default": {"flag_at": 0.4, "block_at": 0.9},
    }
)

# The older shape, exactly as the bundled moderation-v1 policy was written before
# per-label rules: one pair for every label.
SINGLE_PAIR: dict[str, Any] = {
    "label_field": "label",
    "score_field": "confidence",
    "allow_labels": ["safe"],
    "flag_at": 0.5,
    "block_at": 0.8,
}


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        # nudity: flag at 0.5, block at 0.8
        ({"label": "nudity", "score": 0.49}, "allow"),
        ({"label": "nudity", "score": 0.5}, "flag"),
        ({"label": "nudity", "score": 0.51}, "flag"),
        ({"label": "nudity", "score": 0.79}, "flag"),
        ({"label": "nudity", "score": 0.8}, "block"),
        ({"label": "nudity", "score": 0.81}, "block"),
        ({"label": "nudity", "score": 1}, "block"),
        # violence: flag at 0.3, block at 0.6
        ({"label": "violence", "score": 0.29}, "allow"),
        ({"label": "violence", "score": 0.3}, "flag"),
        ({"label": "violence", "score": 0.31}, "flag"),
        ({"label": "violence", "score": 0.59}, "flag"),
        ({"label": "violence", "score": 0.6}, "block"),
        ({"label": "violence", "score": 0.61}, "block"),
        # spam: flag at 0.7, never blocked
        ({"label": "spam", "score": 0.69}, "allow"),
        ({"label": "spam", "score": 0.7}, "flag"),
        ({"label": "spam", "score": 0.71}, "flag"),
        ({"label": "spam", "score": 1.0}, "flag"),
        # a label with no rule of its own takes the default: flag at 0.4, block at 0.9
        ({"label": "hate", "score": 0.39}, "allow"),
        ({"label": "hate", "score": 0.4}, "flag"),
        ({"label": "hate", "score": 0.41}, "flag"),
        ({"label": "hate", "score": 0.89}, "flag"),
        ({"label": "hate", "score": 0.9}, "block"),
        ({"label": "hate", "score": 0.91}, "block"),
        # so does an answer without a label, or with a label that is not a string
        ({"score": 0.5}, "flag"),
        ({"label": ["nudity"], "score": 0.95}, "block"),
        ({"label": 3, "score": 0.1}, "allow"),
        # an allow-listed label is allowed whatever its score, even without one
        ({"label": "safe", "score": 0.0}, "allow"),
        ({"label": "safe", "score": 1.0}, "allow"),
        ({"label": "safe"}, "allow"),
        # no numeric score: no action
        ({"label": "nudity"}, None),
        ({"label": "hate"}, None),
        ({"label": "nudity", "score": "0.9"}, None),
        ({"label": "nudity", "score": True}, None),
        ({"label": "nudity", "score": None}, None),
        # not an object at all
        ("nudity", None),
        (None, None),
        ([{"label": "nudity", "score": 0.9}], None),
    ],
)
def test_per_label_edges(answer: Any, expected: str | None) -> None:
    assert POLICY.decide(answer) == expected


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"label": "violence", "confidence": 0.49}, "allow"),
        ({"label": "violence", "confidence": 0.5}, "flag"),
        ({"label": "violence", "confidence": 0.51}, "flag"),
        ({"label": "sexual", "confidence": 0.79}, "flag"),
        ({"label": "sexual", "confidence": 0.8}, "block"),
        ({"label": "spam", "confidence": 0.81}, "block"),
        ({"label": "safe", "confidence": 0.99}, "allow"),
        ({"label": "violence"}, None),
    ],
)
def test_the_single_pair_shape_still_means_one_rule_for_every_label(
    answer: dict[str, Any], expected: str
) -> None:
    assert Policy.model_validate(SINGLE_PAIR).decide(answer) == expected


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"label": "sexual", "confidence": 0.29}, "allow"),
        ({"label": "sexual", "confidence": 0.3}, "flag"),
        ({"label": "sexual", "confidence": 0.7}, "block"),
        ({"label": "self_harm", "confidence": 0.69}, "flag"),
        ({"label": "self_harm", "confidence": 0.7}, "block"),
        ({"label": "spam", "confidence": 0.59}, "allow"),
        ({"label": "spam", "confidence": 0.6}, "flag"),
        ({"label": "spam", "confidence": 1.0}, "flag"),
        ({"label": "violence", "confidence": 0.49}, "allow"),
        ({"label": "violence", "confidence": 0.5}, "flag"),
        ({"label": "violence", "confidence": 0.8}, "block"),
        ({"label": "safe", "confidence": 1.0}, "allow"),
    ],
)
def test_the_bundled_moderation_policy(answer: dict[str, Any], expected: str) -> None:
    policy = load_presets()["moderation-v2"].policy
    assert policy is not None and policy.version == "moderation-v2/2026-11-30"
    assert policy.decide(answer) == expected


def test_the_bundled_moderation_v1_keeps_its_single_pair() -> None:
    """Jobs judged by moderation-v1 before per-label rules existed and after are judged
    alike, and named alike (by the rules' hash: it has no ``version``)."""
    assert load_presets()["moderation-v1"].policy == Policy.model_validate(SINGLE_PAIR)


def test_a_policy_without_a_version_is_named_by_its_rules() -> None:
    unnamed = Policy.model_validate(SINGLE_PAIR)
    same_rules = Policy.model_validate(
        {
            "label_field": "label",
            "score_field": "confidence",
            "allow_labels": ["safe"],
            "labels": {},
            "default": {"flag_at": 0.5, "block_at": 0.8},
        }
    )
    stricter = Policy.model_validate({**SINGLE_PAIR, "flag_at": 0.4})

    assert unnamed.version.startswith("sha256:") and len(unnamed.version) == len("sha256:") + 12
    assert same_rules.version == unnamed.version
    assert stricter.version != unnamed.version
    assert Policy.model_validate({**SINGLE_PAIR, "version": "v7"}).version == "v7"


def test_a_jobs_copy_of_the_policy_decides_and_names_itself_the_same() -> None:
    """The API stores ``model_dump()`` in the job; the worker validates that copy again."""
    for policy in (POLICY, Policy.model_validate(SINGLE_PAIR)):
        copy = Policy.model_validate(json.loads(json.dumps(policy.model_dump())))
        assert copy == policy


@pytest.mark.parametrize(
    ("policy", "problem"),
    [
        ({"labels": {"nudity": {"flag_at": 0.9, "block_at": 0.8}}}, "flag_at must not exceed"),
        ({"default": {"flag_at": 0.9, "block_at": 0.8}}, "flag_at must not exceed"),
        ({"labels": {"safe": {"flag_at": 0.5}}}, "both allowed and given rules"),
        ({"flag_at": 0.5, "block_at": 0.8}, "not both"),
        ({"labels": {"nudity": {"flag_at": -0.1}}}, "greater than or equal to 0"),
        ({"labels": {"nudity": {"warn_at": 0.5}}}, "warn_at"),
        ({"default": None}, "default"),
        ({"version": "v" * 65}, "version"),
    ],
)
def test_invalid_policies_stop_the_presets_file(
    tmp_path: Path, policy: dict[str, Any], problem: str
) -> None:
    preset = {
        "prompt": "Classify.",
        "max_new_tokens": 64,
        "schema": {"type": "object", "properties": {"label": {"enum": ["safe", "nudity"]}}},
        "policy": {
            "label_field": "label",
            "score_field": "score",
            "allow_labels": ["safe"],
            "default": {"flag_at": 0.5, "block_at": 0.8},
            **policy,
        },
    }
    path = tmp_path / "presets.json"
    path.write_text(json.dumps({"broken": preset}))

    with pytest.raises(PresetError, match=problem):
        load_presets(str(path))
