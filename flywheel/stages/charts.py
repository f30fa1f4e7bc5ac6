"""Small SVG charts for the iteration report, written without a plotting library: a histogram of
two or more distributions side by side per bin, grouped bars and lines over a 0-1 (or 0-max)
axis. Each chart is a standalone SVG document on a white background (the Prefect UI is dark),
with a <title> on every bar and point that carries its value. `data_uri` turns one into an image
URL that the Prefect UI's markdown renderer shows (it strips inline <svg>, but keeps
`![alt](data:image/svg+xml;base64,...)`)."""

from __future__ import annotations

import base64
from xml.sax.saxutils import escape

WIDTH, HEIGHT = 520, 260
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 44, 44  # plot margins: axis labels, title and legend
COLORS = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#b279a2", "#72b7b2")
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM


def bin_counts(values: list[float], lo: float, hi: float, bins: int) -> list[int]:
    """How many values fall in each of `bins` equal bins over [lo, hi]; values outside are
    counted in the first or last bin, and `hi` itself in the last."""
    counts = [0] * bins
    step = (hi - lo) / bins
    for v in values:
        counts[min(bins - 1, max(0, int((v - lo) / step)))] += 1
    return counts


def _y(value: float, top: float) -> float:
    """The SVG y of `value` on an axis from 0 (bottom of the plot) to `top`."""
    return TOP + PLOT_H * (1 - value / top)


def _frame(title: str, names: list[str], y_ticks: list[float], y_top: float,
           x_labels: list[tuple[float, str]]) -> list[str]:
    parts = [f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
             f'<text x="{LEFT}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>']
    for i, name in enumerate(names):  # the legend, one row under the title
        x = LEFT + i * (PLOT_W // max(1, len(names)))
        parts += [f'<rect x="{x}" y="24" width="10" height="10" fill="{COLORS[i % 6]}"/>',
                  f'<text x="{x + 14}" y="33" font-size="10">{escape(name)}</text>']
    for t in y_ticks:
        y = _y(t, y_top)
        parts += [f'<line x1="{LEFT}" x2="{LEFT + PLOT_W}" y1="{y:.1f}" y2="{y:.1f}" '
                  'stroke="#dddddd"/>',
                  f'<text x="{LEFT - 4}" y="{y + 3:.1f}" font-size="10" '
                  f'text-anchor="end">{t:g}</text>']
    for x, label in x_labels:
        parts.append(f'<text x="{x:.1f}" y="{TOP + PLOT_H + 14}" font-size="10" '
                     f'text-anchor="middle">{escape(label)}</text>')
    parts.append(f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + PLOT_H}" stroke="#333"/>')
    parts.append(f'<line x1="{LEFT}" x2="{LEFT + PLOT_W}" y1="{TOP + PLOT_H}" '
                 f'y2="{TOP + PLOT_H}" stroke="#333"/>')
    return parts


def _svg(parts: list[str], label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" role="img" '
            f'aria-label="{escape(label)}">' + "".join(parts) + "</svg>\n")


def _grouped_bars(title: str, groups: list[str], series: dict[str, list[float | None]],
                  y_top: float, y_ticks: list[float], fmt: str) -> str:
    """Bars of each series side by side in each group; a None value draws no bar."""
    names = list(series)
    slot = PLOT_W / max(1, len(groups))
    bar = slot * 0.8 / max(1, len(names))
    parts = _frame(title, names, y_ticks, y_top,
                   [(LEFT + slot * (g + 0.5), label) for g, label in enumerate(groups)])
    for s, name in enumerate(names):
        for g, value in enumerate(series[name]):
            x = LEFT + slot * g + slot * 0.1 + bar * s
            if value is None:  # no data, told apart from a value of 0
                parts.append(f'<text class="missing" x="{x + bar / 2:.1f}" y="{TOP + PLOT_H - 3}"'
                             ' font-size="9" text-anchor="middle" fill="#888">n/a</text>')
                continue
            y = _y(value, y_top)
            parts.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" '
                         f'height="{TOP + PLOT_H - y:.1f}" fill="{COLORS[s % 6]}">'
                         f'<title>{escape(name)}, {escape(groups[g])}: {value:{fmt}}</title>'
                         '</rect>')
    return _svg(parts, title)


