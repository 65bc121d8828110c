"""Caching dissections by the checkpoint's content hash (never the architecture name), the
layer, settings, probe set and normalisation; atomic parquet files."""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ...errors import AuglensError
from ...models.registry import default_target_layer, file_sha256, read_state_dict
from ...utils import atomic_path
from .core import dissect
from .result import _META_KEY, DISSECTION_VERSION, DissectionResult, UnionConvention, _check_union


def probe_fingerprint(
    images: Tensor,
    concepts: Tensor,
    concept_names: Sequence[str],
    concept_categories: Sequence[str],
) -> str:
    """sha256 of the probe images and concept maps (bytes, shapes, dtypes) and the concept names
    and categories."""
    h = hashlib.sha256()
    for t in (images, concepts):
        arr = np.ascontiguousarray(t.detach().cpu().numpy())
        h.update(f"{arr.dtype}{arr.shape}".encode())
        h.update(memoryview(arr).cast("B"))
    h.update(json.dumps([list(concept_names), list(concept_categories)]).encode())
    return h.hexdigest()


def normalize_fingerprint(normalize: Callable[[Tensor], Tensor]) -> str:
    """sha256 of ``normalize`` applied to a fixed (1, 3, 8, 8) ramp in [0, 1] (captures any
    per-channel affine normalisation)."""
    x = torch.linspace(0.0, 1.0, 3 * 64).view(1, 3, 8, 8)
    with torch.no_grad():
        out = normalize(x.clone()).detach().cpu().double().numpy()
    return hashlib.sha256(out.tobytes() + str(out.shape).encode()).hexdigest()


