"""Inline SVG charts for the run report (`factory.report`), drawn without a plotting library.

Contract: plain numbers and labels in, one `<svg class="plot">` element out, as
`markupsafe.Markup`. Every chart has a `<title>`, axes with tick labels and axis labels,
then its marks; every piece of text and every attribute value goes through
`markupsafe.escape`, so a chart is safe inside an autoescaped jinja2 template. Charts draw
in a fixed viewBox and scale to the page width (CSS `width: 100%`). No scripts: tooltips are
SVG `<title>` children, which browsers show on hover.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from markupsafe import Markup, escape

__all__ = ["Line", "ladder_chart", "line_chart", "hbar_chart", "stacked_hbar_chart", "vbar_chart", "heatmap",
           "PALETTE"]

WIDTH = 720
FONT = 12
# Okabe-Ito, readable by colour-blind readers; the first is the ladders' blue
PALETTE = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#d55e00", "#56b4e9", "#f0e442", "#000000")
INK, GRID, MUTED = "#222", "#e3e3e3", "#666"
MEDIAN_FROM = 5  # environments a ladder chart needs before it draws their median


def _attrs(attrs: dict) -> str:
    """`class_` -> class, `data_env` -> data-env; None values are left out."""
    out = []
    for k, v in attrs.items():
        if v is None:
            continue
        name = k.rstrip("_").replace("_", "-")
        out.append(f' {name}="{escape(_num(v) if isinstance(v, float) else v)}"')
    return "".join(out)


def _num(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".") if isinstance(x, float) else str(x)


def el(tag: str, text=None, children: str = "", **attrs) -> str:
    """One element; `text` is escaped, `children` is markup built by these functions."""
    inner = (str(escape(text)) if text is not None else "") + children  # (Markup + str would escape children)
    return f"<{tag}{_attrs(attrs)}>{inner}</{tag}>" if inner else f"<{tag}{_attrs(attrs)}/>"


def _svg(title: str, height: float, body: list[str], desc: str | None = None, kind: str | None = None) -> Markup:
    """The chart's <title> (for screen readers and tooltips), drawn again as its visible heading."""
    head = el("title", title) + (el("desc", desc) if desc else "")
    head += el("text", title, class_="heading", x=4, y=16, font_size=FONT + 2, font_weight="bold", fill=INK)
    cls = "plot" + (f" {kind}" if kind else "")
    return Markup(f'<svg class="{cls}" role="img" viewBox="0 0 {WIDTH} {_num(float(height))}">'
                  + head + "".join(body) + "</svg>")


@dataclass(frozen=True)
class Frame:
    """The plot area inside the margins, and linear scales from data to pixels."""
    height: float
    left: float = 64
    right: float = 24
    top: float = 30
    bottom: float = 48
    x0: float = 0.0
    x1: float = 1.0
    y0: float = 0.0
    y1: float = 1.0

    def x(self, v: float) -> float:
        span = (self.x1 - self.x0) or 1.0
        return self.left + (v - self.x0) / span * (WIDTH - self.left - self.right)

    def y(self, v: float) -> float:
        span = (self.y1 - self.y0) or 1.0
        return self.height - self.bottom - (v - self.y0) / span * (self.height - self.top - self.bottom)


def _axes(f: Frame, xticks: list[tuple[float, str]], yticks: list[tuple[float, str]], xlabel: str,
          ylabel: str) -> list[str]:
    out = []
    for v, label in yticks:
        y = f.y(v)
        out.append(el("line", x1=f.left, y1=y, x2=WIDTH - f.right, y2=y, stroke=GRID))
        out.append(el("text", label, x=f.left - 6, y=y + 4, text_anchor="end", font_size=FONT, fill=MUTED))
    for v, label in xticks:
        x = f.x(v)
        out.append(el("line", x1=x, y1=f.height - f.bottom, x2=x, y2=f.height - f.bottom + 5, stroke=INK))
        out.append(el("text", label, x=x, y=f.height - f.bottom + 18, text_anchor="middle", font_size=FONT,
                      fill=MUTED))
    base = f.height - f.bottom
    out.append(el("line", class_="axis", x1=f.left, y1=base, x2=WIDTH - f.right, y2=base, stroke=INK))
    out.append(el("line", class_="axis", x1=f.left, y1=f.top, x2=f.left, y2=base, stroke=INK))
    out.append(el("text", xlabel, x=(f.left + WIDTH - f.right) / 2, y=f.height - 8, text_anchor="middle",
                  font_size=FONT + 1, fill=INK))
    cy = (f.top + base) / 2
    out.append(el("text", ylabel, x=14, y=cy, text_anchor="middle", font_size=FONT + 1, fill=INK,
                  transform=f"rotate(-90 14 {_num(cy)})"))
    return out


