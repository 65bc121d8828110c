"""Study A comparisons: every augmented model vs the baseline of the same seed, image by image,
plus the seed noise floor (baseline vs baseline of another seed) and the CAM-target ablation.

Conventions: ``a`` = the other model's map, ``b`` = the reference map; Class-KLD is
KL(p_reference ‖ p_other) in nats. Maps are compared at feature resolution (as stored).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import ExperimentConfig
from ..errors import AuglensError
from ..explain.store import read_explanation
from ..metrics import compare_maps
from ..rundir import RunDir
from .study_a import noise_floor_pairs

#: Metrics computed by default for Study A (overlap expands to overlap@5/10/20).
STUDY_A_METRICS = (
    "mad",
    "msd",
    "pearson",
    "spearman",
    "overlap",
    "iou",
    "ssim",
    "com_shift",
    "class_kld",
)
TARGETS = {"predicted": "maps", "ground_truth": "maps_gt"}
COLUMNS = ["image_id", "variant", "seed", "reference", "target", "metric", "value"]


def _rows(res: dict[str, torch.Tensor], image_ids: np.ndarray, **fixed: object) -> pd.DataFrame:
    parts = []
    for metric, v in res.items():
        parts.append(
            pd.DataFrame(
                {
                    "image_id": image_ids,
                    "metric": metric,
                    "value": v.double().cpu().numpy(),
                    **fixed,
                }
            )
        )
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)


def _compare(a: dict, b: dict, key: str, metrics: tuple[str, ...], ys: tuple[float, ...]) -> dict:
    if a[key].shape != b[key].shape:
        raise AuglensError(
            f"map shapes differ: {tuple(a[key].shape)} vs {tuple(b[key].shape)}; "
            "compare models explained at the same layer resolution"
        )
    if not torch.equal(a["image_ids"], b["image_ids"]):
        raise AuglensError("explanations cover different test images; re-run `auglens explain`")
    return compare_maps(
        a[key].float(), b[key].float(), metrics, ys, a_logits=a["logits"], b_logits=b["logits"]
    )


def similarity_table(
    exp: ExperimentConfig,
    run_dir: str | Path,
    method: str = "gradcam",
    metrics: tuple[str, ...] = STUDY_A_METRICS,
    ys: tuple[float, ...] = (5, 10, 20),
    targets: tuple[str, ...] = ("predicted", "ground_truth"),
    matching: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Tidy rows ``image_id, variant, seed, reference, target, metric, value`` (one per image,
    comparison and metric); ``reference`` is ``baseline`` (the final baseline of the same seed),
    ``matched_baseline`` (the baseline checkpoint of the same seed named by ``matching``, see
    `auglens.train.matching.matching_table`) or ``baseline_seed_<k>`` (noise floor). Cells left
    out of the run (``analysis.exclude``) and seeds without a baseline are skipped."""

    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)

    def load(variant: str, seed: int, epoch: int | None = None) -> dict:
        return read_explanation(run.explanation(method, variant, seed, epoch))[0]

    present = {(v, s) for v, s, _ in exp.cells()}
    frames = []
    base = {s: load(exp.baseline, s) for s in exp.seeds if (exp.baseline, s) in present}
    matched = {} if matching is None else {
        (r.variant, int(r.seed)): None if r.same_as_final else int(r.baseline_epoch)
        for r in matching.itertuples()}
    for seed in base:
        for variant in exp.variants:
            if variant == exp.baseline or (variant, seed) not in present:
                continue
            other = load(variant, seed)
            refs = [("baseline", base[seed])]
            if (variant, seed) in matched:
                epoch = matched[(variant, seed)]
                refs.append(("matched_baseline",
                             base[seed] if epoch is None else load(exp.baseline, seed, epoch)))
            for reference, ref in refs:
                for target in targets:
                    res = _compare(other, ref, TARGETS[target], metrics, ys)
                    frames.append(_rows(res, other["image_ids"].numpy(), variant=variant,
                                        seed=seed, reference=reference, target=target))
    for i, j in noise_floor_pairs(list(base)):
        for target in targets:
            res = _compare(base[i], base[j], TARGETS[target], metrics, ys)
            frames.append(
                _rows(
                    res,
                    base[i]["image_ids"].numpy(),
                    variant=exp.baseline,
                    seed=i,
                    reference=f"baseline_seed_{j}",
                    target=target,
                )
            )
    df = pd.concat(frames, ignore_index=True)[COLUMNS] if frames else pd.DataFrame(columns=COLUMNS)
    for col in ("variant", "reference", "target", "metric"):
        df[col] = df[col].astype("category")
    return df


def target_ablation_table(
    exp: ExperimentConfig,
    run_dir: str | Path,
    method: str = "gradcam",
    metrics: tuple[str, ...] = ("pearson", "spearman", "overlap"),
    ys: tuple[float, ...] = (10,),
) -> pd.DataFrame:
    """Each model's ground-truth-class map vs its predicted-class map (they differ only on
    misclassified images): ``image_id, variant, seed, correct, metric, value``."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    frames = []
    for variant, seed, _ in exp.cells():
        ex = read_explanation(run.explanation(method, variant, seed))[0]
        res = compare_maps(ex["maps_gt"].float(), ex["maps"].float(), metrics, ys)
        f = _rows(res, ex["image_ids"].numpy(), variant=variant, seed=seed)
        n_metrics = len(res)
        f["correct"] = np.tile((ex["targets"] == ex["labels"]).numpy(), n_metrics)
        frames.append(f)
    return pd.concat(frames, ignore_index=True)[
        ["image_id", "variant", "seed", "correct", "metric", "value"]
    ]
