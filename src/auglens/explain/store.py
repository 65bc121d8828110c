"""Explain one trained cell on the test images and store the raw maps in its run directory.

File (`auglens.rundir.RunDir.explanation`): ``maps`` and ``maps_gt`` (float16, (N, h, w), raw at
feature resolution, never normalised), ``logits`` (float32, (N, K)), ``targets`` (predicted
classes), ``labels`` (ground truth) and ``image_ids`` (indices into the test split); metadata (the
run directory's convention) records the method, layer, weights hash and the key of everything
the file depends on (`explanation_key`), so a stale file is recomputed and a finished one reused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import CellConfig
from ..data import load_dataset
from ..data.images import take_images
from ..errors import AuglensError
from ..keys import (
    cell_key,
    compute_precision,
    data_files,
    environment,
    pinned_threads,
    task_threads,
)
from ..models import default_target_layer, load_model
from ..models.precision import autocast
from ..rundir import KEY, RunDir, content_key, read_key, read_tensors, write_tensors
from ..utils import resolve_device
from .base import explain_images
from .iba import Estimator, fit_estimator

#: Bump when the stored maps of the same inputs change.
VERSION = 2


def explanation_key(cfg: CellConfig, weights_sha: str, method: str, n: int,
                    params: Mapping[str, Any] | None = None,
                    estimator_images: int | None = None) -> str:
    """The key of an explanation file (`auglens.keys`): the data config and test files, the
    weights, the method, its layer and parameters, the number of images (and IBA's estimator
    size), the numeric environment."""
    obj = {"data": cfg.data.model_dump(mode="json"), "test_files": data_files(cfg, "test"),
           "weights": weights_sha, "method": method, "layer": cfg.model.target_layer,
           "n_images": n, "params": dict(params or {}),
           "numeric": environment(cfg, compute_precision(cfg, method)),
           "version": VERSION}
    if method == "iba":
        obj["estimator_images"] = estimator_images
    return content_key(obj)


def cell_estimator(model: torch.nn.Module, run: RunDir, variant: str, seed: int, data: Any,
                   layer: str | None, weights_sha: str, n_images: int = 1000,
                   batch_size: int = 500, epoch: int | None = None) -> Estimator:
    """The IBA estimator of a trained cell's model (or of its ``epoch`` checkpoint): fitted on
    the first ``n_images`` un-augmented training images, cached in the cell directory and reused
    while it was fitted on the same weights (``weights_sha``) and layer."""
    layer = layer or default_target_layer(model)
    path = run.estimator(variant, seed, layer, n_images, epoch)
    if path.is_file():
        try:
            est = Estimator.load(path)
            if est.model_fingerprint == weights_sha and est.layer == layer:
                return est
        except AuglensError:
            pass  # corrupt or foreign: refit
    est = fit_estimator(model, data.train.images[:n_images], data.normalize, layer,
                        batch_size=batch_size)  # a slice decodes only these (lazy datasets)
    if est.model_fingerprint != weights_sha:  # the model was not loaded from these weights
        raise AuglensError(f"cell {variant}/seed{seed}: the model's weights do not match "
                           f"{run.weights(variant, seed, epoch)}; retrain the cell")
    est.save(path, {"cell": f"{variant}/seed{seed}"})
    return est


def read_explanation(path: str | Path, tensors: bool = True
                     ) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors, metadata) of a stored explanation file; a missing or corrupt file gives a clear
    error. ``tensors=False`` reads only the header (metadata, e.g. the key): no map is loaded."""
    if not Path(path).is_file():
        raise AuglensError(f"explanation file not found: {path} (run `auglens explain` first)")
    return read_tensors(path, tensors, what="explanation file")


