"""HTML and Markdown building blocks: escaped text, number formatting, sortable tables, embedded
images, and `Section`, which collects both renderings of one report section."""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Cell:
    """A table cell shown as ``text`` but sorted (and NaN-counted) by ``value``."""

    text: str
    value: float


def esc(x: object) -> str:
    """HTML-escape ``str(x)`` (quotes included)."""
    return html.escape(str(x), quote=True)


def is_nan(v: object) -> bool:
    """True for float NaN (and numpy floating NaN)."""
    return isinstance(v, float | np.floating) and math.isnan(v)


def fmt(v: object, digits: int = 3) -> str:
    """Display text: NaN → "NaN", None/NA → "—", floats with ``digits`` decimals (|v| < 0.01 with
    3 significant digits), bools → yes/no, everything else ``str``."""
    if isinstance(v, Cell):
        return v.text
    if v is None or v is pd.NA or v is pd.NaT:
        return "—"
    if isinstance(v, bool | np.bool_):
        return "yes" if v else "no"
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        v = float(v)
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if v != 0 and abs(v) < 0.01:
            return f"{v:.3g}"
        return f"{v:.{digits}f}"
    return str(v)


def ci_cell(mean: float, lo: float, hi: float, digits: int = 3) -> Cell:
    """``mean [lo, hi]`` sorted by the mean."""
    return Cell(f"{fmt(mean, digits)} [{fmt(lo, digits)}, {fmt(hi, digits)}]", float(mean))


def _sort_value(v: object) -> str | None:
    if isinstance(v, Cell):
        return "NaN" if math.isnan(v.value) else repr(float(v.value))
    if isinstance(v, bool | np.bool_):
        return "1" if v else "0"
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        return "NaN" if math.isnan(v) else repr(float(v))
    return None


def nan_counts(df: pd.DataFrame) -> dict[str, int]:
    """NaN count per column (float columns and `Cell` values), only columns with NaNs."""
    out = {}
    for col in df.columns:
        n = sum(1 for v in df[col] if is_nan(v) or (isinstance(v, Cell) and math.isnan(v.value)))
        if n:
            out[str(col)] = n
    return out


def nan_note(df: pd.DataFrame) -> str:
    """"NaN in this table: 3 values (r: 3)" or "" (plain text)."""
    counts = nan_counts(df)
    if not counts:
        return ""
    total = sum(counts.values())
    per = ", ".join(f"{c}: {n}" for c, n in counts.items())
    return f"NaN in this table: {total} value{'s' if total != 1 else ''} ({per})."


