"""Render folded stacks as a self-contained, interactive flame graph SVG.

This module owns the ``flamegraph.svg`` artifact: layout, colours, escaping and the
small inline script (hover details, click to zoom, reset, regex search with the
matched percentage). It is pure: stacks in, one SVG string out, nothing fetched.

Like flamegraph.pl: the root at the bottom, siblings in alphabetical order,
widths proportional to counts, and frames narrower than ``minwidth`` pixels
dropped with their subtrees, so a profile of millions of samples still renders
to a small file. Colours tell the frame kind apart (:func:`frame_kind`), each kind
in a range of hues no other kind shares (:data:`PALETTE`), as the legend shows.

Differential graphs (``deltas=``, see :mod:`tracecar_formats.diff`) are coloured
as flamegraph.pl colours difffolded.pl's output instead: each frame by the
change of the stacks that end in it (its self delta), red for growth and blue
for shrinkage, saturated in proportion to the largest change of one stack,
white for none; ``negate`` swaps the hues (the graph drawn with the base's widths).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = ["PALETTE", "FrameKind", "Swatch", "diff_colour", "frame_kind", "render_svg"]

FrameKind = Literal["kernel", "jit", "interpreted", "inlined", "native", "unknown", "root"]

_FONT_SIZE = 12
_FRAME_H = 16
_PAD_BOTTOM = 34  # details line
_PAD_SIDE = 10
_CHAR_W = 0.59 * _FONT_SIZE
# The header, top down: title, subtitle, the controls row (Reset Zoom on the left,
# "Matched: NN%" and Search on the right), then the legend on rows of its own, wrapped
# to the width (it shared the controls row once, and collided with them when narrow).
_TITLE_Y = 20
_SUBTITLE_Y = 38
_CONTROLS_Y = 58
_LEGEND_Y = 78
_LEGEND_ROW = 18
_GAP = 12  # between legend items, and between "Matched: NN%" and the Search button
_LEGEND_CHAR_W = 7.0  # 11px Verdana, estimated; the script measures the real widths
_SEARCH_W = 90  # "Reset Search" at 12px, estimated (the script measures it)

# Kernel entry points recognisable without perf's `_[k]` annotation; every frame
# above a kernel frame is kernel too (the kernel never calls back into user code).
_KERNEL_ENTRY = re.compile(
    r"^(entry_SYSCALL|entry_INT80|do_syscall_|__x64_sys_|__ia32_sys_|__arm64_sys_|el0_|"
    r"asm_(exc|sysvec|common_interrupt)|ret_from_fork|irq_exit|__do_softirq|"
    r"page_fault|exc_page_fault|cpu_startup_entry|secondary_startup_64|start_kernel)"
)


@dataclass(frozen=True, slots=True)
class Swatch:
    """The colours of one frame kind: ``hsl(hue, saturation%, lightness%)`` with the hue
    and lightness picked (stably, per name) inside these ranges."""

    hue: tuple[int, int]
    saturation: int
    lightness: tuple[int, int]

    def holds(self, h: float, s: float, lum: float) -> bool:
        """Whether a colour is one of this kind's (to the rounding the SVG uses)."""
        return (
            self.hue[0] - 0.5 <= h <= self.hue[1] + 0.5
            and s == self.saturation
            and self.lightness[0] - 0.5 <= lum <= self.lightness[1] + 0.5
        )


# One hue range per kind that no other kind shares, after FlameGraph's java palette
# (flamegraph.pl --colors=java: red user code, orange kernel, green JIT, aqua inlined)
# plus blue for Python. Its red is hue 0 and its orange hues 28-36: the old native range
# (0-55) swallowed the kernel's (25-40), so a C program's `main` came out legend orange.
# Unresolved frames and the root are greys (saturation 0), told apart by lightness.
PALETTE: dict[FrameKind, Swatch] = {
    "native": Swatch((0, 12), 80, (55, 68)),
    "kernel": Swatch((28, 40), 90, (50, 62)),
    "jit": Swatch((100, 135), 55, (42, 58)),
    "inlined": Swatch((172, 190), 60, (45, 60)),
    "interpreted": Swatch((205, 230), 60, (55, 70)),
    "unknown": Swatch((0, 0), 0, (62, 75)),
    "root": Swatch((0, 0), 0, (82, 82)),
}

_LEGEND: tuple[tuple[FrameKind, str], ...] = (
    ("native", "native"),
    ("kernel", "kernel"),
    ("jit", "JIT"),
    ("interpreted", "Python"),
    ("inlined", "inlined"),
    ("unknown", "unresolved"),
)

