"""Charts as inline SVG, drawn on the server: no chart library, no build step.

Every text that reaches the SVG is escaped here, so a label name or a series name from the
store can never become markup. Colours and sizes are attributes (not `style=`), which the
dashboard's Content-Security-Policy allows; the rest of the look is in dashboard.css.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import escape

from markupsafe import Markup

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]

WIDTH, HEIGHT = 560, 260
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 58, 16, 30, 46


@dataclass(frozen=True)
class Series:
    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    color: str


def color_for(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2 or 5 times a power of ten) covering [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return [0.0, 1.0]
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step)
    last = max(math.ceil(high / step), first + 1)
    return [round(i * step, 10) for i in range(first, last + 1)]


def _fmt_number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 10_000:
        return f"{value / 1000:.0f}k"
    if abs(value) >= 100 or float(value).is_integer():
        return f"{value:.0f}"
    return f"{value:.3g}"


_TIME_STEPS = [timedelta(hours=h) for h in (1, 2, 3, 6, 12)] + [
    timedelta(days=d) for d in (1, 2, 7, 14, 30)
]


def time_ticks(since: datetime, until: datetime, count: int = 6) -> list[datetime]:
    """Tick instants on whole hours or days (UTC), at most about `count` of them."""
    span = until - since
    step = next((s for s in _TIME_STEPS if span / s <= count), _TIME_STEPS[-1])
    origin = datetime(2000, 1, 3, tzinfo=UTC)  # a Monday midnight: ticks fall on round times
    first = origin + math.ceil((since - origin) / step) * step
    ticks = []
    moment = first
    while moment <= until:
        ticks.append(moment)
        moment += step
    return ticks


def time_label(moment: datetime, span: timedelta) -> str:
    if span <= timedelta(days=2):
        return moment.strftime("%b %d %H:%M")
    return moment.strftime("%b %d")


class _Frame:
    """The plot area of one chart and the mapping of data onto it."""

    def __init__(self, x_range: tuple[float, float], y_range: tuple[float, float]) -> None:
        self.x0, self.x1 = x_range
        self.y0, self.y1 = y_range
        if self.x1 <= self.x0:
            self.x1 = self.x0 + 1
        if self.y1 <= self.y0:
            self.y1 = self.y0 + 1
        self.left, self.right = MARGIN_LEFT, WIDTH - MARGIN_RIGHT
        self.top, self.bottom = MARGIN_TOP, HEIGHT - MARGIN_BOTTOM

    def x(self, value: float) -> float:
        return self.left + (value - self.x0) / (self.x1 - self.x0) * (self.right - self.left)

    def y(self, value: float) -> float:
        return self.bottom - (value - self.y0) / (self.y1 - self.y0) * (self.bottom - self.top)


def _svg(title: str, body: list[str]) -> Markup:
    head = (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
    )
    return Markup(head + "".join(body) + "</svg>")


def _axes(
    frame: _Frame,
    x_ticks: Sequence[tuple[float, str]],
    y_ticks: Sequence[tuple[float, str]],
    x_label: str,
    y_label: str,
) -> list[str]:
    parts = []
    for value, text in y_ticks:
        y = frame.y(value)
        parts.append(
            f'<line class="grid" x1="{frame.left}" x2="{frame.right}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{frame.left - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(text)}</text>"
        )
    for value, text in x_ticks:
        x = frame.x(value)
        parts.append(
            f'<line class="tick-mark" x1="{x:.1f}" x2="{x:.1f}" y1="{frame.bottom}" '
            f'y2="{frame.bottom + 4}"/><text class="tick" x="{x:.1f}" y="{frame.bottom + 17}" '
            f'text-anchor="middle">{escape(text)}</text>'
        )
    middle_x = (frame.left + frame.right) / 2
    middle_y = (frame.top + frame.bottom) / 2
    parts.append(
        f'<line class="axis" x1="{frame.left}" x2="{frame.right}" y1="{frame.bottom}" '
        f'y2="{frame.bottom}"/><line class="axis" x1="{frame.left}" x2="{frame.left}" '
        f'y1="{frame.top}" y2="{frame.bottom}"/>'
        f'<text class="axis-label" x="{middle_x:.1f}" y="{HEIGHT - 8}" text-anchor="middle">'
        f"{escape(x_label)}</text>"
        f'<text class="axis-label" x="14" y="{middle_y:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {middle_y:.1f})">{escape(y_label)}</text>'
    )
    return parts


def _legend(entries: Sequence[tuple[str, str]]) -> list[str]:
    """Swatches in one row above the plot, right-aligned."""
    parts = []
    x = WIDTH - MARGIN_RIGHT
    for name, color in reversed(entries):
        width = 7 * len(name) + 22
        x -= width
        parts.append(
            f'<rect x="{x}" y="9" width="10" height="10" rx="2" fill="{color}"/>'
            f'<text class="legend" x="{x + 14}" y="18">{escape(name)}</text>'
        )
    return parts


def _empty(frame: _Frame, message: str) -> str:
    return (
        f'<text class="empty" x="{(frame.left + frame.right) / 2:.1f}" '
        f'y="{(frame.top + frame.bottom) / 2:.1f}" text-anchor="middle">{escape(message)}</text>'
    )


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    y_label: str,
    y_range: tuple[float, float] | None = None,
    x_range: tuple[float, float] | None = None,
    x_ticks: Sequence[tuple[float, str]] | None = None,
    empty_message: str = "no data yet",
) -> Markup:
    """Lines with a point marker at each value; one legend entry per series."""
    points = [(x, y) for s in series for x, y in zip(s.xs, s.ys, strict=False) if math.isfinite(y)]
    if y_range is None:
        low = min((y for _, y in points), default=0.0)
        high = max((y for _, y in points), default=1.0)
        ticks = nice_ticks(min(0.0, low), high)
        y_range = (ticks[0], ticks[-1])
    else:
        ticks = nice_ticks(*y_range)
    if x_range is None:
        x_range = (
            min((x for x, _ in points), default=0.0),
            max((x for x, _ in points), default=1.0),
        )
    frame = _Frame(x_range, y_range)
    if x_ticks is None:
        x_ticks = [
            (t, _fmt_number(t)) for t in nice_ticks(*x_range) if x_range[0] <= t <= x_range[1]
        ]
    body = _axes(
        frame,
        x_ticks,
        [(t, _fmt_number(t)) for t in ticks if y_range[0] <= t <= y_range[1]],
        x_label,
        y_label,
    )
    if not points:
        body.append(_empty(frame, empty_message))
    for s in series:
        coords = [
            (frame.x(x), frame.y(y)) for x, y in zip(s.xs, s.ys, strict=False) if math.isfinite(y)
        ]
        if len(coords) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
            body.append(
                f'<polyline class="series" fill="none" stroke="{s.color}" stroke-width="2" '
                f'points="{path}"/>'
            )
        if len(coords) <= 40:  # markers only where they stay readable
            body.extend(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{s.color}"/>' for x, y in coords
            )
    if len(series) > 1 or (series and series[0].name):
        body.extend(_legend([(s.name, s.color) for s in series]))
    return _svg(title, body)


def stacked_bars(
    starts: Sequence[datetime],
    stacks: Sequence[dict[str, int]],
    labels: Sequence[str],
    *,
    bar_width: timedelta,
    since: datetime,
    until: datetime,
    title: str,
    x_label: str,
    y_label: str,
    empty_message: str = "no pseudo-labels in this window",
) -> Markup:
    """One bar per time bucket, split by label, on a true time axis (gaps stay visible)."""
    colors = {label: color_for(i) for i, label in enumerate(labels)}
    highest = max((sum(s.values()) for s in stacks), default=0)
    ticks = nice_ticks(0, max(highest, 1))
    frame = _Frame((since.timestamp(), until.timestamp()), (0, ticks[-1]))
    body = _axes(
        frame,
        time_axis(since, until),
        [(t, _fmt_number(t)) for t in ticks],
        x_label,
        y_label,
    )
    if not stacks:
        body.append(_empty(frame, empty_message))
    for start, counts in zip(starts, stacks, strict=True):
        left = frame.x(start.timestamp())
        right = frame.x((start + bar_width).timestamp())
        gap = min(1.0, (right - left) * 0.15)
        level = 0
        for label in labels:
            n = counts.get(label, 0)
            if not n:
                continue
            top, bottom = frame.y(level + n), frame.y(level)
            bar = max(1.0, right - left - 2 * gap)
            body.append(
                f'<rect x="{left + gap:.1f}" y="{top:.1f}" width="{bar:.1f}" '
                f'height="{bottom - top:.1f}" fill="{colors[label]}">'
                f"<title>{escape(f'{start:%Y-%m-%d %H:%M} UTC · {label}: {n}')}</title></rect>"
            )
            level += n
    body.extend(_legend([(label, colors[label]) for label in labels]))
    return _svg(title, body)


def time_axis(since: datetime, until: datetime) -> list[tuple[float, str]]:
    span = until - since
    return [(t.timestamp(), time_label(t, span)) for t in time_ticks(since, until)]
