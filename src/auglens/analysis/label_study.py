"""The label-mixing study: does the loss of alignment / faithfulness under mixed-sample training
come from mixing the images or from mixing the labels? (``presets/label-mixing.yaml``)

The run's variants must cross image mixing with the label treatment (`crossing`, read from the
variant configs, not their names):

- image mixing ``none`` (no mixed-sample augmentation) or a mixing augmentation with a
  ``label_mixing`` parameter (mixup, CutMix, SaliencyMix, FMix, ResizeMix); variants of the same
  augmentation with different parameters (other than ``label_mixing``) are different mixings;
- labels ``hard`` (``label_mixing: false``, or no mixing), ``mixed`` (``label_mixing: true``) or
  ``smoothed`` (hard labels followed by the ``label_smoothing`` augmentation);
- the baseline is none × hard; a variant with any other augmentation, or with mixed *and*
  smoothed labels, is not part of the crossing. If two variants land on the same (mixing,
  labels), the first in the file is used.

The study is active when at least one mixing has all three label treatments. Per mixing, from
Study B's per-image table (``tables/interpretability.parquet``), the seed-level differences
(`auglens.analysis.run_b.pair_differences`: two-way seed × image bootstrap, paired resamples, t
interval, verdict) of the effects in `EFFECTS`. Each arm's expected mean label entropy (nats) is
recorded, so that the smoothed arm can be checked against the mixed one
(`auglens.augment.label_entropy`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..augment import AUGMENTATIONS, build_augmentation
from ..augment.label_entropy import expected_mixed_entropy
from ..augment.labels import smoothed_entropy
from ..augment.mixing import _BetaMix
from ..config import ExperimentConfig
from ..rundir import RunDir, write_table
from .controls import RANDOM_METHOD
from .inference import Settings
from .run_b import pair_differences

#: effect → what it compares (the difference is the first arm minus the second)
EFFECTS = {
    "total": "mixed labels vs the baseline (the whole change)",
    "image_mixing": "image mixing with hard labels vs the baseline",
    "labels": "mixed vs hard labels, same image mixing",
    "softness": "hard labels smoothed to the mixed labels' entropy vs hard labels",
}
#: Study B metrics of the study, each "higher = more aligned / more faithful"
STUDY_METRICS = ("energy_pointing_game", "effective_heat_ratio", "delta_del", "delta_ins",
                 "lerf_morf_del", "lerf_morf_ins", "road_lerf_morf")
NONE = "none"
COLUMNS = ["mixing", "effect", "a", "b", "method", "metric", "mean_a", "mean_b", "diff",
           "diff_low", "diff_high", "n_seeds", "verdict", "provisional", "entropy_a",
           "entropy_b"]


@dataclass(frozen=True)
class Arm:
    """One variant's place in the crossing: ``mixing`` (``none`` or the augmentation's name,
    with its parameters where several settings of it occur), ``labels`` (hard / mixed /
    smoothed) and the expected mean label ``entropy`` in nats (NaN when unknown)."""

    variant: str
    mixing: str
    labels: str
    entropy: float


def _mixes_labels(name: str) -> bool:
    return AUGMENTATIONS.describe(name)["params"].get("label_mixing") is True


def _classify(spec: list[dict[str, Any]], num_classes: int | None,
              batch_size: int | None) -> tuple[str, dict[str, Any], str, float] | None:
    """(mixing name, its parameters without label_mixing, labels, entropy) or None if ``spec``
    is not part of the crossing."""
    mixers = [i for i, a in enumerate(spec) if _mixes_labels(a["name"])]
    smooth = [i for i, a in enumerate(spec) if a["name"] == "label_smoothing"]
    if len(mixers) + len(smooth) != len(spec) or len(mixers) > 1 or len(smooth) > 1:
        return None
    if mixers and smooth and smooth[0] < mixers[0]:
        return None
    s_entropy = 0.0
    if smooth:
        ls = build_augmentation([spec[smooth[0]]])
        s_entropy = (ls.p * smoothed_entropy(ls.epsilon_for(num_classes), num_classes)
                     if num_classes else math.nan)
    if not mixers:
        return NONE, {}, "smoothed" if smooth else "hard", s_entropy
    item = spec[mixers[0]]
    aug = build_augmentation([item])
    params = {k: v for k, v in item.items() if k not in ("name", "label_mixing")}
    if aug.label_mixing:
        if smooth:
            return None
        entropy = (expected_mixed_entropy(aug.alpha, aug.p, num_classes, batch_size)
                   if isinstance(aug, _BetaMix) and num_classes else math.nan)
        return item["name"], params, "mixed", entropy
    return item["name"], params, "smoothed" if smooth else "hard", s_entropy


def crossing(exp: ExperimentConfig, num_classes: int | None = None) -> list[Arm]:
    """The variants that take part in the crossing (module docstring), in file order, or [] when
    the run does not follow it (no baseline none × hard, or no mixing with all three label
    treatments). ``num_classes``: for the entropies (None: NaN)."""
    batch = exp.train.batch_size
    found: list[tuple[str, str, dict[str, Any], str, float]] = []
    for variant, spec in exp.variants.items():
        c = _classify(spec, num_classes, batch)
        if c is not None:
            found.append((variant, *c))
    settings: dict[str, list[str]] = {}
    for _, name, params, _, _ in found:
        key = json.dumps(params, sort_keys=True, default=str)
        if key not in settings.setdefault(name, []):
            settings[name].append(key)
    arms: dict[tuple[str, str], Arm] = {}
    for variant, name, params, labels, entropy in found:
        mixing = name
        if len(settings[name]) > 1 and params:
            mixing += "(" + ", ".join(f"{k}={v}" for k, v in sorted(params.items())) + ")"
        arms.setdefault((mixing, labels), Arm(variant, mixing, labels, entropy))
    base = arms.get((NONE, "hard"))
    if base is None or base.variant != exp.baseline:
        return []
    mixings = {m for m, _ in arms if m != NONE}
    if not any(all((m, lab) in arms for lab in ("hard", "mixed", "smoothed")) for m in mixings):
        return []
    return list(arms.values())


def effect_pairs(arms: list[Arm]) -> list[tuple[str, str, Arm, Arm]]:
    """(mixing, effect, arm a, arm b) for every effect of `EFFECTS` whose two arms exist;
    mixings in file order, ``none`` (its softness effect only) first."""
    by = {(a.mixing, a.labels): a for a in arms}
    base = by[(NONE, "hard")]
    out = []
    for mixing in dict.fromkeys([NONE] + [a.mixing for a in arms]):
        hard = base if mixing == NONE else by.get((mixing, "hard"))
        mixed, smooth = by.get((mixing, "mixed")), by.get((mixing, "smoothed"))
        for effect, a, b in (("total", mixed, base), ("image_mixing", hard, base),
                             ("labels", mixed, hard), ("softness", smooth, hard)):
            if a is not None and b is not None and a is not b:
                out.append((mixing, effect, a, b))
    return out


def label_study_table(per_image: pd.DataFrame, arms: list[Arm],
                      settings: Settings | None = None,
                      metrics: tuple[str, ...] = STUDY_METRICS) -> pd.DataFrame:
    """One row per (mixing, effect, method, metric) with the columns `COLUMNS`: the seed-level
    difference a − b (``diff`` with its CI ``diff_low``/``diff_high``; > 0 = a is more aligned /
    faithful) and the expected mean label entropy of each arm. ``per_image``: Study B's
    ``image_id, variant, seed, method, metric, value`` (the ``random`` control is left out)."""
    pairs = effect_pairs(arms)
    rows = per_image[(per_image.method != RANDOM_METHOD) & per_image.metric.isin(metrics)]
    if not pairs or rows.empty:
        return pd.DataFrame(columns=COLUMNS)
    labels = {f"{i}": p for i, p in enumerate(pairs)}
    diffs = pair_differences(rows, [(k, a.variant, b.variant) for k, (_, _, a, b) in
                                    labels.items()], settings)
    if diffs.empty:
        return pd.DataFrame(columns=COLUMNS)
    info = pd.DataFrame([{"label": k, "mixing": m, "effect": e, "entropy_a": a.entropy,
                          "entropy_b": b.entropy, "order": int(k)}
                         for k, (m, e, a, b) in labels.items()])
    out = diffs.merge(info, on="label")
    rank = {m: i for i, m in enumerate(metrics)}
    out["metric_order"] = out.metric.map(rank)
    out = out.sort_values(["order", "method", "metric_order"], kind="stable")
    return out[COLUMNS].reset_index(drop=True)


def _num_classes(exp: ExperimentConfig, run: RunDir) -> int | None:
    """K from the logits of the first baseline explanation (no dataset load), else None."""
    from safetensors import safe_open

    seed = next((s for v, s, _ in exp.cells() if v == exp.baseline), None)
    if seed is None:
        return None
    path = run.explanation(exp.explain.methods[0], exp.baseline, seed)
    if not path.is_file():
        return None
    with safe_open(str(path), "pt") as f:
        return int(f.get_slice("logits").get_shape()[1])


def analyse_label_study(exp: ExperimentConfig, run_dir: str | Path) -> dict[str, Path]:
    """``tables/label_study.parquet`` from ``tables/interpretability.parquet`` when the run's
    variants follow the crossing (else nothing is written: {})."""
    run = RunDir(run_dir)
    arms = crossing(exp, _num_classes(exp, run))
    if not arms:
        return {}
    per_image = pd.read_parquet(run.table("interpretability"))
    a = exp.analysis
    table = label_study_table(per_image, arms, Settings(a.n_boot, a.level, a.margin, a.seed,
                                                        a.power))
    return {"label_study": write_table(table, run.table("label_study"),
                                       extra={"effects": json.dumps(EFFECTS)})}


def decompose(table: pd.DataFrame, method: str, metric: str) -> pd.DataFrame:
    """Per mixing (one ``method`` and ``metric`` of a `label_study_table`): the total change and
    where it comes from. Columns: ``mixing``; ``<effect>``, ``<effect>_low``, ``<effect>_high``
    for each effect of `EFFECTS` (NaN where absent); ``change``: ``loss`` / ``gain`` when the
    total's CI lies below / above 0, else ``none``; ``source``: ``image mixing`` / ``label
    mixing`` / ``both`` (the parts whose CIs exclude 0 in the direction of the change),
    ``neither alone`` (the change is resolved, its parts are not), or ``—`` (no change)."""
    sub = table[(table.method == method) & (table.metric == metric)]
    rows = []
    for mixing, g in sub.groupby("mixing", sort=False):
        row: dict[str, Any] = {"mixing": mixing}
        for effect in EFFECTS:
            row |= {effect: math.nan, f"{effect}_low": math.nan, f"{effect}_high": math.nan}
        for r in g.itertuples():
            row |= {r.effect: r.diff, f"{r.effect}_low": r.diff_low,
                    f"{r.effect}_high": r.diff_high}
        sign = _sign(row, "total")
        row["change"] = {-1: "loss", 1: "gain", 0: "none"}[sign]
        parts = [name for eff, name in (("image_mixing", "image mixing"),
                                        ("labels", "label mixing"))
                 if sign != 0 and _sign(row, eff) == sign]
        row["source"] = ("—" if sign == 0 else "both" if len(parts) == 2 else
                         parts[0] if parts else "neither alone")
        rows.append(row)
    return pd.DataFrame(rows)


def _sign(row: dict[str, Any], effect: str) -> int:
    """+1 / −1 when the effect's CI lies above / below 0, else 0 (also when it is missing)."""
    lo, hi = row.get(f"{effect}_low", math.nan), row.get(f"{effect}_high", math.nan)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return 0
    return 1 if lo > 0 else -1 if hi < 0 else 0