# Differential graphs: what the two hues mean (the target against the base).
_DIFF_LEGEND: tuple[tuple[FrameKind, str], ...] = (("root", "grew"), ("root", "shrank"))
_DIFF_FILL = {"grew": "rgb(255,80,80)", "shrank": "rgb(80,80,255)"}

_XML_ESCAPES = {ord("&"): "&amp;", ord("<"): "&lt;", ord(">"): "&gt;", ord('"'): "&quot;"}
# Characters XML 1.0 forbids even escaped: replace them so the document stays well-formed.
_XML_ESCAPES.update({c: "\ufffd" for c in range(0x20) if c not in (0x09, 0x0A, 0x0D)})
_XML_ESCAPES.update({c: "\ufffd" for c in (0xFFFE, 0xFFFF)})
_SURROGATES = re.compile("[\ud800-\udfff]")


def _esc(text: str) -> str:
    return _SURROGATES.sub("\ufffd", text.translate(_XML_ESCAPES))


def frame_kind(name: str, *, parent_kernel: bool = False) -> FrameKind:
    """The kind of one frame from its folded name (stackcollapse annotations first)."""
    if name.endswith("_[k]") or parent_kernel:
        return "kernel"
    if name.endswith("_[j]"):
        return "interpreted" if name.startswith("py::") else "jit"
    if name.endswith("_[i]"):
        return "inlined"
    if name.startswith("py::"):
        return "interpreted"
    if name.startswith("[") and name.endswith("]"):
        return "unknown"
    if _KERNEL_ENTRY.match(name):
        return "kernel"
    return "native"


def _colour(kind: FrameKind, name: str) -> str:
    sw = PALETTE[kind]
    (h0, h1), (l0, l1) = sw.hue, sw.lightness
    # Stable per name (not random): the same function keeps its colour across graphs.
    digest = hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=4).digest()
    a, b = digest[0] / 255, digest[1] / 255
    return f"hsl({h0 + (h1 - h0) * a:.0f},{sw.saturation}%,{l0 + (l1 - l0) * b:.0f}%)"


def _legend_colour(kind: FrameKind) -> str:
    """A legend swatch: the middle of its kind's ranges (not a hashed label's colour)."""
    sw = PALETTE[kind]
    hue, lum = sum(sw.hue) / 2, sum(sw.lightness) / 2
    return f"hsl({hue:.0f},{sw.saturation}%,{lum:.0f}%)"


class _Node:
    __slots__ = ("children", "count", "delta")

    def __init__(self) -> None:
        self.count = 0
        self.delta = 0.0  # differential graphs: the change of the stacks ending here
        self.children: dict[str, _Node] = {}


def _build(
    stacks: Mapping[str, int], deltas: Mapping[str, float] | None = None
) -> tuple[_Node, int]:
    root = _Node()
    for stack, count in stacks.items():
        if count <= 0:
            continue
        root.count += count
        node = root
        for name in stack.split(";"):
            child = node.children.get(name)
            if child is None:
                child = node.children[name] = _Node()
            child.count += count
            node = child
        if deltas is not None:
            node.delta += deltas.get(stack, 0.0)
    return root, root.count


def _legend_layout(
    width: int, legend: tuple[tuple[FrameKind, str], ...] = _LEGEND
) -> tuple[list[tuple[float, float]], int]:
    """Where each legend item goes, wrapped to `width`, and the y where frames may start
    (the script's ``layout`` does the same with measured widths)."""
    x, row, places = float(_PAD_SIDE), 0, []
    for _, label in legend:
        item_w = 13 + len(label) * _LEGEND_CHAR_W
        if x > _PAD_SIDE and x + item_w > width - _PAD_SIDE:
            row, x = row + 1, float(_PAD_SIDE)
        places.append((x, float(_LEGEND_Y + row * _LEGEND_ROW)))
        x += item_w + _GAP
    return places, _LEGEND_Y + row * _LEGEND_ROW + 12


def diff_colour(delta: float, max_delta: float, *, negate: bool = False) -> str:
    """flamegraph.pl's ``color_scale``: red for growth, blue for shrinkage, white for none."""
    r = g = b = 255
    value = -delta if negate else delta
    if value > 0:
        g = b = int(210 * (max_delta - value) / max_delta)
    elif value < 0:
        r = g = int(210 * (max_delta + value) / max_delta)
    return f"rgb({r},{g},{b})"