def _points(f: Frame, pts) -> str:
    return " ".join(f"{f.x(x):.1f},{f.y(y):.1f}" for x, y in pts)


def _decade(v: int) -> str:
    return f"{v:,}" if v < 10**6 else f"1e{round(math.log10(v))}"


def ladder_chart(title: str, envs: list[tuple[str, list[int], list[bool]]]) -> Markup:
    """One polyline per environment (`class="ladder"`, `data-env`): x = level, y = log10 of
    its feasible-plan count; the per-level median on top; capped counts (lower bounds) as
    open circles."""
    counts = [c for _, cs, _ in envs for c in cs if c > 0]
    lo = math.floor(math.log10(min(counts))) if counts else 0
    hi = max(lo + 1, math.ceil(math.log10(max(counts)))) if counts else 1
    n_levels = max((len(cs) for _, cs, _ in envs), default=1)
    f = Frame(380, x0=0, x1=max(1, n_levels - 1), y0=lo, y1=hi)
    body = _axes(f, [(i, str(i)) for i in range(n_levels)], [(d, _decade(10**d)) for d in range(lo, hi + 1)],
                 "difficulty level", "feasible plans (log10 scale)")
    opacity = 0.55 if len(envs) <= 20 else 0.3
    for env_id, cs, capped in envs:
        pts = [(i, math.log10(c)) for i, c in enumerate(cs) if c > 0]
        tip = f"{env_id}: " + " → ".join(f"{c:,}{'+' if i < len(capped) and capped[i] else ''}"
                                         for i, c in enumerate(cs))
        body.append(el("polyline", children=el("title", tip), class_="ladder", data_env=env_id,
                       points=_points(f, pts), fill="none", stroke=PALETTE[0], stroke_width=1.5,
                       stroke_opacity=opacity, stroke_linejoin="round"))
        for i, c in enumerate(cs):
            if i < len(capped) and capped[i] and c > 0:
                body.append(el("circle", class_="capped", cx=f.x(i), cy=f.y(math.log10(c)), r=3.5, fill="white",
                               stroke=PALETTE[4]))
    # the median only over enough lines: with 3 it would be drawn over the middle one
    med = [(i, math.log10(m)) for i in range(n_levels) if len(envs) >= MEDIAN_FROM
           for m in [_median([cs[i] for _, cs, _ in envs if i < len(cs) and cs[i] > 0])] if m]
    if med:
        body.append(el("polyline", children=el("title", "median over environments"), class_="median",
                       points=_points(f, med), fill="none", stroke=INK, stroke_width=3, stroke_linejoin="round"))
        x, y = f.x(med[-1][0]), f.y(med[-1][1])
        body.append(el("text", "median", x=x - 6, y=y - 8, text_anchor="end", font_size=FONT, fill=INK,
                       font_weight="bold", stroke="white", stroke_width=3, paint_order="stroke"))
    return _svg(title, f.height, body, desc=f"{len(envs)} environments", kind="ladders")


def _median(xs: list[float]) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


@dataclass(frozen=True)
class Line:
    label: str
    points: list[tuple[float, float]]
    color: str = PALETTE[0]
    dashed: bool = False


