"""Explain every trained cell on the same test images and store the raw maps on disk.

File: ``RUN/explanations/<method>/<variant>/seed<k>.safetensors`` with tensors ``maps`` and
``maps_gt`` (float16, (N, h, w), raw at feature resolution, never normalised), ``logits`` (float32,
(N, K)), ``targets`` (predicted classes), ``labels`` (ground truth) and ``image_ids`` (indices into
the test split); metadata records the method, layer, weights hash and a key of everything the file
depends on, so a stale file is recomputed and a finished one is reused.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import CellConfig, ExperimentConfig, config_hash
from ..data.images import take_images
from ..errors import AuglensError
from ..models import build_model, default_target_layer
from ..train.grid import cell_dir, cell_done
from ..train.trainer import RECORD, WEIGHTS, checkpoint_path, load_dataset
from ..utils import atomic_path, resolve_device
from .base import explain_images
from .iba import Estimator, fit_estimator, model_fingerprint


def explanation_path(run_dir: str | Path, method: str, variant: str, seed: int,
                     epoch: int | None = None) -> Path:
    """Maps of a cell (``epoch`` None: its final weights; else the checkpoint after ``epoch``)."""
    tail = f"seed{seed}" if epoch is None else f"seed{seed}-epoch{epoch:03d}"
    return Path(run_dir) / "explanations" / method / variant / f"{tail}.safetensors"


def cell_weights(cdir: Path, epoch: int | None = None) -> tuple[Path, str]:
    """(weights file, sha256) of a finished cell's final weights or of its ``epoch`` checkpoint."""
    record = json.loads((cdir / RECORD).read_text())
    if epoch is None:
        return cdir / WEIGHTS, record["weights_sha256"]
    sha = record.get("checkpoint_sha256", {}).get(str(epoch))
    if sha is None:
        raise AuglensError(f"cell {cdir} has no checkpoint of epoch {epoch} (the baseline keeps "
                           "one per epoch; retrain it with `--force train`)")
    return checkpoint_path(cdir, epoch), sha


def load_cell_model(path: Path, cfg: CellConfig, num_classes: int,
                    weights: Path | None = None) -> torch.nn.Module:
    """The trained model of a cell directory (eval mode, CPU); ``weights`` overrides the file."""
    m = build_model(
        cfg.model.name, num_classes, cfg.model.input_size, weights or path / WEIGHTS,
        **cfg.model.params()
    )
    return m.eval()


def _key(cfg: CellConfig, weights_sha: str, method: str, layer: str | None, n: int,
         params: Mapping[str, Any] | None = None, estimator_images: int | None = None) -> str:
    obj = {
        "data": cfg.data.model_dump(mode="json"),
        "weights": weights_sha,
        "method": method,
        "layer": layer,
        "n_images": n,
        "version": 1,
    }
    if params:  # only when given, so that keys of plain runs stay stable
        obj["params"] = dict(params)
    if method == "iba":
        obj["estimator_images"] = estimator_images
    return config_hash(obj)


def estimator_path(cell: Path, layer: str, n_images: int, epoch: int | None = None) -> Path:
    """Where a cell caches its IBA estimator (tied to the weights by a fingerprint inside)."""
    tail = "" if epoch is None else f"-epoch{epoch:03d}"
    return cell / f"iba_estimator-{layer}-{n_images}{tail}.safetensors"


def cell_estimator(model: torch.nn.Module, cell: Path, data: Any, layer: str | None,
                   n_images: int = 1000, batch_size: int = 500,
                   epoch: int | None = None) -> Estimator:
    """The IBA estimator of a trained cell's model (or of its ``epoch`` checkpoint): fitted on
    the first ``n_images`` un-augmented training images, cached in the cell directory and reused
    while the weights match."""
    layer = layer or default_target_layer(model)
    path = estimator_path(cell, layer, n_images, epoch)
    fp = model_fingerprint(model)
    if path.is_file():
        try:
            est = Estimator.load(path)
            if est.model_fingerprint == fp and est.layer == layer:
                return est
        except AuglensError:
            pass  # corrupt or foreign: refit
    est = fit_estimator(model, data.train.images[:n_images], data.normalize, layer,
                        batch_size=batch_size)  # a slice decodes only these (lazy datasets)
    est.save(path, {"cell": str(cell.name)})
    return est


