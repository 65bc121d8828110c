"""Explain every trained cell on the same test images and store the raw maps on disk.

File: ``RUN/explanations/<method>/<variant>/seed<k>.safetensors`` with tensors ``maps`` and
``maps_gt`` (float16, (N, h, w), raw at feature resolution, never normalised), ``logits`` (float32,
(N, K)), ``targets`` (predicted classes), ``labels`` (ground truth) and ``image_ids`` (indices into
the test split); metadata records the method, layer, weights hash and a key of everything the file
depends on, so a stale file is recomputed and a finished one is reused.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import CellConfig, ExperimentConfig, config_hash
from ..errors import AuglensError
from ..models import build_model
from ..train.grid import cell_dir, cell_done
from ..train.trainer import RECORD, WEIGHTS, load_dataset
from ..utils import atomic_path, resolve_device
from .base import explain_images


def explanation_path(run_dir: str | Path, method: str, variant: str, seed: int) -> Path:
    return Path(run_dir) / "explanations" / method / variant / f"seed{seed}.safetensors"


def load_cell_model(path: Path, cfg: CellConfig, num_classes: int) -> torch.nn.Module:
    """The trained model of a cell directory (eval mode, CPU)."""
    m = build_model(
        cfg.model.name, num_classes, cfg.model.input_size, path / WEIGHTS, **cfg.model.params()
    )
    return m.eval()


def _key(cfg: CellConfig, weights_sha: str, method: str, layer: str | None, n: int) -> str:
    return config_hash(
        {
            "data": cfg.data.model_dump(mode="json"),
            "weights": weights_sha,
            "method": method,
            "layer": layer,
            "n_images": n,
            "version": 1,
        }
    )


def read_explanation(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors, metadata) of a stored explanation file; a corrupt file gives a clear error."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise AuglensError(f"explanation file not found: {path} (run `auglens explain` first)")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
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
) -> tuple[Path, bool]:
    """Explain the first ``n_images`` test images (all if None) with one trained cell.

    Maps are for the predicted class, and for the ground-truth class from the same pass.
    Returns (file, cached); a file whose key matches is reused unless ``force``.
    """
    from safetensors.torch import save_file

    cdir = cell_dir(run_dir, variant, seed)
    if not cell_done(cdir, cfg):
        raise AuglensError(f"cell {variant}/seed{seed} is not trained yet ({cdir}); "
                           "run `auglens run` or `auglens train` first")
    weights_sha = json.loads((cdir / RECORD).read_text())["weights_sha256"]
    data = load_dataset(cfg)
    test = data.test
    n = len(test) if n_images is None else min(n_images, len(test))
    layer = cfg.model.target_layer
    key = _key(cfg, weights_sha, method, layer, n)
    path = explanation_path(run_dir, method, variant, seed)
    if path.is_file() and not force:
        try:
            if read_explanation(path)[1].get("key") == key:
                return path, True
        except AuglensError:
            pass  # corrupt: recompute
    dev = resolve_device(device)
    model = load_cell_model(cdir, cfg, data.num_classes).to(dev)
    ex = explain_images(model, test.images[:n], data.normalize, method=method,
                        target_layer=layer, batch_size=batch_size, device=dev,
                        ground_truth=test.labels[:n])
    tensors = {
        "maps": ex.maps.to(torch.float16).contiguous(),
        "maps_gt": ex.maps_gt.to(torch.float16).contiguous(),
        "logits": ex.logits.float().contiguous(),
        "targets": ex.targets.long().contiguous(),
        "labels": test.labels[:n].long().contiguous(),
        "image_ids": torch.arange(n, dtype=torch.long),
    }
    meta = {"key": key, "method": method, "layer": ex.layer, "variant": variant,
            "seed": str(seed), "weights_sha256": weights_sha, "split": "test",
            "storage": "float16 raw maps at feature resolution"}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path, False


def explain_grid(
    exp: ExperimentConfig,
    run_dir: str | Path,
    methods: tuple[str, ...] = ("gradcam",),
    n_images: int | None = None,
    batch_size: int = 500,
    device: str = "auto",
    on_done: Callable[[str, str, int, bool], None] | None = None,
    force: bool = False,
) -> list[Path]:
    """``explain_cell`` for every cell and method, in this process; ``on_done(method, variant,
    seed, cached)`` is called per file."""
    out = []
    for variant, seed, cfg in exp.cells():
        for method in methods:
            path, cached = explain_cell(cfg, run_dir, variant, seed, method, n_images,
                                        batch_size, device, force)
            out.append(path)
            if on_done:
                on_done(method, variant, seed, cached)
    return out


def stored_methods(run_dir: str | Path) -> list[str]:
    root = Path(run_dir) / "explanations"
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def describe(meta: dict[str, str]) -> dict[str, Any]:
    return {k: meta.get(k) for k in ("method", "layer", "variant", "seed", "weights_sha256")}
