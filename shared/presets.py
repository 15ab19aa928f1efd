"""Policy presets: a named prompt + schema + thresholds, loaded from configuration.

Presets live in a JSON file (``SIGHTLINE_PRESETS_PATH``; default: the bundled
``shared/presets/default.json`` with ``moderation-v1``), not in code. A job submitted with
``preset`` takes the preset's prompt (unless it brings its own), schema, token budget and
thinking switch, and keeps a copy of the preset's policy, so editing the file later never
changes how an accepted job is judged.

The policy maps the model's structured answer to an ``action``, per label: a label in
``allow_labels`` is ``allow``; any other label takes its rule in ``labels``, or the
``default`` rule when it has none there (or is missing or not a string). A rule's score at
or above ``block_at`` is ``block``, at or above ``flag_at`` is ``flag``, and below both
``allow``; a threshold left out never applies (no ``block_at``: that label is at most
flagged). An answer without a numeric score gets no action. The older shape, one
``flag_at``/``block_at`` pair beside ``allow_labels``, still loads and means what it
did: that pair is the ``default`` rule and no label has its own.

``version`` names the policy; every job it judges records it (``policy_version``). A
policy without one gets ``sha256:`` and the first 12 hex digits of a hash of its rules,
so changing the rules changes the version.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.json_schema import SchemaError, min_new_tokens, validate_schema

Action = Literal["allow", "flag", "block"]


class Rule(BaseModel):
    """One label's thresholds (see the module docstring); ``None`` never applies."""

    model_config = ConfigDict(extra="forbid")

    flag_at: float | None = Field(default=None, ge=0)
    block_at: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> Rule:
        if self.flag_at is not None and self.block_at is not None and self.flag_at > self.block_at:
            raise ValueError("flag_at must not exceed block_at")
        return self

    def action(self, score: float) -> Action:
        """The action for ``score`` under this rule."""
        if self.block_at is not None and score >= self.block_at:
            return "block"
        if self.flag_at is not None and score >= self.flag_at:
            return "flag"
        return "allow"


class Policy(BaseModel):
    """Per-label rules turning ``{label, score}`` into an action (see the module
    docstring)."""

    model_config = ConfigDict(extra="forbid")

    version: str = Field(default="", max_length=64)
    label_field: str
    score_field: str
    allow_labels: list[str] = Field(default_factory=list)
    labels: dict[str, Rule] = Field(default_factory=dict)
    default: Rule

    @model_validator(mode="before")
    @classmethod
    def _single_pair(cls, data: Any) -> Any:
        """The older shape: its ``flag_at``/``block_at`` pair becomes the default rule."""
        if not isinstance(data, dict) or not {"flag_at", "block_at"} & set(data):
            return data
        if "default" in data:
            raise ValueError("give either flag_at/block_at or a default rule, not both")
        pair = {name: data[name] for name in ("flag_at", "block_at") if name in data}
        rest = {name: value for name, value in data.items() if name not in pair}
        return rest | {"default": pair}

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        both = sorted(set(self.allow_labels) & set(self.labels))
        if both:
            raise ValueError(f"labels both allowed and given rules: {both}")
        if not self.version:
            rules = json.dumps(self.model_dump(exclude={"version"}), sort_keys=True)
            self.version = f"sha256:{hashlib.sha256(rules.encode()).hexdigest()[:12]}"
        return self

    def decide(self, answer: Any) -> Action | None:
        """The action for a parsed answer; ``None`` if it is not an object, or if its
        label is not allow-listed and its score is missing or not a number."""
        if not isinstance(answer, dict):
            return None
        label, score = answer.get(self.label_field), answer.get(self.score_field)
        if label in self.allow_labels:
            return "allow"
        if not isinstance(score, int | float) or isinstance(score, bool):
            return None
        rule = self.labels.get(label, self.default) if isinstance(label, str) else self.default
        return rule.action(score)


class Preset(BaseModel):
    """One named preset; its schema is checked against the enforceable subset at load."""

    model_config = ConfigDict(extra="forbid")

    description: str = ""
    prompt: str = Field(min_length=1)
    schema_: dict[str, Any] = Field(alias="schema")
    max_new_tokens: int = Field(ge=1)
    thinking: bool = False
    policy: Policy | None = None

    @field_validator("schema_")
    @classmethod
    def _enforceable(cls, schema: dict[str, Any]) -> dict[str, Any]:
        try:
            validate_schema(schema)
        except SchemaError as exc:
            raise ValueError(f"schema: {exc}") from exc
        return schema

    @model_validator(mode="after")
    def _budget(self) -> Preset:
        needed = min_new_tokens(self.schema_, self.thinking)
        if self.max_new_tokens < needed:
            raise ValueError(f"max_new_tokens {self.max_new_tokens} is below the {needed} needed")
        return self


class PresetError(ValueError):
    """The presets file cannot be read or a preset in it is invalid.

    It stands apart from :class:`shared.errors.SightlineError`: it is a configuration
    error raised while the API process starts (:meth:`api.context.Services.build`), so
    it never reaches a client and has no HTTP status or problem code to carry; the
    process stops with its message.
    """


def load_presets(path: str = "") -> dict[str, Preset]:
    """Read presets from ``path`` (the bundled defaults when empty); raises
    :class:`PresetError` naming the file and the problem."""
    source = path or "shared/presets/default.json (bundled)"
    try:
        if path:
            text = Path(path).read_text(encoding="utf-8")
        else:
            text = resources.files("shared").joinpath("presets/default.json").read_text("utf-8")
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise PresetError(f"{source}: expected an object of named presets")
        return {name: Preset.model_validate(value) for name, value in raw.items()}
    except (OSError, json.JSONDecodeError, ValidationError) as exc:
        raise PresetError(f"{source}: {exc}") from exc
