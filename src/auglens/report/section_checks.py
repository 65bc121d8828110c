"""Sanity-checks section (SPEC §11): does each attribution method depend on the model's
parameters and on the explained class? The cascading-randomisation verdicts, the random-logit
test and the cascade plot; the random-map chance levels are shown next to the values they
belong to (Study A's ``random_map`` rows, Study B's ``random`` rows)."""

from __future__ import annotations

import pandas as pd

from .gallery import METHOD_NAMES
from .html import Section, fmt, path_png
from .load import Run


def _per_method(verdicts: pd.DataFrame) -> pd.DataFrame:
    """One row per method: the verdict over the checked cells and the numbers behind it."""
    rows = []
    for method, g in verdicts.groupby("method", sort=False):
        n_fail = int(g.fails.astype(bool).sum())
        rows.append({
            "method": method,
            "cells checked": len(g),
            "verdict": "FAILS" if n_fail * 2 > len(g) else ("mixed" if n_fail else "passes"),
            f"ρ after top group ({g.group.iloc[0]})": float(g.similarity.mean()),
            "ρ random maps": float(g.control.mean()),
            "ρ all randomised": float(g.all_randomised.mean()),
            "ρ all randomised, shuffled": float(g.all_randomised_shuffled.mean()),
            "ρ random logit": float(g.random_logit.mean()) if "random_logit" in g else None,
        })
    return pd.DataFrame(rows)


def sanity_section(run: Run) -> Section:
    """The randomisation check per method (table, reading) and the cascade plot."""
    sec = Section("sanity", "Sanity checks of the explanation methods")
    verdicts = run.required(sec, "sanity_verdicts", (
        "The sanity checks (cascading model-parameter randomisation, random-logit test) have not "
        "been run for this run directory."))
    if verdicts is None:
        return sec
    per = _per_method(verdicts)
    margin = fmt(float(verdicts.margin.iloc[0]), 2)
    sec.table(per, "Cascading model-parameter randomisation (Adebayo et al. 2018): Spearman ρ of "
              "each method's absolute maps to the original model's after re-initialising the "
              "parameter groups from the output down (mean over images and checked cells). A "
              f"method FAILS when ρ after the top group exceeds the random-map ρ by more than "
              f"{margin}. Random logit: ρ between the maps of the predicted and of a random "
              "other class (near 1 = the map barely depends on the class). Shuffled: the "
              "randomised model's map of another image — what is left of the architecture's "
              "spatial prior.", table_id="sanity-table")
    sec.table(verdicts, "Per cell and method", collapsed=True, md=False)
    png = path_png(run.path(run.p("sanity_cascade")))
    if png is None:
        sec.miss(run.reason(run.p("sanity_cascade")))
    else:
        sec.figure(png, "Similarity to the original maps as more groups are randomised (output "
                   "→ input); dotted: random-logit test and random maps", run.p("sanity_cascade"))
    failing = [METHOD_NAMES.get(m, m) for m in per.method[per.verdict != "passes"]]
    passing = [METHOD_NAMES.get(m, m) for m in per.method[per.verdict == "passes"]]
    text = []
    if passing:
        text.append(f"{', '.join(passing)} pass{'es' if len(passing) == 1 else ''} the "
                    "randomisation check: randomising the output layer already changes the maps "
                    "to near the random-map level.")
    if failing:
        text.append(f"{', '.join(failing)} fail{'s' if len(failing) == 1 else ''} (in at least "
                    "one checked cell): the maps stay similar after the output layer is "
                    "randomised, so they say little about what this model learned — weigh "
                    "their Study A and B results accordingly.")
    sec.reading = " ".join(text)
    return sec
