"""Chance levels (SPEC §11): the random-map control carried through Study A and Study B, and the
sanity checks (cascading model-parameter randomisation, random logit) of each attribution method.

- Study A: i.i.d. uniform maps at each method's feature resolution, seeded per image
  (`auglens.analysis.sanity.random_maps`), compared with the baseline's maps of every seed as if
  they came from a model → variant ``random_map`` in the similarity and summary tables.
- Study B: the same noise stored as the explanations of pseudo-method ``random`` of every
  baseline cell (`random_explanation`), scored by the evaluate stage like any method → method
  ``random`` in the Study B tables: the alignment and faithfulness a map gets by chance.
- Sanity: per cell and method, the cascade and the random-logit test on the first
  ``sanity.n_images`` test images (`sanity_cell`), summarised and flagged (`analyse_sanity`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..config import CellConfig, ExperimentConfig
from ..errors import AuglensError
from ..rundir import KEY, RunDir, content_key, read_key, read_tensors, write_table, write_tensors
from .sanity import random_map_explanation, random_maps

#: the pseudo-method holding the random-map control's explanations (Study B)
RANDOM_METHOD = "random"
#: the pseudo-variant of the random-map control in Study A's tables
RANDOM_VARIANT = "random_map"


def random_similarity(exp: ExperimentConfig, run: RunDir, method: str,
                      metrics: tuple[str, ...], ys: tuple[float, ...],
                      seed: int = 0) -> pd.DataFrame:
    """Study A rows of the random-map control: for every baseline seed, random maps (shape of
    the baseline's ``method`` maps) vs the baseline's maps — ``variant`` ``random_map``,
    ``reference`` ``baseline``, both targets."""
    from ..explain.store import read_explanation
    from ..metrics import compare_maps
    from .compare import TARGETS, _rows

    frames = []
    for s in exp.seeds:
        if (exp.baseline, s) not in {(v, k) for v, k, _ in exp.cells()}:
            continue
        base = read_explanation(run.explanation(method, exp.baseline, s))[0]
        noise = random_maps(base["image_ids"], tuple(base["maps"].shape[1:]), seed)
        for target, key in TARGETS.items():
            res = compare_maps(noise, base[key].float(), metrics, ys)
            frames.append(_rows(res, base["image_ids"].numpy(), variant=RANDOM_VARIANT, seed=s,
                                reference="baseline", target=target))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def random_explanation(run: RunDir, source_method: str, variant: str, seed: int,
                       noise_seed: int = 0) -> tuple[Path, bool]:
    """Write the random-map control's explanation of one cell (pseudo-method ``random``): the
    cell's ``source_method`` explanation with its maps replaced by seeded noise → (file,
    cached). Keyed by the source explanation's key."""
    src = run.explanation(source_method, variant, seed)
    if not src.is_file():
        raise AuglensError(f"no {source_method} explanation for {variant}/seed{seed} ({src}); "
                           f"run `auglens explain {run.root} --method {source_method}` first")
    src_key = read_key(src)
    key = content_key({"control": "random_map", "source": src_key, "seed": noise_seed,
                       "version": 1})
    path = run.explanation(RANDOM_METHOD, variant, seed)
    if read_key(path) == key:
        return path, True
    tensors, meta = read_tensors(src, what="explanation file")
    out = random_map_explanation(tensors, noise_seed)
    write_tensors(path, {k: v.contiguous() for k, v in out.items()},
                  dict(meta) | {KEY: key, "method": RANDOM_METHOD,
                                "storage": "float16 i.i.d. U(0,1) noise seeded per image"})
    return path, False


# ---------------------------------------------------------------------------- sanity checks


def sanity_key(cfg: CellConfig, weights_sha: str, method: str, scfg: Any,
               params: dict | None, estimator_images: int = 1000) -> str:
    """Key of a cell's sanity table: weights, method, layer, parameters, sanity settings, the
    data config and test files (and, for IBA, the training files and estimator size its
    per-step estimators are fitted on), the numeric environment."""
    from ..keys import data_files, environment

    obj = {"weights": weights_sha, "method": method, "params": params or {},
           "layer": cfg.model.target_layer, "settings": scfg.model_dump(mode="json"),
           "data": cfg.data.model_dump(mode="json"), "test_files": data_files(cfg, "test"),
           "numeric": environment(cfg, "fp32"), "version": 2}
    if method == "iba":
        obj |= {"train_files": data_files(cfg, "train"), "estimator_images": estimator_images}
    return content_key(obj)