def histogram_svg(title: str, series: dict[str, list[float]], lo: float = 0.0,
                  hi: float = 1.0, bins: int = 10) -> str:
    """Counts per bin over [lo, hi] of each series, bars side by side: e.g. the reward of the
    parent's and of the candidate's answers."""
    counts = {name: bin_counts(v, lo, hi, bins) for name, v in series.items()}
    top = max([1] + [c for cs in counts.values() for c in cs])
    step = (hi - lo) / bins
    groups = [f"{lo + i * step:.2g}" for i in range(bins)]
    return _grouped_bars(title, groups, counts, top, [0, top], "d")


def bars_svg(title: str, groups: list[str], series: dict[str, list[float | None]],
             hi: float = 1.0) -> str:
    """Grouped bars of values in [0, hi]: e.g. accuracy per preference strength per model."""
    return _grouped_bars(title, groups, series, hi, [0, hi / 2, hi], ".3f")


def lines_svg(title: str, xs: list[int], series: dict[str, list[float | None]],
              hi: float = 1.0) -> str:
    """One line per series over the integer xs (iterations), values in [0, hi]; a None value
    leaves a gap."""
    names = list(series)
    span = max(1, len(xs) - 1)

    def x_of(i: int) -> float:
        return LEFT + PLOT_W * (0.5 if len(xs) == 1 else i / span)

    parts = _frame(title, names, [0, hi / 2, hi], hi, [(x_of(i), str(x)) for i, x in
                                                       enumerate(xs)])
    for s, name in enumerate(names):
        points = [(x_of(i), _y(v, hi), xs[i], v) for i, v in enumerate(series[name])
                  if v is not None]
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in points)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{COLORS[s % 6]}" '
                         'stroke-width="2"/>')
        for x, y, it, v in points:
            parts.append(f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="3.5" '
                         f'fill="{COLORS[s % 6]}"><title>{escape(name)}, iteration {it}: '
                         f'{v:.3f}</title></circle>')
    return _svg(parts, title)


def intervals_svg(title: str, labels: list[str], values: list[float],
                  lows: list[float | None], highs: list[float | None]) -> str:
    """A point per label with its interval as a vertical bar (none where a bound is None), on
    an axis fitted to the intervals: e.g. each policy's rating with its bootstrap interval."""
    ends = [v for v in [*values, *lows, *highs] if v is not None] or [0.0]
    pad = (max(ends) - min(ends)) * 0.05 or 1.0
    bottom, top = min(ends) - pad, max(ends) + pad
    slot = PLOT_W / max(1, len(labels))

    def y(v: float) -> float:
        return TOP + PLOT_H * (top - v) / (top - bottom)

    parts = _frame(title, [], [], 1.0, [(LEFT + slot * (i + 0.5), label)
                                       for i, label in enumerate(labels)])
    for t in (bottom + pad, (bottom + top) / 2, top - pad):
        parts.append(f'<text x="{LEFT - 4}" y="{y(t) + 3:.1f}" font-size="10" '
                     f'text-anchor="end">{t:.0f}</text>')
    for i, (label, v, lo, hi) in enumerate(zip(labels, values, lows, highs)):
        x = LEFT + slot * (i + 0.5)
        if lo is not None and hi is not None:
            parts.append(f'<line class="interval" x1="{x:.1f}" x2="{x:.1f}" y1="{y(lo):.1f}" '
                         f'y2="{y(hi):.1f}" stroke="{COLORS[0]}" stroke-width="2"/>')
        span = f" ({lo:.0f} to {hi:.0f})" if lo is not None and hi is not None else ""
        parts.append(f'<circle class="point" cx="{x:.1f}" cy="{y(v):.1f}" r="4" '
                     f'fill="{COLORS[1]}"><title>{escape(label)}: {v:.0f}{span}</title>'
                     '</circle>')
    return _svg(parts, title)


def data_uri(svg: str) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()