def render_svg(
    stacks: Mapping[str, int],
    *,
    title: str,
    subtitle: str = "",
    count_name: str = "samples",
    width: int = 1200,
    minwidth: float = 0.1,
    deltas: Mapping[str, float] | None = None,
    negate: bool = False,
) -> str:
    """An interactive flame graph of ``stacks`` (``{"a;b;c": count}``) as SVG text.

    ``deltas`` (``{"a;b;c": target - base}``) makes it a differential graph.
    """
    width = max(int(width), 200)
    root, total = _build(stacks, deltas)
    # As flamegraph.pl: the scale is the largest change of one stack, at least 1.
    max_delta = max([1.0, *(abs(d) for d in (deltas or {}).values())])
    plot_w = width - 2 * _PAD_SIDE
    scale = plot_w / total if total else 0.0
    min_count = minwidth / scale if scale else 0.0

    # Lay out breadth-agnostic, depth-first: (name, x in counts, depth, count, kind).
    frames: list[tuple[str, int, int, int, FrameKind]] = []
    frame_delta: list[float] = []
    max_depth = 0
    stack: list[tuple[str, _Node, int, int, bool]] = [("all", root, 0, 0, False)]
    while stack:
        name, node, x, depth, in_kernel = stack.pop()
        kind: FrameKind = "root" if depth == 0 else frame_kind(name, parent_kernel=in_kernel)
        frames.append((name, x, depth, node.count, kind))
        frame_delta.append(node.delta)
        max_depth = max(max_depth, depth)
        cx = x
        kids = []
        for child_name in sorted(node.children):
            child = node.children[child_name]
            if child.count >= min_count:
                kids.append((child_name, child, cx, depth + 1, kind == "kernel"))
            cx += child.count
        stack.extend(reversed(kids))

    legend = _LEGEND if deltas is None else _DIFF_LEGEND
    legend_places, pad_top = _legend_layout(width, legend)
    height = pad_top + (max_depth + 1) * _FRAME_H + _PAD_BOTTOM
    out: list[str] = [
        '<?xml version="1.0" standalone="no"?>\n',
        f'<svg version="1.1" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg" '
        f'data-total="{total}" data-count-name="{_esc(count_name)}" '
        f'data-plot-width="{plot_w}" data-pad="{_PAD_SIDE}" data-top="{pad_top}" '
        f'data-legend-y="{_LEGEND_Y}" data-legend-row="{_LEGEND_ROW}" data-gap="{_GAP}">\n',
        f"<style>{_CSS}</style>\n",
        f"<script><![CDATA[{_JS}]]></script>\n",
        f'<rect id="background" x="0" y="0" width="{width}" height="{height}" fill="#f8f8f8"/>\n',
        f'<text id="title" x="{width / 2:.0f}" y="{_TITLE_Y}" text-anchor="middle">'
        f"{_esc(title)}</text>\n",
        f'<text id="subtitle" x="{width / 2:.0f}" y="{_SUBTITLE_Y}" text-anchor="middle">'
        f"{_esc(subtitle)}</text>\n",
        f'<text id="unzoom" class="button hide" x="{_PAD_SIDE}" y="{_CONTROLS_Y}">'
        "Reset Zoom</text>\n",
        f'<text id="search" class="button" x="{width - _PAD_SIDE}" y="{_CONTROLS_Y}" '
        'text-anchor="end">Search</text>\n',
        f'<text id="matched" x="{width - _PAD_SIDE - _SEARCH_W - _GAP}" '
        f'y="{_CONTROLS_Y}" text-anchor="end"></text>\n',
        f'<text id="details" x="{_PAD_SIDE}" y="{height - 12}"> </text>\n',
    ]
    for (kind, label), (lx, ly) in zip(legend, legend_places, strict=True):
        fill = _legend_colour(kind) if deltas is None else _DIFF_FILL[label]
        out.append(
            f'<g class="legend" transform="translate({lx:.0f},{ly:.0f})">'
            f'<rect x="0" y="-9" width="10" height="10" fill="{fill}"/>'
            f'<text x="13" y="0">{label}</text></g>\n'
        )
    out.append('<g id="frames">\n')
    base_y = height - _PAD_BOTTOM
    pct = 100.0 / total if total else 0.0
    for (name, x, depth, count, kind), delta in zip(frames, frame_delta, strict=True):
        fx = _PAD_SIDE + x * scale
        fw = count * scale
        y = base_y - (depth + 1) * _FRAME_H
        label = name if depth else "all"
        esc = _esc(label)
        chars = int(fw / _CHAR_W)
        if chars >= 3:
            text = esc if len(label) <= chars else _esc(label[: chars - 2] + "..")
        else:
            text = ""
        change = fill = ""
        if deltas is None:
            fill = _colour(kind, name)
        else:
            fill = diff_colour(delta, max_delta, negate=negate)
            if depth:  # flamegraph.pl's "; +1.23%": the change as a share of the total
                shown = -delta if negate else delta
                change = f"; {'+' if shown > 0 else ''}{shown * pct:.2f}%"
        out.append(
            f'<g data-x="{x}" data-w="{count}" data-d="{depth}" data-k="{kind}">'
            f"<title>{esc} ({count:,} {_esc(count_name)}, {count * pct:.2f}%{change})</title>"
            f'<rect x="{fx:.2f}" y="{y}" width="{fw:.2f}" height="{_FRAME_H - 1}" '
            f'fill="{fill}" rx="2" ry="2"/>'
            f'<text x="{fx + 3:.2f}" y="{y + _FRAME_H - 4.5:.1f}">{text}</text></g>\n'
        )
    out.append("</g>\n</svg>\n")
    return "".join(out)