def sanity_cell(cfg: CellConfig, run: RunDir, variant: str, seed: int, method: str,
                scfg: Any, params: dict | None = None, estimator_images: int = 1000,
                force: bool = False) -> tuple[Path, bool]:
    """Cascading randomisation and random-logit test of one cell's ``method`` on the first
    ``scfg.n_images`` test images → ``RUN/sanity/<method>/<variant>/seed<k>.parquet``."""
    from ..data import load_dataset
    from ..keys import pinned_threads, task_threads
    from ..models import load_model
    from .sanity import cascading_randomisation, random_logit_test

    rec = run.record(variant, seed)
    key = sanity_key(cfg, rec.weights_sha256, method, scfg, params, estimator_images)
    path = run.sanity(method, variant, seed)
    if not force and read_key(path) == key:
        return path, True
    with pinned_threads(task_threads(cfg)):
        data = load_dataset(cfg)
        model = load_model(cfg.model, data.num_classes, run.weights(variant, seed))
        n = min(scfg.n_images, len(data.test))
        images = data.test.images[:n]
        kw = dict(params or {})
        method_params: Any = kw
        if method == "iba":  # IBA's statistics belong to the (randomised) model: refit per step
            from ..explain.iba import fit_estimator

            def method_params(m: torch.nn.Module) -> dict:
                est = fit_estimator(m, data.train.images[:estimator_images], data.normalize,
                                    cfg.model.target_layer)
                return kw | {"estimator": est}

        common = {"image_ids": torch.arange(n), "seed": scfg.seed,
                  "method_params": method_params}
        table = pd.concat([
            cascading_randomisation(model, images, data.normalize, method,
                                    cfg.model.target_layer, granularity=scfg.granularity,
                                    **common),
            random_logit_test(model, images, data.normalize, method, cfg.model.target_layer,
                              **common)], ignore_index=True)
    table.insert(0, "method", method)
    table.insert(1, "variant", variant)
    table.insert(2, "seed", seed)
    write_table(table, path, key, {"method": method, "variant": variant, "seed": str(seed)})
    return path, False


def analyse_sanity(exp: ExperimentConfig, run: RunDir) -> dict[str, Path]:
    """``tables/sanity_summary.parquet`` (mean per test, step, group, metric, cell, method) and
    ``tables/sanity_verdicts.parquet`` (one randomisation-check flag per cell and method, with
    the numbers behind it — `auglens.analysis.sanity.randomisation_verdict` — and
    ``random_logit``: the mean similarity of the maps of the predicted and a random other
    class; near 1 = the method barely depends on the class)."""
    from .plots_b import cascade_plot
    from .sanity import randomisation_verdict, summarize_sanity

    summaries, verdicts = [], []
    for variant, seed, method in sanity_targets(exp):
        t = pd.read_parquet(run.sanity(method, variant, seed))
        s = summarize_sanity(t.drop(columns=["method", "variant", "seed"]))
        s.insert(0, "method", method)
        s.insert(1, "variant", variant)
        s.insert(2, "seed", seed)
        summaries.append(s)
        v = randomisation_verdict(t)
        rl = t[(t.test == "random_logit") & (t.metric == v["metric"])].value
        verdicts.append({"method": method, "variant": variant, "seed": seed} | v
                        | {"random_logit": float(rl.mean()) if len(rl) else float("nan")})
    summary = pd.concat(summaries, ignore_index=True)
    return {"sanity_summary": write_table(summary, run.table("sanity_summary")),
            "sanity_verdicts": write_table(pd.DataFrame(verdicts), run.table("sanity_verdicts")),
            "plot_sanity": cascade_plot(summary, run.plot("sanity_cascade"))}



def sanity_targets(exp: ExperimentConfig) -> list[tuple[str, int, str]]:
    """(variant, seed, method) the sanity stage checks."""
    sc = exp.sanity
    methods = sc.methods or [m for m in exp.explain.methods if m != "rollout"]
    cells = [(v, s) for v, s, _ in exp.cells() if sc.cells == "all" or v == exp.baseline]
    return [(v, s, m) for v, s in cells for m in methods]