def dissection_cache_key(
    checkpoint_sha256: str,
    layer: str,
    quantile: float,
    iou_threshold: float,
    probe: str,
    normalize: str,
) -> str:
    """sha256 of everything a cached dissection depends on (``probe``, ``normalize``: the
    fingerprints or caller-given keys); the checkpoint enters by content hash only. The union
    convention is not part of it: every result holds the counts of all conventions."""
    parts = {
        "version": DISSECTION_VERSION,
        "checkpoint_sha256": checkpoint_sha256,
        "layer": layer,
        "quantile": float(quantile),
        "iou_threshold": float(iou_threshold),
        "probe": probe,
        "normalize": normalize,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _check_weights(model: nn.Module, path: Path) -> None:
    state = read_state_dict(path)
    own = model.state_dict()
    same = set(state) == set(own) and all(
        state[k].shape == v.shape and torch.equal(state[k], v.detach().cpu())
        for k, v in own.items()
    )
    if not same:
        raise AuglensError(
            f"the model's weights differ from checkpoint {path}; load it first "
            "(the cache is keyed by the checkpoint file)"
        )


def save_dissection(result: DissectionResult, path: str | Path, key: str = "") -> Path:
    """Write ``result`` as one parquet file (one row per unit, metadata in the schema),
    atomically (temp file + rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def matrix(t: Tensor) -> pa.FixedSizeListArray:
        return pa.FixedSizeListArray.from_arrays(pa.array(t.numpy().reshape(-1)), t.shape[1])

    meta = {
        "key": key,
        "layer": result.layer,
        "quantile": result.quantile,
        "iou_threshold": result.iou_threshold,
        "union": result.union,
        "label_pixels": result.label_pixels.tolist(),
        "concept_names": result.concept_names,
        "concept_categories": result.concept_categories,
        "categories": result.categories,
        "info": result.info,
    }
    table = pa.table(
        {
            "unit": pa.array(np.arange(result.n_units, dtype=np.int64)),
            "threshold": pa.array(result.thresholds.numpy()),
            "unit_pixels": pa.array(result.unit_pixels.numpy()),
            "intersection": matrix(result.intersection),
            "unit_pixels_by_category": matrix(result.unit_pixels_by_category),
            "unit_pixels_touching": matrix(result.unit_pixels_touching),
        }
    ).replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def load_dissection(path: str | Path) -> tuple[DissectionResult, str]:
    """(result, stored key) from a file written by `save_dissection`."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
        meta = json.loads(table.schema.metadata[_META_KEY])
        u = table.num_rows

        def matrix(name: str) -> Tensor:
            flat = table.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
            return torch.from_numpy(flat.astype(np.int64).reshape(u, -1))

        result = DissectionResult(
            layer=meta["layer"],
            quantile=meta["quantile"],
            iou_threshold=meta["iou_threshold"],
            union=meta["union"],
            thresholds=torch.from_numpy(table.column("threshold").to_numpy().astype(np.float64)),
            intersection=matrix("intersection"),
            label_pixels=torch.tensor(meta["label_pixels"], dtype=torch.long),
            unit_pixels=torch.from_numpy(table.column("unit_pixels").to_numpy().astype(np.int64)),
            unit_pixels_by_category=matrix("unit_pixels_by_category"),
            unit_pixels_touching=matrix("unit_pixels_touching"),
            concept_names=list(meta["concept_names"]),
            concept_categories=list(meta["concept_categories"]),
            categories=list(meta["categories"]),
            info=dict(meta["info"]),
        )
    except Exception as e:
        raise AuglensError(f"corrupt dissection file {path}: {e}") from e
    return result, str(meta.get("key", ""))


def dissect_cached(
    model: nn.Module,
    images: Tensor,
    concepts: Tensor,
    normalize: Callable[[Tensor], Tensor],
    concept_names: Sequence[str],
    concept_categories: Sequence[str],
    *,
    checkpoint_path: str | Path,
    cache_dir: str | Path,
    layer: str | None = None,
    probe_key: str | None = None,
    verify_weights: bool = True,
    batch_size: int = 256,
    iou_threshold: float = 0.04,
    quantile: float = 0.995,
    union: UnionConvention = "category",
    **options: Any,
) -> DissectionResult:
    """`dissect` with a cache in ``cache_dir/dissection-<key>.parquet``.

    The key (`dissection_cache_key`) uses the sha256 of the file at ``checkpoint_path`` (the
    weights ``model`` holds; checked on a miss if ``verify_weights``), the layer, quantile, IoU
    threshold, ``probe_key`` (None: `probe_fingerprint`; a caller key must identify images,
    labels and concept names) and `normalize_fingerprint`; never the architecture name. A hit
    returns the stored counts with ``union`` as asked. ``info["cache"]`` is "hit" or "miss"; a
    corrupt file is recomputed. Options such as ``batch_size`` are not in the key (they change
    activations at most by float rounding).
    """
    ckpt = Path(checkpoint_path)
    if not ckpt.is_file():
        raise AuglensError(f"checkpoint not found: {ckpt}")
    layer = default_target_layer(model) if layer is None else layer
    _check_union(union)
    probe = probe_key or probe_fingerprint(images, concepts, concept_names, concept_categories)
    sha = file_sha256(ckpt)
    key = dissection_cache_key(
        sha, layer, quantile, iou_threshold, probe, normalize_fingerprint(normalize)
    )
    path = Path(cache_dir) / f"dissection-{key}.parquet"
    if path.is_file():
        try:
            result, stored = load_dissection(path)
        except AuglensError as e:
            warnings.warn(f"{e}; recomputing", stacklevel=2)
        else:
            if stored == key:
                result.union = union
                result.info.update(cache="hit", cache_key=key, cache_file=str(path))
                return result
    if verify_weights:
        _check_weights(model, ckpt)
    result = dissect(
        model, images, concepts, normalize, concept_names, concept_categories, layer,
        batch_size, iou_threshold, quantile, union=union, **options,
    )  # fmt: skip
    result.info.update(checkpoint_sha256=sha, probe=probe)
    save_dissection(result, path, key)
    result.info.update(cache="miss", cache_key=key, cache_file=str(path))
    return result
