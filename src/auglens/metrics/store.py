"""Study B on one trained cell: alignment and faithfulness of its stored maps, Network Dissection
of its target layer; per-cell results on disk, reused while their key matches.

Files (Parquet, key in the schema metadata under ``auglens_key``):

- ``RUN/evaluation/<method>/<variant>/seed<k>.parquet``: ``image_id, metric, value`` per image —
  ``energy_pointing_game``, ``effective_heat_ratio`` and the filter inputs ``box_fraction`` /
  ``target_prob`` on every explained image with a ground-truth region; ``auc_<kind>_<order>``,
  ``delta_del``, ``delta_ins``, ``lerf_morf_del``, ``lerf_morf_ins`` on the first
  ``evaluate.n_images`` of them.
- ``RUN/evaluation/<method>/<variant>/seed<k>-curves.parquet``: ``kind, order, step, fraction,
  score, sem`` — the mean curve over images (and its standard error).
- ``RUN/dissection/<variant>/seed<k>.parquet``: one row per unit (``DissectionResult.table``);
  the exact counts are cached in the cell directory by the weights' content hash.

Maps are upsampled from feature to input resolution bilinearly (``align_corners=False``) before
any Study B metric.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..config import CellConfig, DissectConfig, EvaluateConfig
from ..data import load_dataset
from ..errors import AuglensError
from ..keys import compute_precision, data_files, environment, pinned_threads, task_threads
from ..models import load_model
from ..models.precision import autocast
from ..rundir import RunDir, content_key, read_key, read_tensors, table_metadata, write_table
from ..utils import resolve_device, upsample
from .alignment import box_fraction, boxes_to_mask, effective_heat_ratio, energy_pointing_game
from .dissection import dissect_cached, probe_fingerprint
from .faithfulness import deletion_insertion_curves, faithfulness_scores
from .road import road_curves, road_scores

#: images per alignment chunk (maps upsampled to input size only this many at a time)
ALIGN_CHUNK = 1000
#: evaluate settings that change per-cell numbers (filters and the CI act at aggregation).
_CELL_FIELDS = ("alignment", "faithfulness", "n_images", "n_steps", "n_random", "blur_kernel",
                "blur_sigma", "seed", "road", "road_percentages", "road_noise")


def _run(run_dir: str | Path | RunDir) -> RunDir:
    return run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)


def _explanation(run: RunDir, method: str, variant: str, seed: int, tensors: bool = True,
                 epoch: int | None = None) -> tuple[dict, dict[str, str]]:
    path = run.explanation(method, variant, seed, epoch)
    if not path.is_file():
        raise AuglensError(f"no {method} explanation for {variant}/seed{seed} ({path}); run "
                           f"`auglens explain {run.root} --method {method}` first")
    return read_tensors(path, tensors, what="explanation file")


def evaluate_key(expl_key: str, ecfg: EvaluateConfig, cfg: CellConfig) -> str:
    """Key of a per-cell evaluation: its explanation's key (weights, test files, method, …), the
    evaluate settings that change per-cell numbers, the numeric environment."""
    fields = {f: getattr(ecfg, f) for f in _CELL_FIELDS}
    return content_key({"explanation": expl_key, "evaluate": fields,
                        "numeric": environment(cfg, compute_precision(cfg)), "version": 3})


def regions_of(test: Any, ids: torch.Tensor) -> torch.Tensor | None:
    """Ground-truth regions bool (N, H, W) of test images ``ids``: the object masks, else the
    union of the boxes, else None (the dataset has neither)."""
    if test.masks is not None:
        return test.masks[ids].bool()
    if test.boxes is not None:
        b = test.boxes[ids]
        h, w = test.images.shape[-2:]
        return boxes_to_mask(b if b.ndim == 3 else b[:, None, :], h, w)
    return None


def evaluate_cell(
    cfg: CellConfig,
    run_dir: str | Path,
    variant: str,
    seed: int,
    method: str,
    ecfg: EvaluateConfig,
    device: str = "auto",
    force: bool = False,
    epoch: int | None = None,
) -> tuple[Path, bool]:
    """Alignment and faithfulness of one cell's stored ``method`` maps (of its checkpoint after
    ``epoch`` if given) → (file, cached)."""
    run = _run(run_dir)
    key = evaluate_key(read_key(run.explanation(method, variant, seed, epoch)) or "", ecfg, cfg)
    path = run.evaluation(method, variant, seed, epoch)
    cpath = run.curves(method, variant, seed, epoch)
    if not force and read_key(path) == key and (not ecfg.faithfulness or read_key(cpath) == key):
        return path, True
    with pinned_threads(task_threads(cfg)), autocast(resolve_device(device),
                                                     compute_precision(cfg)):
        return _evaluate(cfg, run, variant, seed, method, ecfg, device, epoch, key), False


def _evaluate(cfg: CellConfig, run: RunDir, variant: str, seed: int, method: str,
              ecfg: EvaluateConfig, device: str, epoch: int | None, key: str) -> Path:
    path = run.evaluation(method, variant, seed, epoch)
    cpath = run.curves(method, variant, seed, epoch)
    tensors, _ = _explanation(run, method, variant, seed, True, epoch)
    data = load_dataset(cfg)
    ids = tensors["image_ids"].long()
    size = tuple(data.test.images.shape[-2:])
    raw = tensors["maps"].float()
    if not torch.isfinite(raw).all():
        where = run.explanation(method, variant, seed, epoch)
        raise AuglensError(f"{where}: maps contain NaN or inf; re-run `auglens explain --force`")
    targets = tensors["targets"].long()
    probs = torch.softmax(tensors["logits"].double(), 1)
    rows: list[pd.DataFrame] = []
    notes = {"map_upsampling": "bilinear, align_corners=False, feature → input resolution"}

    def add(name: str, values: torch.Tensor, which: torch.Tensor) -> None:
        rows.append(pd.DataFrame({"image_id": which.numpy().astype(np.int64), "metric": name,
                                  "value": values.double().cpu().numpy()}))

    if ecfg.alignment:
        if data.test.masks is None and data.test.boxes is None:
            notes["alignment"] = "skipped: the dataset has no object masks or boxes"
        else:
            parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("epg", "ehr", "box")}
            for start in range(0, len(ids), ALIGN_CHUNK):  # bounded memory at any image size
                sl = slice(start, start + ALIGN_CHUNK)
                regions = regions_of(data.test, ids[sl])
                m = upsample(raw[sl], size)
                parts["epg"].append(energy_pointing_game(m, regions))
                parts["ehr"].append(effective_heat_ratio(m, regions))
                parts["box"].append(box_fraction(regions))
            add("energy_pointing_game", torch.cat(parts["epg"]), ids)
            add("effective_heat_ratio", torch.cat(parts["ehr"]), ids)
            add("box_fraction", torch.cat(parts["box"]), ids)
            add("target_prob", probs.gather(1, targets[:, None])[:, 0], ids)
            notes["alignment"] = "mask" if data.test.masks is not None else "boxes"
    curves_df = None
    if ecfg.faithfulness:
        n = len(ids) if ecfg.n_images is None else min(ecfg.n_images, len(ids))
        sel = ids[:n]
        dev = resolve_device(device)
        model = load_model(cfg.model, data.num_classes, run.weights(variant, seed, epoch)).to(dev)
        images = data.normalize(data.test.images[sel].to(dev).float().div_(255))
        curves = deletion_insertion_curves(
            model, images, upsample(raw[:n], size).to(dev), targets[:n].to(dev),
            n_steps=ecfg.n_steps,
            n_random=ecfg.n_random, seed=ecfg.seed, image_ids=sel, blur_kernel=ecfg.blur_kernel,
            blur_sigma=ecfg.blur_sigma, max_batch=ecfg.max_batch,
        )  # fmt: skip
        for name, values in faithfulness_scores(curves).items():
            add(name, values, sel)
        parts = []
        for (kind, order), c in curves.items():
            c = c.double().cpu()
            steps = c.shape[1]
            sem = c.std(0) / max(c.shape[0], 1) ** 0.5 if c.shape[0] > 1 else torch.zeros(steps)
            parts.append(pd.DataFrame({
                "kind": kind, "order": order, "step": np.arange(steps),
                "fraction": np.arange(steps) / (steps - 1), "score": c.mean(0).numpy(),
                "sem": sem.numpy(), "n_images": c.shape[0],
            }))
        if ecfg.road:
            road = road_curves(model, images, upsample(raw[:n], size).to(dev),
                               targets[:n].to(dev), percentages=ecfg.road_percentages,
                               noise=ecfg.road_noise, input_std=data.std, seed=ecfg.seed,
                               image_ids=sel, max_batch=ecfg.max_batch)
            for name, values in road_scores(road).items():
                add(name, values, sel)
            for order, c in road.items():
                c = c.double().cpu()
                k = len(road.percentages)
                sem = c.std(0) / max(c.shape[0], 1) ** 0.5 if c.shape[0] > 1 else torch.zeros(k)
                parts.append(pd.DataFrame({
                    "kind": "road", "order": order, "step": np.arange(k),
                    "fraction": road.percentages.double().cpu().numpy() / 100,
                    "score": c.mean(0).numpy(), "sem": sem.numpy(), "n_images": c.shape[0]}))
            notes["road"] = json.dumps(road.settings, sort_keys=True, default=str)
        curves_df = pd.concat(parts, ignore_index=True)
        notes["faithfulness"] = f"{n} images"
    df = (pd.concat(rows, ignore_index=True) if rows
          else pd.DataFrame({"image_id": pd.Series(dtype="int64"), "metric": pd.Series(dtype=str),
                             "value": pd.Series(dtype="float64")}))
    ident = _identity(method, variant, seed, epoch)
    if curves_df is not None:
        write_table(_with_identity(curves_df, ident), cpath, key, ident)
    write_table(_with_identity(df, ident), path, key,
                {"notes": json.dumps(notes, sort_keys=True)} | ident)
    return path


def _with_identity(df: pd.DataFrame, ident: dict[str, str]) -> pd.DataFrame:
    """``df`` with the identity columns in front (``method``, ``variant``, ``seed``, ``epoch``;
    epoch null for the final weights), so files read without auglens keep them."""
    cols = {"method": ident.get("method"), "variant": ident["variant"],
            "seed": int(ident["seed"]),
            "epoch": None if ident["epoch"] == "final" else int(ident["epoch"])}
    front = {k: v for k, v in cols.items() if k != "method" or v is not None}
    out = df.copy()
    for i, (k, v) in enumerate(front.items()):
        out.insert(i, k, pd.Series([v] * len(out), dtype="Int64" if k in ("seed", "epoch")
                                   else "object", index=out.index))
    return out


def _identity(method: str | None, variant: str, seed: int, epoch: int | None = None
              ) -> dict[str, str]:
    """Which cell a per-cell result file belongs to (also in its metadata)."""
    out = {"variant": variant, "seed": str(seed),
           "epoch": "final" if epoch is None else str(epoch)}
    return out | ({"method": method} if method else {})


# ----------------------------------------------------------------------------- dissection


def dissect_key(cfg: CellConfig, weights_sha: str, dcfg: DissectConfig) -> str:
    """Key of a per-cell dissection: weights, layer, probe (the dataset's test files, or the
    Broden folder's files), settings, numeric environment."""
    obj = {"data": cfg.data.model_dump(mode="json"), "weights": weights_sha,
           "layer": cfg.model.target_layer, "n_images": dcfg.n_images,
           "quantile": dcfg.quantile, "iou": dcfg.iou_threshold,
           "numeric": environment(cfg, "fp32"), "version": 2}
    if dcfg.probe == "dataset":
        obj["probe_files"] = data_files(cfg, "test")
    else:
        obj["probe"] = [dcfg.probe, str(dcfg.broden_root), broden_files(dcfg.broden_root)]
    return content_key(obj)


def broden_files(root: Any) -> str:
    """Fingerprint of a Broden folder's index and label files (stat: list, sizes, times)."""
    from ..data.fingerprint import files_fingerprint

    r = Path(str(root))
    files = [p for p in r.rglob("*") if p.is_file() and p.suffix.lower() in (".csv", ".png",
                                                                              ".jpg", ".jpeg")]
    return files_fingerprint(files, r)


@functools.lru_cache(maxsize=2)
def _broden_probe(root: str, n_images: int | None, image_size: int) -> Any:
    from ..data.broden import load_broden

    return load_broden(root, max_images=n_images, seed=0, image_size=image_size)


def probe_set(data: Any, dcfg: DissectConfig, dataset_name: str) -> tuple[Any, Any, list[str],
                                                                           list[str]]:
    """(images uint8 (N, 3, H, W), concepts (N, L, h, w), concept names, categories) of the
    probe set ``dcfg`` names; a clear error when the dataset has no concept labels."""
    if dcfg.probe == "broden":
        size = int(data.test.images.shape[-1])
        p = _broden_probe(str(dcfg.broden_root), dcfg.n_images, size)
        return p.images, p.concepts, list(p.concept_names), list(p.concept_categories)
    test = data.test
    if test.concepts is None or not data.concept_names:
        raise AuglensError(f"dataset '{dataset_name}' has no concept labels; Network Dissection "
                           "needs a probe set with concepts: use a dataset with concept labels "
                           "(e.g. shapes) or dissect.probe=broden with dissect.broden_root")
    n = len(test) if dcfg.n_images is None else min(dcfg.n_images, len(test))
    return test.images[:n], test.concepts[:n], data.concept_names, data.concept_categories


def dissect_cell(
    cfg: CellConfig,
    run_dir: str | Path,
    variant: str,
    seed: int,
    dcfg: DissectConfig,
    device: str = "auto",
    force: bool = False,
) -> tuple[Path, bool]:
    """Network Dissection of one cell's target layer on the probe set of ``dcfg`` (`probe_set`)
    → (per-unit table file, cached)."""
    run = _run(run_dir)
    rec = run.record(variant, seed)
    if rec is None:
        raise AuglensError(f"cell {variant}/seed{seed} is not trained yet "
                           f"({run.cell(variant, seed)})")
    key = dissect_key(cfg, rec.weights_sha256, dcfg)
    path = run.dissection(variant, seed)
    if not force and read_key(path) == key:
        return path, True
    with pinned_threads(task_threads(cfg)):  # float32: exact thresholds need exact activations
        return _dissect(cfg, run, variant, seed, dcfg, device, force, key), False


def _dissect(cfg: CellConfig, run: RunDir, variant: str, seed: int, dcfg: DissectConfig,
             device: str, force: bool, key: str) -> Path:
    path = run.dissection(variant, seed)
    data = load_dataset(cfg)
    images, concepts, names, cats = probe_set(data, dcfg, cfg.data.name)
    model = load_model(cfg.model, data.num_classes, run.weights(variant, seed))
    model = model.to(resolve_device(device))
    probe = probe_fingerprint(images, concepts, names, cats)
    cache = run.dissection_cache(variant, seed)
    if force:
        for old in cache.glob("dissection-*.parquet"):
            old.unlink()
    result = dissect_cached(
        model, images, concepts, data.normalize, names, cats,
        checkpoint_path=run.weights(variant, seed), cache_dir=cache,
        layer=cfg.model.target_layer, probe_key=probe, batch_size=dcfg.batch_size,
        iou_threshold=dcfg.iou_threshold, quantile=dcfg.quantile,
    )  # fmt: skip
    table = result.table()
    table.insert(0, "layer", result.layer)
    ident = _identity(None, variant, seed)
    write_table(_with_identity(table, ident), path, key,
                {"summary": json.dumps(result.summary(), sort_keys=True)} | ident)
    return path


def read_metadata(path: Path) -> dict[str, str]:
    """The ``auglens_*`` metadata of a per-cell result file; a clear error if unreadable."""
    meta = table_metadata(path)
    if meta is None:
        raise AuglensError(f"missing or unreadable result file {path}")
    return meta