def read_explanation(path: str | Path, tensors: bool = True
                     ) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors, metadata) of a stored explanation file; a corrupt file gives a clear error.
    ``tensors=False`` reads only the header (metadata, e.g. the cache key): no map is loaded."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise AuglensError(f"explanation file not found: {path} (run `auglens explain` first)")
    try:
        with safe_open(str(path), framework="pt") as f:
            loaded = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
            return loaded, dict(f.metadata() or {})
    except Exception as e:
        raise AuglensError(f"corrupt explanation file {path}: {e}") from e


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
    from safetensors.torch import save_file

    cdir = cell_dir(run_dir, variant, seed)
    if not cell_done(cdir, cfg):
        raise AuglensError(f"cell {variant}/seed{seed} is not trained yet ({cdir}); "
                           "run `auglens run` or `auglens train` first")
    weights, weights_sha = cell_weights(cdir, epoch)
    data = load_dataset(cfg)
    test = data.test
    n = len(test) if n_images is None else min(n_images, len(test))
    layer = cfg.model.target_layer
    key = _key(cfg, weights_sha, method, layer, n, params, estimator_images)
    path = explanation_path(run_dir, method, variant, seed, epoch)
    if not force and _has_key(path, key):
        return path, True
    dev = resolve_device(device)
    model = load_cell_model(cdir, cfg, data.num_classes, weights).to(dev)
    kwargs = dict(params or {})
    if method == "iba":
        kwargs["estimator"] = cell_estimator(model, cdir, data, layer, estimator_images,
                                             batch_size, epoch)
    images = test.images if n == len(test) else take_images(test.images, torch.arange(n))
    ex = explain_images(model, images, data.normalize, method=method,
                        target_layer=layer, batch_size=batch_size, device=dev,
                        ground_truth=test.labels[:n], method_params=kwargs, on_batch=on_batch)
    tensors = {
        "maps": ex.maps.to(torch.float16).contiguous(),
        "maps_gt": ex.maps_gt.to(torch.float16).contiguous(),
        "logits": ex.logits.float().contiguous(),
        "targets": ex.targets.long().contiguous(),
        "labels": test.labels[:n].long().contiguous(),
        "image_ids": torch.arange(n, dtype=torch.long),
    }
    meta = {"key": key, "method": method, "layer": ex.layer, "variant": variant,
            "seed": str(seed), "epoch": "final" if epoch is None else str(epoch),
            "weights_sha256": weights_sha, "split": "test",
            "storage": "float16 raw maps at feature resolution"}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path, False


def _has_key(path: Path, key: str) -> bool:
    if not path.is_file():
        return False
    try:
        return read_explanation(path, tensors=False)[1].get("key") == key
    except AuglensError:
        return False  # corrupt: recompute


def explanation_cached(cfg: CellConfig, run_dir: str | Path, variant: str, seed: int,
                       method: str, n_images: int | None = None,
                       params: Mapping[str, Any] | None = None,
                       estimator_images: int = 1000, epoch: int | None = None) -> bool:
    """True if `explain_cell` with these arguments would reuse its file (no computation)."""
    cdir = cell_dir(run_dir, variant, seed)
    if not cell_done(cdir, cfg):
        return False
    try:
        weights_sha = cell_weights(cdir, epoch)[1]
    except AuglensError:
        return False
    n_test = len(load_dataset(cfg).test)
    n = n_test if n_images is None else min(n_images, n_test)
    key = _key(cfg, weights_sha, method, cfg.model.target_layer, n, params, estimator_images)
    return _has_key(explanation_path(run_dir, method, variant, seed, epoch), key)


def explain_grid(
    exp: ExperimentConfig,
    run_dir: str | Path,
    methods: tuple[str, ...] | None = None,
    n_images: int | None = None,
    device: str = "auto",
    on_done: Callable[[str, str, int, bool], None] | None = None,
    force: bool = False,
) -> list[Path]:
    """``explain_cell`` for every cell and method, in this process, with the experiment's
    ``explain`` settings (``methods`` / ``n_images`` override them); ``on_done(method, variant,
    seed, cached)`` is called per file."""
    ec = exp.explain
    out = []
    for variant, seed, cfg in exp.cells():
        for method in methods or tuple(ec.methods):
            n = ec.images_for(method) if n_images is None else n_images
            path, cached = explain_cell(cfg, run_dir, variant, seed, method, n, ec.batch_size,
                                        device, force, ec.params.get(method),
                                        ec.estimator_images)
            out.append(path)
            if on_done:
                on_done(method, variant, seed, cached)
    return out


def stored_methods(run_dir: str | Path) -> list[str]:
    root = Path(run_dir) / "explanations"
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def describe(meta: dict[str, str]) -> dict[str, Any]:
    return {k: meta.get(k) for k in ("method", "layer", "variant", "seed", "weights_sha256")}
