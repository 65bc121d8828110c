"""The report's inline stylesheet and script (no framework, no network)."""

CSS = """
:root { --fg: #1b1f24; --muted: #59636e; --line: #d0d7de; --bg-soft: #f6f8fa;
  --accent: #0b5fbf; --warn-bg: #fff8e1; --warn-line: #e0b000; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--fg); background: #fff; }
header, main, footer { max-width: 1200px; margin: 0 auto; padding: 0 16px; }
header { padding-top: 16px; }
h1 { font-size: 1.6em; margin: 0.3em 0; }
h2 { font-size: 1.3em; margin: 1.6em 0 0.4em; padding-top: 0.4em;
  border-top: 2px solid var(--line); }
h3 { font-size: 1.08em; margin: 1.2em 0 0.3em; }
nav ul { list-style: none; padding: 0; margin: 0.5em 0; display: flex; flex-wrap: wrap;
  gap: 4px 14px; }
nav a { color: var(--accent); text-decoration: none; }
nav a:hover { text-decoration: underline; }
.reading { background: var(--bg-soft); border-left: 4px solid var(--accent); padding: 8px 12px;
  margin: 0.6em 0; }
.missing { background: var(--warn-bg); border-left: 4px solid var(--warn-line); padding: 8px 12px;
  margin: 0.6em 0; }
.note { color: var(--muted); font-size: 0.9em; margin: 0.3em 0; }
code { background: var(--bg-soft); padding: 0 3px; border-radius: 3px; font-size: 0.92em; }
img { max-width: 100%; height: auto; }
figure { margin: 0.8em 0; }
figcaption { color: var(--muted); font-size: 0.9em; }
.table-wrap { overflow-x: auto; max-width: 100%; margin: 0.5em 0; }
table { border-collapse: collapse; font-size: 0.9em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: right; white-space: nowrap; }
th { background: var(--bg-soft); cursor: pointer; user-select: none; position: relative; }
th.text, td.text { text-align: left; }
th[aria-sort="ascending"]::after { content: " \\25B2"; font-size: 0.75em; }
th[aria-sort="descending"]::after { content: " \\25BC"; font-size: 0.75em; }
td.nan { color: #b03a2e; }
tr.floor td { background: #eef1f4; font-style: italic; }
details { margin: 0.5em 0; }
summary { cursor: pointer; color: var(--accent); }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 0.5em 0; }
dl.facts dt { font-weight: 600; }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
.gallery-controls { display: flex; flex-wrap: wrap; gap: 8px; align-items: center;
  margin: 0.5em 0; }
.gallery-controls select { font-size: 1em; padding: 4px; max-width: 100%; }
.gallery-controls button { font-size: 1em; padding: 4px 10px; }
.cam-row { display: grid; grid-template-columns: repeat(auto-fill, minmax(104px, 1fr)); gap: 8px;
  margin: 0.4em 0 1em; }
.cam-cell { margin: 0; text-align: center; font-size: 0.8em; }
.cam-cell img { width: 100%; image-rendering: pixelated; border: 1px solid var(--line); }
.cam-cell figcaption { overflow-wrap: anywhere; }
footer { color: var(--muted); font-size: 0.85em; padding: 2em 16px; }
@media (max-width: 600px) {
  body { font-size: 14px; }
  h1 { font-size: 1.3em; }
  .cam-row { grid-template-columns: repeat(3, 1fr); }
  dl.facts { grid-template-columns: 1fr; }
  dl.facts dd { margin-bottom: 4px; }
}
"""

JS = r"""
(function () {
  "use strict";
  function key(td) {
    if (!td) return { nan: true, num: NaN, text: "" };
    var raw = td.hasAttribute("data-v") ? td.getAttribute("data-v") : td.textContent.trim();
    if (raw === "" || raw === "NaN" || raw === "nan") return { nan: true, num: NaN, text: raw };
    var num = Number(raw);
    return { nan: false, num: num, text: raw };
  }
  function compare(a, b, numeric) {
    if (a.nan || b.nan) return a.nan === b.nan ? 0 : (a.nan ? 1 : -1);
    if (numeric) return a.num - b.num;
    return a.text.localeCompare(b.text, undefined, { numeric: true });
  }
  function sortTable(table, col) {
    var th = table.tHead.rows[0].cells[col];
    var asc = th.getAttribute("aria-sort") !== "ascending";
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var keys = rows.map(function (r, i) { return { row: r, k: key(r.cells[col]), i: i }; });
    var numeric = keys.every(function (x) { return x.k.nan || !isNaN(x.k.num); });
    keys.sort(function (x, y) {
      var c = compare(x.k, y.k, numeric);
      if (!(x.k.nan || y.k.nan) && !asc) c = -c;
      return c !== 0 ? c : x.i - y.i;
    });
    keys.forEach(function (x) { body.appendChild(x.row); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (c) {
      c.removeAttribute("aria-sort");
    });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    if (!table.tHead) return;
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.title = "click to sort";
      th.addEventListener("click", function () { sortTable(table, col); });
    });
  });
  document.querySelectorAll(".gallery").forEach(function (gallery) {
    var select = gallery.querySelector("select");
    var items = gallery.querySelectorAll(".gallery-item");
    function show(id) {
      items.forEach(function (el) { el.hidden = el.getAttribute("data-image") !== id; });
    }
    function step(d) {
      var n = select.options.length;
      select.selectedIndex = (select.selectedIndex + d + n) % n;
      show(select.value);
    }
    select.addEventListener("change", function () { show(select.value); });
    gallery.querySelectorAll("button[data-step]").forEach(function (b) {
      b.addEventListener("click", function () { step(Number(b.getAttribute("data-step"))); });
    });
    show(select.value);
  });
})();
"""
