"""Replication check (SPEC §9): the same experiment run twice with disjoint seed sets; the share
of (variant, metric) verdicts that agree."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..errors import AuglensError
from ..rundir import RunDir

#: the columns that identify one verdict in each summary table
KEYS = {"summary_a": ["method", "variant", "reference", "target", "metric"],
        "summary_b": ["method", "variant", "reference", "metric"]}


def _experiment(run: Path) -> dict:
    path = RunDir(run).experiment
    if not path.is_file():
        raise AuglensError(f"{run} is not a run directory (no experiment.json)")
    return json.loads(path.read_text())


def _summary(run: Path, name: str) -> pd.DataFrame | None:
    path = RunDir(run).table(name)
    if not path.is_file():
        return None
    try:
        return pd.read_parquet(path)
    except Exception as e:  # a damaged table: say which
        raise AuglensError(f"cannot read {path}: {e}; rerun `auglens run` on {run}") from None


def replicate(run_a: str | Path, run_b: str | Path) -> tuple[pd.DataFrame, dict[str, object]]:
    """Verdicts of two runs side by side → (table ``study, <keys>, verdict_a, verdict_b,
    agree``, summary ``{"agreement", "n", "by_study", "seeds_a", "seeds_b", "differences"}``).

    Compares Study A's verdicts on the final baseline for the predicted-class maps and Study B's
    verdicts on the final baseline (the noise floor and the baseline's own rows carry none).
    Both runs must share everything but the seeds (differences are listed) and use disjoint
    seeds."""
    run_a, run_b = Path(run_a), Path(run_b)
    ea, eb = _experiment(run_a), _experiment(run_b)
    sa, sb = set(ea.get("seeds", [])), set(eb.get("seeds", []))
    if sa & sb:
        raise AuglensError(f"the runs share seeds {sorted(sa & sb)}; a replication needs disjoint "
                           "seed sets, e.g. `auglens run --seeds 3,4,5 --out OTHER`")
    diffs = sorted(k for k in set(ea) | set(eb)
                   if k not in ("seeds", "name") and ea.get(k) != eb.get(k))
    frames = []
    for name, keys in KEYS.items():
        a, b = _summary(run_a, name), _summary(run_b, name)
        if a is None or b is None or "verdict" not in a or "verdict" not in b:
            continue
        sel = [a, b]
        for i, df in enumerate(sel):
            df = df[df.verdict.notna() & (df.reference == "final")]
            if "target" in df:
                df = df[df.target == "predicted"]
            sel[i] = df[keys + ["verdict"]]
        m = sel[0].merge(sel[1], on=keys, suffixes=("_a", "_b"))
        m.insert(0, "study", "A" if name == "summary_a" else "B")
        frames.append(m)
    if not frames:
        raise AuglensError(f"no verdicts to compare: {run_a} and {run_b} need "
                           "tables/summary_a.parquet or summary_b.parquet from `auglens run`")
    table = pd.concat(frames, ignore_index=True)
    table["agree"] = table.verdict_a == table.verdict_b
    by_study = table.groupby("study")["agree"].agg(["mean", "size"])
    summary = {"agreement": float(table.agree.mean()), "n": int(len(table)),
               "by_study": {s: {"agreement": float(r["mean"]), "n": int(r["size"])}
                            for s, r in by_study.iterrows()},
               "seeds_a": sorted(sa), "seeds_b": sorted(sb), "differences": diffs}
    return table, summary
