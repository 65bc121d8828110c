"""The human-readable report of a run directory: a self-contained ``report/index.html`` (inline
CSS/JS, embedded PNGs, sortable tables, an image picker for the CAM gallery) and
``report/summary.md`` with the same readings and key tables. Entry point: `build_report`."""

from .build import build_report

__all__ = ["build_report"]
