"""Small pieces every benchmark shares: paired ratios, the ratio table, writing the result."""

from __future__ import annotations

import statistics
from pathlib import Path


def paired_ratio(t: dict[str, list[float]], num: str, den: str) -> float:
    """Median over repetitions of ``t[num][i] / t[den][i]`` (ways timed in the same repetition,
    so that load drifts cancel); repetitions where only one way ran are left out."""
    return statistics.median(a / b for a, b in zip(t[num], t[den], strict=False))


def ratio_table(results: dict[str, dict], ratios: list[tuple[str, str, str, str]]) -> list[str]:
    """Markdown rows: one per (label, numerator way, denominator way, target), a wall (bold) and
    a CPU column per result in ``results`` (each with ``wall`` / ``cpu`` way → seconds lists)."""
    rows = [
        "| ratio | target | " + " | ".join(f"{n} wall | {n} CPU" for n in results) + " |",
        "|---|---|" + "---|---|" * len(results),
    ]
    for label, num, den, target in ratios:
        cells = []
        for r in results.values():
            cells.append(f"**{paired_ratio(r['wall'], num, den):.2f}×**")
            cells.append(f"{paired_ratio(r['cpu'], num, den):.2f}×")
        rows.append(f"| {label} | {target} | " + " | ".join(cells) + " |")
    return rows


def write_result(text: str, out: Path) -> None:
    """Write the markdown result file (creating its folder) and print it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