def line_chart(title: str, lines: list[Line], xticks: list[tuple[float, str]], xlabel: str, ylabel: str,
               y_range: tuple[float, float] = (0.0, 1.0), yticks: list[tuple[float, str]] | None = None) -> Markup:
    """Lines with point markers and a legend at the right (pass@k by level, say)."""
    xs = [v for v, _ in xticks] or [0, 1]
    legend_w = 150
    f = Frame(320, right=24 + legend_w, x0=min(xs), x1=max(max(xs), min(xs) + 1), y0=y_range[0], y1=y_range[1])
    yticks = yticks or [(y_range[0] + i * (y_range[1] - y_range[0]) / 4,
                         f"{y_range[0] + i * (y_range[1] - y_range[0]) / 4:.2f}") for i in range(5)]
    body = _axes(f, xticks, yticks, xlabel, ylabel)
    for n, ln in enumerate(lines):
        dash = "6 4" if ln.dashed else None
        body.append(el("polyline", children=el("title", ln.label), class_="series", data_series=ln.label,
                       points=_points(f, ln.points), fill="none", stroke=ln.color, stroke_width=2.2,
                       stroke_dasharray=dash))
        for x, y in ln.points:
            body.append(el("circle", children=el("title", f"{ln.label}: {y:.2f}"), cx=f.x(x), cy=f.y(y), r=3,
                           fill=ln.color))
        ly = f.top + 8 + n * 18
        lx = WIDTH - legend_w + 4
        body.append(el("line", x1=lx, y1=ly, x2=lx + 22, y2=ly, stroke=ln.color, stroke_width=2.2,
                       stroke_dasharray=dash))
        body.append(el("text", ln.label, x=lx + 28, y=ly + 4, font_size=FONT, fill=INK))
    return _svg(title, f.height, body)


