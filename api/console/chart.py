"""Geometry of the small bar charts the console draws as inline SVG (no JavaScript)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

WIDTH = 600
HEIGHT = 180
# Room below the bars for the axis labels, above them for the value labels.
_AXIS = 22
_TOP = 16
_GAP = 0.2


@dataclass(frozen=True)
class Bar:
    """One bar in SVG user units (origin top left); ``label`` names it on the x axis when
    ``labelled``, and ``value`` is what its height shows."""

    label: str
    value: int
    x: float
    y: float
    width: float
    height: float
    labelled: bool


@dataclass(frozen=True)
class BarChart:
    """Bars scaled so the tallest fills the plot; ``baseline`` is the y of the x axis."""

    bars: list[Bar]
    width: int
    height: int
    baseline: float
    max_value: int


def bar_chart(points: Sequence[tuple[str, int]], *, label_every: int = 1) -> BarChart:
    """Lay out ``(label, value)`` points as equal-width bars; only every
    ``label_every``-th label (and the last) is shown, so dense axes stay readable.
    All-zero data gives zero-height bars (the template says "nothing yet")."""
    baseline = HEIGHT - _AXIS
    plot = baseline - _TOP
    top = max((value for _, value in points), default=0)
    slot = WIDTH / max(len(points), 1)
    bars = []
    for i, (label, value) in enumerate(points):
        height = plot * value / top if top else 0.0
        bars.append(
            Bar(
                label=label,
                value=value,
                x=round(i * slot + slot * _GAP / 2, 2),
                y=round(baseline - height, 2),
                width=round(slot * (1 - _GAP), 2),
                height=round(height, 2),
                labelled=i % label_every == 0 or i == len(points) - 1,
            )
        )
    return BarChart(bars=bars, width=WIDTH, height=HEIGHT, baseline=baseline, max_value=top)
