"""The report's landing page as a person sees it: Debian's chromium, driven headless by playwright,
measured from the page's own geometry (element bounding boxes and what is drawn on top)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import ensure_debian_package

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Runs in the page. The answer = the landing text's paragraphs from the one opening with "Answer"
# up to the compact table, and the table. For each: its box (all scroll positions back at 0); for each line of its
# text (Range.getClientRects) and each table cell, the element drawn at 5 points (centre, corners
# inset by 2 px) after scrolling it into view: anything outside the landing text there covers the answer.
MEASURE = """
() => {
  const box = (e) => { const r = e.getBoundingClientRect();
    return {left: r.left + scrollX, top: r.top + scrollY, right: r.right + scrollX, bottom: r.bottom + scrollY}; };
  const prose = document.querySelector('.prose');
  const graph = document.querySelector('#rulegraph');
  const drawn = graph && graph.querySelector('svg, canvas');
  const root = prose.querySelector('.document') || prose;  // docutils wraps the page in div.document
  const kids = [...root.children];
  const start = kids.findIndex((e) => e.textContent.trim().startsWith('Answer'));
  const table = prose.querySelector('table');
  const end = kids.findIndex((e) => e.contains(table) || e === table);
  const answer = kids.slice(start, end + 1);
  const covered = [];
  const probe = (el, rects, what) => {
    for (const r of rects) {
      if (r.width < 4 || r.height < 4) continue;
      const pts = [[(r.left + r.right) / 2, (r.top + r.bottom) / 2], [r.left + 2, r.top + 2],
                   [r.right - 2, r.top + 2], [r.left + 2, r.bottom - 2], [r.right - 2, r.bottom - 2]];
      for (const [x, y] of pts) {
        if (x < 0 || y < 0 || x > innerWidth || y > innerHeight) { covered.push({what, x, y, by: 'outside the window'}); continue; }
        const hit = document.elementFromPoint(x, y);
        if (!hit || !prose.contains(hit)) covered.push({what, x, y, by: hit ? hit.tagName + '#' + hit.id + '.' + hit.className : null});
      }
    }
  };
  const top = () => { scrollTo(0, 0); for (const e of document.querySelectorAll('*')) if (e.scrollTop) e.scrollTop = 0; };
  for (const el of answer) {
    const cells = [...el.querySelectorAll('td, th, caption')];
    if (cells.length) {  // a table: each cell (and the caption) in view in turn
      for (const cell of cells) { cell.scrollIntoView({block: 'center'}); probe(cell, [cell.getBoundingClientRect()], cell.tagName); }
      continue;
    }
    el.scrollIntoView({block: 'center'});
    const range = document.createRange(); range.selectNodeContents(el);
    probe(el, [...range.getClientRects()], el.tagName + ' text');
  }
  top();
  return {
    width: innerWidth, height: innerHeight, start,
    prose: box(prose), table: box(table), graph: graph && box(graph), drawn: drawn && box(drawn),
    answer: answer.map(box), answer_text: answer.map((e) => e.textContent),
    rows: table.querySelectorAll('tr').length, covered,
    table_overflow: table.scrollWidth - table.clientWidth,
  };
}
"""


def chromium() -> str:
    """Debian's chromium (installed with apt when missing and possible; else the test skips)."""
    return shutil.which("chromium-browser") or ensure_debian_package("chromium", "chromium")


def landing_geometry(html: Path, width: int, profile: Path, screenshot: Path, height: int = 1000) -> dict:
    """Open ``html`` at ``width`` x ``height`` CSS px, wait for the workflow graph, save a full-page
    ``screenshot`` and return the measurements of :data:`MEASURE`."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="the layout test needs playwright (pip '.[dev]')")
    exe = chromium()
    with sync_api.sync_playwright() as p:
        try:
            ctx = p.chromium.launch_persistent_context(
                str(profile),  # a fresh --user-data-dir
                executable_path=exe,
                headless=True,
                args=CHROMIUM_FLAGS,
                viewport={"width": width, "height": height},
            )
        except sync_api.Error as exc:
            pytest.skip(f"chromium ({exe}) could not be launched here: {str(exc)[-300:]}")
        try:
            page = ctx.new_page()
            page.goto(html.as_uri())
            page.wait_for_selector(".prose table", timeout=60_000)
            page.wait_for_selector("#rulegraph svg, #rulegraph canvas", timeout=60_000)
            page.wait_for_timeout(500)  # vega's layout settles after the element appears
            geometry = page.evaluate(MEASURE)  # ends with every scroll position back at the top
            page.screenshot(path=str(screenshot), full_page=True)
            return geometry
        finally:
            ctx.close()


def overlaps(a: dict, b: dict) -> bool:
    return min(a["right"], b["right"]) - max(a["left"], b["left"]) > 0.5 and (
        min(a["bottom"], b["bottom"]) - max(a["top"], b["top"]) > 0.5
    )


def check_landing_layout(g: dict) -> None:
    """The answer text and table: nothing drawn over them, clear of the workflow graph, and the
    table inside its column."""
    assert g["start"] >= 0 and g["answer"], "no answer paragraphs found from 'Answer' to the table"
    # the report centres its content in a window-high box: what is taller is cut off at the top, out of reach
    assert g["prose"]["top"] >= 0 and g["prose"]["bottom"] <= g["height"], f"landing text cut off: {g['prose']}"
    assert not g["covered"], f"something is drawn over the answer: {g['covered'][:5]}"
    for box in [*g["answer"], g["table"]]:
        for other in (g["graph"], g["drawn"]):
            assert other is None or not overlaps(box, other), (box, other)
    t, col = g["table"], g["prose"]
    assert col["left"] - 0.5 <= t["left"] and t["right"] <= col["right"] + 0.5, (t, col)  # fits its column
    assert g["table_overflow"] <= 0