def explain_cell(
    cfg: CellConfig,
    run_dir: str | Path,
    variant: str,
    seed: int,
    method: str = "gradcam",
    n_images: int | None = None,
    batch_size: int = 500,
    device: str = "auto",
    force: bool = False,
    params: Mapping[str, Any] | None = None,
    estimator_images: int = 1000,
    on_batch: Callable[[int, int], None] | None = None,
    epoch: int | None = None,
) -> tuple[Path, bool]:
    """Explain the first ``n_images`` test images (all if None) with one trained cell (or with
    its checkpoint after ``epoch``).

    Maps are for the predicted class, and for the ground-truth class from the same pass.
    ``params``: explainer keyword arguments. IBA gets its estimator from `cell_estimator`
    (``estimator_images`` training images). Returns (file, cached); a file whose key matches is
    reused unless ``force``. ``on_batch(done, total)``: progress after each batch.
    """
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    weights_sha = _trained(run, cfg, variant, seed).weights(epoch)
    data = load_dataset(cfg)
    test = data.test
    n = len(test) if n_images is None else min(n_images, len(test))
    key = explanation_key(cfg, weights_sha, method, n, params, estimator_images)
    path = run.explanation(method, variant, seed, epoch)
    if not force and read_key(path) == key:
        return path, True
    with pinned_threads(task_threads(cfg)):
        return _explain(cfg, run, variant, seed, method, n, key, path, batch_size, device,
                        params, estimator_images, on_batch, epoch, weights_sha), False


def _explain(cfg: CellConfig, run: RunDir, variant: str, seed: int, method: str, n: int,
             key: str, path: Path, batch_size: int, device: str,
             params: Mapping[str, Any] | None, estimator_images: int,
             on_batch: Callable[[int, int], None] | None, epoch: int | None,
             weights_sha: str) -> Path:
    data = load_dataset(cfg)
    test = data.test
    layer = cfg.model.target_layer
    dev = resolve_device(device)
    model = load_model(cfg.model, data.num_classes, run.weights(variant, seed, epoch)).to(dev)
    kwargs = dict(params or {})
    if method == "iba":
        kwargs["estimator"] = cell_estimator(model, run, variant, seed, data, layer, weights_sha,
                                             estimator_images, batch_size, epoch)
    images = test.images if n == len(test) else take_images(test.images, torch.arange(n))
    precision = compute_precision(cfg, method)
    with autocast(dev, precision):
        ex = explain_images(model, images, data.normalize, method=method,
                            target_layer=layer, batch_size=batch_size, device=dev,
                            ground_truth=test.labels[:n], method_params=kwargs,
                            on_batch=on_batch)
    tensors = {
        "maps": ex.maps.to(torch.float16).contiguous(),
        "maps_gt": ex.maps_gt.to(torch.float16).contiguous(),
        "logits": ex.logits.float().contiguous(),
        "targets": ex.targets.long().contiguous(),
        "labels": test.labels[:n].long().contiguous(),
        "image_ids": torch.arange(n, dtype=torch.long),
    }
    meta = {KEY: key, "method": method, "layer": ex.layer, "variant": variant,
            "seed": str(seed), "epoch": "final" if epoch is None else str(epoch),
            "weights_sha256": weights_sha, "split": "test", "precision": precision,
            "storage": "float16 raw maps at feature resolution"}
    write_tensors(path, tensors, meta)
    return path


def _trained(run: RunDir, cfg: CellConfig, variant: str, seed: int) -> Any:
    rec = run.record(variant, seed)
    if rec is None or not run.cell_done(variant, seed, cell_key(cfg)):
        raise AuglensError(f"cell {variant}/seed{seed} is not trained yet "
                           f"({run.cell(variant, seed)}); run `auglens run` first")
    return rec


def explanation_cached(cfg: CellConfig, run_dir: str | Path | RunDir, variant: str, seed: int,
                       method: str, n_images: int | None = None,
                       params: Mapping[str, Any] | None = None,
                       estimator_images: int = 1000, epoch: int | None = None) -> bool:
    """True if `explain_cell` with these arguments would reuse its file (no computation)."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    try:
        weights_sha = _trained(run, cfg, variant, seed).weights(epoch)
    except AuglensError:
        return False
    n_test = len(load_dataset(cfg).test)
    n = n_test if n_images is None else min(n_images, n_test)
    key = explanation_key(cfg, weights_sha, method, n, params, estimator_images)
    return read_key(run.explanation(method, variant, seed, epoch)) == key


def describe(meta: dict[str, str]) -> dict[str, Any]:
    return {k: meta.get(k) for k in ("method", "layer", "variant", "seed", "weights_sha256")}