def _ticks(v: float, integer: bool = False) -> list[tuple[float, str]]:
    """Axis ticks from 0 to the first round step at or above v: steps of 1, 2, 2.5 or 5 times
    a power of ten, about a quarter of v (at least 1 for counts)."""
    raw = v / 4 if v > 0 else 0.25
    p = 10 ** math.floor(math.log10(raw))
    step = next(m * p for m in (1, 2, 2.5, 5, 10) if m * p >= raw)
    if integer:
        step = max(1.0, math.ceil(step))
    n = max(1, math.ceil(v / step - 1e-9))
    return [(i * step, f"{round(i * step, 6):g}") for i in range(n + 1)]


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def hbar_chart(title: str, items: list[tuple[str, float]], xlabel: str, label_width: int = 200,
               fmt=lambda v: f"{v:,.0f}", color: str = PALETTE[0]) -> Markup:
    """One horizontal bar per (label, value), in the order given; the value at the bar's end.
    Each bar carries `data-label` and `data-value`."""
    row = 22
    ticks = _ticks(max((v for _, v in items), default=1), integer=all(isinstance(v, int) for _, v in items))
    f = Frame(30 + row * max(1, len(items)) + 48, left=label_width, right=60, x0=0, x1=ticks[-1][0], y0=0, y1=1)
    body = _axes(f, ticks, [], xlabel, "")
    for i, (label, v) in enumerate(items):
        y = f.top + i * row + 3
        w = max(0.0, f.x(v) - f.left)
        body.append(el("text", _clip(label, label_width // 7), children=el("title", label), x=f.left - 6,
                       y=y + row / 2 + 1, text_anchor="end", font_size=FONT, fill=INK))
        body.append(el("rect", children=el("title", f"{label}: {fmt(v)}"), class_="bar", data_label=label,
                       data_value=_num(float(v)) if isinstance(v, float) else v, x=f.left, y=y, width=w,
                       height=row - 6, fill=color))
        body.append(el("text", fmt(v), x=f.left + w + 4, y=y + row / 2 + 1, font_size=FONT, fill=MUTED))
    return _svg(title, f.height, body)


def stacked_hbar_chart(title: str, rows: list[tuple[str, int, int]], xlabel: str, names=("passed", "failed"),
                       label_width: int = 260) -> Markup:
    """Per row, a bar of `a` (green) then `b` (red) on a share axis (0 to 100%), counts written."""
    row = 24
    f = Frame(30 + row * max(1, len(rows)) + 48, left=label_width, right=110, x0=0, x1=1, y0=0, y1=1)
    body = _axes(f, [(i / 4, f"{25 * i}%") for i in range(5)], [], xlabel, "")
    colors = (PALETTE[2], PALETTE[4])
    for i, (label, a, b) in enumerate(rows):
        y = f.top + i * row + 3
        total = a + b
        body.append(el("text", _clip(label, label_width // 7), x=f.left - 6, y=y + row / 2 + 1, text_anchor="end",
                       font_size=FONT, fill=INK))
        x = f.left
        for n, (v, c, name) in enumerate(zip((a, b), colors, names)):
            w = (f.x(v / total) - f.left) if total else 0.0
            body.append(el("rect", children=el("title", f"{label}: {v:,} {name}"), class_=f"bar {name}",
                           data_label=label, data_value=v, x=x, y=y, width=w, height=row - 6, fill=c))
            x += w
        body.append(el("text", f"{a:,} / {total:,}", x=WIDTH - f.right + 6, y=y + row / 2 + 1, font_size=FONT,
                       fill=MUTED))
    ly = 16  # the legend beside the heading
    for n, (c, name) in enumerate(zip(colors, names)):
        lx = WIDTH - 200 + n * 100
        body.append(el("rect", x=lx, y=ly - 9, width=12, height=12, fill=c))
        body.append(el("text", name, x=lx + 18, y=ly + 1, font_size=FONT, fill=INK))
    return _svg(title, f.height, body)


def vbar_chart(title: str, items: list[tuple[str, float]], xlabel: str, ylabel: str,
               ranges: list[tuple[float, float]] | None = None, fmt=lambda v: f"{v:,.0f}") -> Markup:
    """One vertical bar per (label, value); `ranges` adds a min-max whisker to each bar."""
    hi = max([v for _, v in items] + [r[1] for r in ranges or []] + [1])
    ticks = _ticks(hi, integer=all(isinstance(v, int) for _, v in items))
    n = max(1, len(items))
    f = Frame(300, x0=-0.5, x1=n - 0.5, y0=0, y1=ticks[-1][0])
    body = _axes(f, [(i, label) for i, (label, _) in enumerate(items)], ticks, xlabel, ylabel)
    bw = min(56.0, (WIDTH - f.left - f.right) / n * 0.7)
    for i, (label, v) in enumerate(items):
        x, y = f.x(i), f.y(v)
        body.append(el("rect", children=el("title", f"{label}: {fmt(v)}"), class_="bar", data_label=label,
                       data_value=_num(float(v)) if isinstance(v, float) else v, x=x - bw / 2, y=y, width=bw,
                       height=max(0.0, f.y(0) - y), fill=PALETTE[0]))
        if ranges:
            lo, hi_ = ranges[i]
            body.append(el("line", children=el("title", f"range {fmt(lo)} to {fmt(hi_)}"), class_="whisker",
                           x1=x, y1=f.y(lo), x2=x, y2=f.y(hi_), stroke=INK, stroke_width=1.5))
            for w in (lo, hi_):
                body.append(el("line", x1=x - 6, y1=f.y(w), x2=x + 6, y2=f.y(w), stroke=INK, stroke_width=1.5))
        body.append(el("text", fmt(v), x=x + (bw / 2 + 4 if ranges else 0), y=y - 5,
                       text_anchor="start" if ranges else "middle", font_size=FONT, fill=MUTED))
    return _svg(title, f.height, body)


def heatmap(title: str, rows: list[str], cols: list[str], values: list[list[int]], totals: list[int],
            xlabel: str, label_width: int = 200) -> Markup:
    """Cells shaded by values[r][c] / totals[c] (a share of column c), the count written in."""
    cell_h = 24
    f = Frame(30 + cell_h * max(1, len(rows)) + 48, left=label_width, right=24, x0=0, x1=max(1, len(cols)), y0=0,
              y1=1)
    cw = (WIDTH - f.left - f.right) / max(1, len(cols))
    body = _axes(f, [(c + 0.5, label) for c, label in enumerate(cols)], [], xlabel, "")
    for r, label in enumerate(rows):
        y = f.top + r * cell_h
        body.append(el("text", _clip(label, label_width // 7), x=f.left - 6, y=y + cell_h / 2 + 4,
                       text_anchor="end", font_size=FONT, fill=INK))
        for c in range(len(cols)):
            v = values[r][c]
            share = v / totals[c] if totals[c] else 0.0
            body.append(el("rect", children=el("title", f"{label}, {cols[c]}: {v} of {totals[c]} tasks"),
                           class_="cell", data_label=label, data_col=cols[c], data_value=v, x=f.x(c) + 1, y=y + 1,
                           width=cw - 2, height=cell_h - 2, fill=PALETTE[0], fill_opacity=0.08 + 0.8 * share))
            body.append(el("text", str(v), x=f.x(c) + cw / 2, y=y + cell_h / 2 + 4, text_anchor="middle",
                           font_size=FONT, fill="white" if share > 0.55 else INK))
    return _svg(title, f.height, body)
