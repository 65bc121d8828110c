"""Assemble the report: every section into ``RUN/report/index.html`` (self-contained) and
``RUN/report/summary.md``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .. import __version__
from ..utils import atomic_path
from .html import Section, esc
from .load import Run
from .section_a import changed_section, study_a_section
from .section_b import study_b_section
from .section_checks import sanity_section
from .section_studies import studies_sections
from .sections import experiment_section, gallery_section, performance_section
from .static import CSS, JS

STATUS_TEXT = {"rendered": "", "partial": " (partly missing)", "missing": " (missing)"}


def build_sections(run: Run) -> list[Section]:
    """Every section, in page order."""
    changed, highlight = changed_section(run)
    return [
        experiment_section(run),
        performance_section(run),
        study_a_section(run),
        study_b_section(run),
        *studies_sections(run),
        sanity_section(run),
        changed,
        gallery_section(run, highlight),
    ]


def render_html(title: str, subtitle: str, sections: list[Section]) -> str:
    """The whole page: inline CSS and JS, no external resource."""
    nav = "".join(
        f'<li><a href="#{esc(s.id)}">{esc(s.title)}{esc(STATUS_TEXT[s.status])}</a></li>'
        for s in sections
    )
    body = "".join(s.render_html() for s in sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f'<header><h1>{esc(title)}</h1><p class="note">{esc(subtitle)}</p>'
        f'<nav aria-label="sections"><ul>{nav}</ul></nav></header>'
        f"<main>{body}</main>"
        '<footer>Tables sort when you click a column header. NaN = a value that could not be '
        "computed (e.g. a correlation of a constant map); NaNs are counted, never dropped."
        f"</footer><script>{JS}</script></body></html>\n"
    )


def render_md(title: str, subtitle: str, sections: list[Section]) -> str:
    """summary.md: the same readings and key tables."""
    parts = [f"# {title}", subtitle]
    parts += [s.render_md() for s in sections]
    return "\n\n".join(parts) + "\n"


def build_report(run_dir: str | Path) -> dict[str, Any]:
    """Write ``RUN_DIR/report/index.html`` and ``summary.md``.

    Returns ``html`` (index.html) and ``markdown`` (summary.md) paths, ``sections`` (id →
    ``rendered`` / ``partial`` / ``missing``), ``missing`` (id → list of reasons, only sections
    with something missing) and ``titles`` (id → heading).
    Raises `AuglensError` if ``run_dir`` is not a directory.
    """
    run = Run(run_dir)
    sections = build_sections(run)
    name = (run.experiment or {}).get("name") or run.dir.name
    title = f"auglens report: {name}"
    subtitle = (f"Run directory {run.dir.resolve()} · generated "
                f"{time.strftime('%Y-%m-%d %H:%M')} by auglens {__version__}")
    out = run.dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    index, summary = out / "index.html", out / "summary.md"
    with atomic_path(index) as tmp:
        tmp.write_text(render_html(title, subtitle, sections), encoding="utf-8")
        tmp.chmod(0o644)
    with atomic_path(summary) as tmp:
        tmp.write_text(render_md(title, subtitle, sections), encoding="utf-8")
        tmp.chmod(0o644)
    return {
        "html": index,
        "markdown": summary,
        "sections": {s.id: s.status for s in sections},
        "missing": {s.id: list(s.missing) for s in sections if s.missing},
        "titles": {s.id: s.title for s in sections},
    }
