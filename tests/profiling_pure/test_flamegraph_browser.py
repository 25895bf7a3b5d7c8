"""The flame graph SVG in a real browser: Debian's chromium driven by playwright-core.

A graph rendered from a real recording (tests/profiling_pure/data), with a title as
long as the agent's, is opened at a narrow and a wide window. Its own script runs: a
search (through its `prompt` dialog) shows "Matched: NN%", and the header's boxes as
the browser lays them out (title, subtitle, Reset Zoom, Matched, Search, the legend)
must not overlap each other nor leave the window; a click on a frame zooms it to the
plot's width, Reset Zoom undoes it, Reset Search clears the match.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.profiling_pure import npm_tools
from tracecar_formats.collapse import CollapseOptions, collapse_text
from tracecar_formats.flamegraph import render_svg

DATA = Path(__file__).resolve().parent / "data"
WIDTHS = (400, 1600)

_DRIVER = r"""
const [playwrightDir, chromium, svgPath, widthsJson] = process.argv.slice(2);
const { chromium: launcher } = require(playwrightDir);
const boxes = (page) => page.evaluate(() => {
  const box = (el) => { const r = el.getBoundingClientRect();
                        return { x: r.left, y: r.top, w: r.width, h: r.height }; };
  const out = {};
  for (const id of ["title", "subtitle", "unzoom", "matched", "search"])
    out[id] = box(document.getElementById(id));
  document.querySelectorAll("g.legend").forEach((g, i) => { out["legend" + i] = box(g); });
  return out;
});
(async () => {
  const browser = await launcher.launch({
    executablePath: chromium,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"],
  });
  const results = {};
  try {
    for (const width of JSON.parse(widthsJson)) {
      const page = await browser.newPage({ viewport: { width, height: 700 } });
      page.on("dialog", (d) => d.accept("^(hot|cold)$"));
      await page.goto("file://" + svgPath);
      const r = { viewport: width };
      r.svgWidth = await page.evaluate(
        () => document.documentElement.getBoundingClientRect().width);
      await page.click("#search");
      r.matchedText = await page.textContent("#matched");
      r.searchText = await page.textContent("#search");
      r.matches = await page.locator("#frames g.match").count();
      r.boxes = await boxes(page);
      const title = page.locator("title", { hasText: /^profiled \(/ });
      const main = page.locator("#frames > g", { has: title });
      await main.locator("rect").click();
      r.zoomedWidth = parseFloat(await main.locator("rect").getAttribute("width"));
      r.unzoomVisible = await page.isVisible("#unzoom");
      r.zoomedBoxes = await boxes(page);
      await page.click("#unzoom");
      r.resetWidth = parseFloat(await main.locator("rect").getAttribute("width"));
      await page.click("#search");
      r.afterResetSearch = [await page.textContent("#matched"), await page.textContent("#search"),
                            await page.locator("#frames g.match").count()];
      results[width] = r;
      await page.close();
    }
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(results));
})().catch((e) => { console.error(e); process.exit(1); });
"""


def _overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return (
        a["x"] < b["x"] + b["w"]
        and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"]
        and b["y"] < a["y"] + a["h"]
    )


def _check_header(boxes: dict[str, dict[str, float]], width: int) -> None:
    shown = {k: b for k, b in boxes.items() if b["w"] > 0}  # Reset Zoom hides when unzoomed
    assert {"title", "subtitle", "matched", "search"} <= set(shown), boxes
    for name, b in shown.items():
        assert b["x"] >= 0 and b["x"] + b["w"] <= width, (name, b, width)
    names = sorted(shown)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not _overlap(shown[a], shown[b]), (a, shown[a], b, shown[b], width)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    playwright = npm_tools.ensure_playwright()
    stacks = collapse_text((DATA / "c-hotcold-fp.txt").read_bytes(), CollapseOptions(all=True))
    # The recording's stacks, under a root this test can find by name ("profiled" holds
    # the recording), plus a sibling so that a zoom hides something.
    stacks = {f"app;profiled;{s}": n for s, n in stacks.items()} | {"app;other": 5}
    title = "CPU profile of pid 4242 (burner) in container app of pod tracecar-demo-7f9c4d"
    subtitle = (
        "tracecar-demo-7f9c4d: 10.0 s at 99 Hz, dwarf call graphs, 1,980 samples, "
        "2026-12-02 14:00:00 UTC"
    )
    tmp = tmp_path_factory.mktemp("flamegraph")
    svg = tmp / "flame.svg"
    svg.write_text(render_svg(stacks, title=title, subtitle=subtitle))
    (tmp / "driver.js").write_text(_DRIVER)
    done = subprocess.run(
        [
            npm_tools.node(),
            str(tmp / "driver.js"),
            str(playwright),
            str(npm_tools.CHROMIUM),
            str(svg),
            json.dumps(WIDTHS),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = json.loads(done.stdout)
    return out


@pytest.mark.parametrize("width", WIDTHS)
def test_header_does_not_overlap_and_fits(results: dict[str, Any], width: int) -> None:
    r = results[str(width)]
    assert r["svgWidth"] == pytest.approx(width)  # the graph fits the window
    assert r["matchedText"].startswith("Matched: ") and r["matchedText"].endswith("%")
    assert r["searchText"] == "Reset Search" and r["matches"] > 0
    _check_header(r["boxes"], width)
    assert r["unzoomVisible"]
    _check_header(r["zoomedBoxes"], width)


@pytest.mark.parametrize("width", WIDTHS)
def test_click_zooms_and_resets(results: dict[str, Any], width: int) -> None:
    r = results[str(width)]
    plot_w = width - 20
    assert r["zoomedWidth"] == pytest.approx(plot_w)  # profiled fills the plot
    assert r["resetWidth"] < plot_w
    assert r["afterResetSearch"] == ["", "Search", 0]