def table_html(
    df: pd.DataFrame, digits: int = 3, floor: str | None = None, table_id: str | None = None
) -> str:
    """A sortable table (click a header); rows whose first column equals ``floor`` are marked."""
    text_cols = [
        c for c in df.columns
        if not any(_sort_value(v) is not None for v in df[c] if v is not None)
    ]
    text_attr = ' class="text"'
    head = "".join(
        f'<th scope="col"{text_attr if c in text_cols else ""}>{esc(c)}</th>' for c in df.columns
    )
    rows = []
    for rec in df.itertuples(index=False):
        cells = []
        for c, v in zip(df.columns, rec, strict=True):
            key = _sort_value(v)
            cls = ["text"] if c in text_cols else []
            if key == "NaN":
                cls.append("nan")
            attrs = f' class="{" ".join(cls)}"' if cls else ""
            attrs += f' data-v="{esc(key)}"' if key is not None else ""
            cells.append(f"<td{attrs}>{esc(fmt(v, digits))}</td>")
        first = rec[0] if len(rec) else None
        tr = '<tr class="floor">' if floor is not None and first == floor else "<tr>"
        rows.append(tr + "".join(cells) + "</tr>")
    tid = f' id="{esc(table_id)}"' if table_id else ""
    note = nan_note(df)
    out = (
        f'<div class="table-wrap"><table class="sortable"{tid}><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )
    return out + (f'<p class="note nan-note">{esc(note)}</p>' if note else "")


def table_md(df: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table (``|`` in cells escaped), plus the NaN note."""

    def cell(v: object) -> str:
        return fmt(v, digits).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in df.columns) + " |"]
    lines.append("|" + "|".join("---" for _ in df.columns) + "|")
    lines += ["| " + " | ".join(cell(v) for v in rec) + " |" for rec in df.itertuples(index=False)]
    note = nan_note(df)
    return "\n".join(lines) + (f"\n\n{note}" if note else "")


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,…`` for PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def img_html(png: bytes, alt: str, cls: str = "") -> str:
    """An ``<img>`` with the PNG embedded (the page needs no other file)."""
    c = f' class="{esc(cls)}"' if cls else ""
    return f'<img{c} src="{data_uri(png)}" alt="{esc(alt)}" loading="eager">'


@dataclass
class Section:
    """One report section: its HTML and Markdown bodies, and what could not be shown and why."""

    id: str
    title: str
    reading: str = ""
    html: list[str] = field(default_factory=list)
    md: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    shown: int = 0

    def sub(self, title: str) -> None:
        """A sub-heading."""
        self.html.append(f"<h3>{esc(title)}</h3>")
        self.md.append(f"### {title}")

    def text(self, text: str, md: bool = True) -> None:
        """A plain note paragraph."""
        self.html.append(f'<p class="note">{esc(text)}</p>')
        if md:
            self.md.append(text)

    def facts(self, items: list[tuple[str, str]]) -> None:
        """A definition list of (label, value)."""
        body = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items)
        self.html.append(f'<dl class="facts">{body}</dl>')
        self.md.append("\n".join(f"- **{k}**: {v}" for k, v in items))
        self.shown += 1

    def table(
        self,
        df: pd.DataFrame,
        caption: str = "",
        digits: int = 3,
        floor: str | None = None,
        collapsed: bool = False,
        md: bool = True,
        table_id: str | None = None,
    ) -> None:
        """A sortable table (in a closed <details> when ``collapsed``), and in Markdown."""
        body = table_html(df, digits, floor, table_id)
        cap = f'<p class="note">{esc(caption)}</p>' if caption else ""
        if collapsed:
            self.html.append(f"<details><summary>{esc(caption or 'table')}</summary>{body}"
                             "</details>")
        else:
            self.html.append(cap + body)
        if md:
            self.md.append((f"{caption}\n\n" if caption else "") + table_md(df, digits))
        self.shown += 1

    def figure(self, png: bytes, caption: str, source: str = "", collapsed: bool = False) -> None:
        """An embedded PNG with a caption (``source``: where it came from), optionally inside a
        closed <details>."""
        src = f" ({source})" if source else ""
        fig = (f"<figure>{img_html(png, caption)}<figcaption>{esc(caption + src)}</figcaption>"
               "</figure>")
        if collapsed:
            fig = f"<details><summary>{esc(caption)}</summary>{fig}</details>"
        self.html.append(fig)
        if source:
            self.md.append(f"Figure: {caption} — `{source}`")
        self.shown += 1

    def raw(self, fragment: str, shown: bool = True) -> None:
        """An HTML fragment built (and escaped) by the caller; HTML only."""
        self.html.append(fragment)
        self.shown += int(shown)

    def miss(self, reason: str) -> None:
        """Record and show why a part of this section is missing."""
        if reason not in self.missing:
            self.missing.append(reason)
        self.html.append(f'<p class="missing">Not shown: {esc(reason)}</p>')
        self.md.append(f"> Not shown: {reason}")

    @property
    def status(self) -> str:
        """``rendered`` (all parts), ``partial`` (some parts missing) or ``missing``."""
        if not self.shown:
            return "missing"
        return "partial" if self.missing else "rendered"

    def render_html(self) -> str:
        """The section as ``<section>`` with heading, reading and body."""
        reading = f'<p class="reading">{esc(self.reading)}</p>' if self.reading else ""
        return (
            f'<section id="{esc(self.id)}"><h2>{esc(self.title)}</h2>{reading}'
            + "".join(self.html)
            + "</section>"
        )

    def render_md(self) -> str:
        """The section in Markdown."""
        parts = [f"## {self.title}"]
        if self.reading:
            parts.append(self.reading)
        return "\n\n".join(parts + self.md)


def path_png(path: Path) -> bytes | None:
    """The bytes of a PNG file, or None if it is missing or not a PNG."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return data if data[:8] == b"\x89PNG\r\n\x1a\n" else None


def records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts."""
    return df.to_dict("records")