_CSS = """
text { font-family: Verdana, sans-serif; font-size: 12px; fill: #000; }
#title { font-size: 17px; }
#subtitle { fill: #555; }
.legend text { font-size: 11px; fill: #333; }
.button { cursor: pointer; fill: #1f4f8f; text-decoration: underline; }
.hide { display: none; }
#frames g { cursor: pointer; }
#frames g:hover rect { stroke: #000; stroke-width: 0.5; }
#frames g.parent rect { opacity: 0.5; }
#frames g.match rect { fill: rgb(230,0,230); }
"""

# Written for this project (not flamegraph.pl's script). Frames carry their
# position in counts (data-x, data-w) and depth, so zoom is arithmetic.
_JS = r"""
(function () {
  "use strict";
  var svg, frames, total, plotW, pad, top0, height0, zoomed = null, cw = 0.59 * 12;
  var full = {}, legends, LEGEND_Y, LEGEND_ROW, GAP, MIN_WIDTH = 320;
  function $(id) { return document.getElementById(id); }
  function attr(g, n) { return parseFloat(g.getAttribute(n)); }
  function textWidth(el) {
    try { return el.getComputedTextLength(); } catch (e) { return el.textContent.length * cw; }
  }
  function boxWidth(el, fallback) {
    try { return el.getBBox().width; } catch (e) { return fallback; }
  }
  // Shorten `el` to `text` cut with ".." so that it is at most maxW wide.
  function fitText(el, text, maxW) {
    el.textContent = text;
    if (textWidth(el) <= maxW) return;
    var lo = 0, hi = text.length;
    while (lo < hi) {
      var mid = Math.ceil((lo + hi) / 2);
      el.textContent = text.substring(0, mid) + "..";
      if (textWidth(el) <= maxW) lo = mid; else hi = mid - 1;
    }
    el.textContent = lo ? text.substring(0, lo) + ".." : "";
  }
  function fullName(g) {
    var t = g.querySelector("title").textContent;
    return t.substring(0, t.lastIndexOf(" ("));
  }
  function fit(g, w) {
    var txt = g.querySelector("text"), name = fullName(g), n = Math.floor(w / cw);
    if (n < 3) { txt.textContent = ""; return; }
    txt.textContent = name.length <= n ? name : name.substring(0, n - 2) + "..";
  }
  function place(g, x, w) {
    var r = g.querySelector("rect"), t = g.querySelector("text");
    r.setAttribute("x", (pad + x).toFixed(2)); r.setAttribute("width", w.toFixed(2));
    t.setAttribute("x", (pad + x + 3).toFixed(2)); fit(g, w);
  }
  function zoom(g) {
    var zx = attr(g, "data-x"), zw = attr(g, "data-w"), zd = attr(g, "data-d");
    var s = plotW / zw;
    zoomed = g;
    $("unzoom").classList.remove("hide");
    frames.forEach(function (f) {
      var x = attr(f, "data-x"), w = attr(f, "data-w"), d = attr(f, "data-d");
      f.classList.remove("parent"); f.classList.remove("hide");
      if (d < zd && x <= zx && x + w >= zx + zw) {
        f.classList.add("parent"); place(f, 0, plotW);
      } else if (d >= zd && x >= zx && x + w <= zx + zw) {
        place(f, (x - zx) * s, w * s);
      } else {
        f.classList.add("hide");
      }
    });
  }
  function unzoom() {
    zoomed = null;
    $("unzoom").classList.add("hide");
    var s = plotW / total;
    frames.forEach(function (f) {
      f.classList.remove("parent"); f.classList.remove("hide");
      place(f, attr(f, "data-x") * s, attr(f, "data-w") * s);
    });
  }
  // "Matched: NN%" ends a gap left of the Search button, whatever that one says now.
  function placeMatched() {
    var search = $("search"), x;
    try { x = search.getBBox().x; } catch (e) { x = attr(search, "x") - 90; }
    $("matched").setAttribute("x", (x - GAP).toFixed(1));
  }
  // Fit the graph to the window it is shown in: width, title, legend rows, frames.
  function layout() {
    var W = Math.max(Math.floor(window.innerWidth || attr(svg, "width")), MIN_WIDTH);
    plotW = W - 2 * pad;
    ["title", "subtitle"].forEach(function (id) {
      $(id).setAttribute("x", (W / 2).toFixed(0));
      fitText($(id), full[id], W - 2 * pad);
    });
    $("search").setAttribute("x", W - pad);
    var x = pad, row = 0;
    legends.forEach(function (g) {
      var w = boxWidth(g, 80);
      if (x > pad && x + w > W - pad) { row += 1; x = pad; }
      var y = LEGEND_Y + row * LEGEND_ROW;
      g.setAttribute("transform", "translate(" + x.toFixed(0) + "," + y + ")");
      x += w + GAP;
    });
    var shift = LEGEND_Y + row * LEGEND_ROW + 12 - top0, H = height0 + shift;
    $("frames").setAttribute("transform", "translate(0," + shift + ")");
    $("details").setAttribute("y", H - 12);
    [svg, $("background")].forEach(function (el) {
      el.setAttribute("width", W); el.setAttribute("height", H);
    });
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    placeMatched();
    if (zoomed) zoom(zoomed); else unzoom();
  }
  function search(term) {
    var matched = $("matched");
    frames.forEach(function (f) { f.classList.remove("match"); });
    if (!term) {
      matched.textContent = "";
      $("search").textContent = "Search";
      placeMatched();
      return;
    }
    $("search").textContent = "Reset Search";
    placeMatched();
    var re;
    try { re = new RegExp(term); } catch (e) { matched.textContent = "bad regex"; return; }
    // Count each sample once: keep only matches not inside another match.
    var spans = [];
    frames.forEach(function (f) {
      if (attr(f, "data-d") > 0 && re.test(fullName(f))) {
        f.classList.add("match");
        spans.push([attr(f, "data-x"), attr(f, "data-w")]);
      }
    });
    spans.sort(function (a, b) { return a[0] - b[0] || b[1] - a[1]; });
    var covered = 0, end = -1;
    spans.forEach(function (s) {
      if (s[0] >= end) { covered += s[1]; end = s[0] + s[1]; }
      else if (s[0] + s[1] > end) { covered += s[0] + s[1] - end; end = s[0] + s[1]; }
    });
    matched.textContent = "Matched: " + (100 * covered / total).toFixed(1) + "%";
  }
  window.addEventListener("load", function () {
    svg = document.documentElement;
    total = parseFloat(svg.getAttribute("data-total")) || 1;
    plotW = parseFloat(svg.getAttribute("data-plot-width"));
    pad = parseFloat(svg.getAttribute("data-pad"));
    top0 = parseFloat(svg.getAttribute("data-top"));
    height0 = parseFloat(svg.getAttribute("height"));
    LEGEND_Y = attr(svg, "data-legend-y");
    LEGEND_ROW = attr(svg, "data-legend-row");
    GAP = attr(svg, "data-gap");
    full.title = $("title").textContent;
    full.subtitle = $("subtitle").textContent;
    legends = Array.prototype.slice.call(document.querySelectorAll("g.legend"));
    frames = Array.prototype.slice.call(document.querySelectorAll("#frames > g"));
    var details = $("details");
    frames.forEach(function (g) {
      g.addEventListener("mouseover", function () {
        fitText(details, g.querySelector("title").textContent, plotW);
      });
      g.addEventListener("mouseout", function () { details.textContent = " "; });
      g.addEventListener("click", function () { zoom(g); });
    });
    $("unzoom").addEventListener("click", unzoom);
    $("search").addEventListener("click", function () {
      if ($("search").textContent !== "Search") { search(""); return; }
      search(window.prompt("Search for (regular expression):", ""));
    });
    window.addEventListener("keydown", function (e) {
      if (e.keyCode === 114 || ((e.ctrlKey || e.metaKey) && e.keyCode === 70)) {
        e.preventDefault(); search(window.prompt("Search for (regular expression):", ""));
      } else if (e.key === "Escape") { if (zoomed) unzoom(); }
    });
    window.addEventListener("resize", layout);
    layout();
  });
})();
"""
