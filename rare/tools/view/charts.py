"""Histograms as inline SVG: no script, no library, nothing fetched."""

from __future__ import annotations

from html import escape

WIDTH, HEIGHT, PAD = 360, 170, 28
MAX_BINS = 20


def histogram_svg(values: list[float], title: str, unit: str = "") -> str:
    """An SVG bar chart of `values` in up to MAX_BINS equal-width bins, each bar titled with its range and count."""
    label = escape(title)
    if not values:
        return f'<svg class="hist" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{label}"><text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">no data</text></svg>'
    low, high = min(values), max(values)
    bins = max(1, min(MAX_BINS, len(set(values))))
    width = (high - low) / bins or 1.0
    counts = [0] * bins
    for value in values:
        counts[min(bins - 1, int((value - low) / width))] += 1
    top, plot_w, plot_h = max(counts), WIDTH - 2 * PAD, HEIGHT - 2 * PAD
    bar_w = plot_w / bins
    bars = []
    for i, count in enumerate(counts):
        h = plot_h * count / top
        lo, hi = low + i * width, low + (i + 1) * width
        bars.append(
            f'<rect x="{PAD + i * bar_w + 1:.1f}" y="{PAD + plot_h - h:.1f}" width="{max(bar_w - 2, 1):.1f}" height="{h:.1f}">'
            f"<title>{lo:.4g}–{hi:.4g}{escape(unit)}: {count}</title></rect>"
        )
    axis_y = PAD + plot_h
    return (
        f'<svg class="hist" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{label}">'
        + "".join(bars)
        + f'<line x1="{PAD}" y1="{axis_y}" x2="{WIDTH - PAD}" y2="{axis_y}"/>'
        + f'<text x="{PAD}" y="{axis_y + 16}">{low:.4g}</text>'
        + f'<text x="{WIDTH - PAD}" y="{axis_y + 16}" text-anchor="end">{high:.4g}{escape(unit)}</text>'
        + f'<text x="{PAD}" y="{PAD - 8}">max {top} / bin · n={len(values)}</text>'
        + "</svg>"
    )
