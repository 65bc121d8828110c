"""Broden-style densely labelled concept data for Network Dissection, streamed from disk.

Layout of ``broden1_224`` (CSAILVision NetDissect / NetDissect-Lite)::

    <root>/index.csv        image,split,ih,iw,sh,sw,color,object,part,material,scene,texture
    <root>/category.csv     name,first,last,count,frequency        (one row per category)
    <root>/label.csv        number,name,category,frequency,coverage,syns
    <root>/c_<category>.csv code,number,name,frequency,coverage    (optional here)
    <root>/images/<source>/<file>.jpg and label images <file>_<category>.png

In ``index.csv`` ``image`` is relative to ``images/``; ``ih``×``iw`` is the image size and
``sh``×``sw`` the label resolution (224 and 112 in broden1_224). Each category column holds zero or
more entries separated by ``;``: a PNG file name (per-pixel labels, the global label number of a
pixel is ``R + 256 * G``, 0 = unlabelled) or a decimal number (a per-image label such as a scene or
texture, covering every pixel). Label numbers are the *global* numbers of ``label.csv``, whose
``category`` field lists ``name(count)`` for each category the label occurs in.

Concept ids here are those global numbers (id 0 = "unlabelled"); ``concept_names[i]`` is label i's
name and ``concept_categories[i]`` its primary category, chosen as NetDissect-Lite does: the
category with the largest coverage in ``c_<category>.csv`` (ties → the later category in
``category.csv`` order); without those files, the largest count in ``label.csv``. Labels in no
category (and id 0) get category "".

Every image contributes one concept *layer* per entry of the chosen categories (in
``category.csv`` order), stacked like NetDissect-Lite's ``full_segmentation_data``, then padded
with unlabelled layers to the batch's layer count. `iter_broden` streams batches (decoded on a
thread pool, one batch ahead); `load_broden` loads a capped number of images into memory, exactly
the inputs `auglens.metrics.dissection.dissect` takes.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import AuglensError
from .base import CONCEPT_CATEGORIES
from .images import decode_file

META_COLUMNS = ("image", "split", "ih", "iw", "sh", "sw")
_LAYOUT = (
    "index.csv, category.csv, label.csv (and c_<category>.csv) plus images/<source>/... "
    "as in broden1_224 (NetDissect-Lite script/dlbroden.sh)"
)


@dataclass
class BrodenRecord:
    """One row of ``index.csv``: image path relative to ``images/``, split, image and label sizes,
    and its label entries per category (PNG file names or global label numbers)."""

    image: str
    split: str
    ih: int
    iw: int
    sh: int
    sw: int
    labels: dict[str, list[str | int]] = field(default_factory=dict)

    def entries(self, categories: Sequence[str]) -> list[str | int]:
        return [e for c in categories for e in self.labels.get(c, [])]


@dataclass
class BrodenIndex:
    """Parsed metadata of a Broden folder (nothing decoded): records, the chosen categories, and
    concept names / primary categories per global id (id 0 = "unlabelled")."""

    root: Path
    records: list[BrodenRecord]
    categories: list[str]
    concept_names: list[str]
    concept_categories: list[str]


@dataclass
class BrodenBatch:
    """images uint8 (B, 3, H, W); concepts int16 (B, L, h, w) global ids, 0 = unlabelled;
    index int64 (B,) positions in ``BrodenIndex.records``."""

    images: Tensor
    concepts: Tensor
    index: Tensor


@dataclass
class BrodenProbe:
    """A probe set in memory: the arguments `dissect` takes (images, concepts, concept_names,
    concept_categories) plus ``info`` (root, categories, image count, selection)."""

    images: Tensor
    concepts: Tensor
    concept_names: list[str]
    concept_categories: list[str]
    info: dict[str, Any] = field(default_factory=dict)


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise AuglensError(
            f"broden: data not found: {path} is missing; expected {_LAYOUT} under "
            f"root={path.parent}"
        )
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def _int(path: Path, row: int, col: str, value: str | None) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise AuglensError(f"{path}: row {row}: {col} must be an integer, got {value!r}") from None


def check_broden(root: str | os.PathLike) -> None:
    """Raise AuglensError naming the first missing metadata file of a Broden folder."""
    r = Path(root).expanduser()
    for name in ("index.csv", "category.csv", "label.csv"):
        if not (r / name).is_file():
            raise AuglensError(
                f"broden: data not found: {r / name} is missing; expected {_LAYOUT} under "
                f"root={r}"
            )
    if not (r / "images").is_dir():
        raise AuglensError(f"broden: image folder {r / 'images'} is missing; expected {_LAYOUT}")


def read_broden_index(
    root: str | os.PathLike,
    categories: Sequence[str] | None = None,
    split: str | None = None,
) -> BrodenIndex:
    """Parse ``index.csv``, ``category.csv``, ``label.csv`` (and ``c_*.csv``) of a Broden folder.

    categories: subset of ``category.csv``'s categories (None: all); split: keep rows of this split
    ("train" or "val"; None: all). Rows with no entry in the chosen categories are dropped (as
    NetDissect-Lite's ``index_has_any_data``)."""
    r = Path(root).expanduser()
    check_broden(r)
    _, cat_rows = _read_csv(r / "category.csv")
    all_cats = [row["name"].strip() for row in cat_rows if row.get("name")]
    if categories is None:
        cats = all_cats
    else:
        unknown = [c for c in categories if c not in all_cats]
        if unknown:
            raise AuglensError(
                f"broden: unknown category '{unknown[0]}'; {r / 'category.csv'} lists "
                + ", ".join(all_cats)
            )
        cats = [c for c in all_cats if c in categories]
    odd = [c for c in all_cats if c not in CONCEPT_CATEGORIES]
    if odd:
        import warnings

        warnings.warn(f"broden: categories {odd} are not among {CONCEPT_CATEGORIES}", stacklevel=2)

    # labels: names and per-category counts
    label_path = r / "label.csv"
    fields, label_rows = _read_csv(label_path)
    for col in ("number", "name", "category"):
        if col not in fields:
            raise AuglensError(f"{label_path}: no '{col}' column (columns: {', '.join(fields)})")
    numbers = [_int(label_path, i + 2, "number", row["number"]) for i, row in enumerate(label_rows)]
    n_ids = max([0, *numbers]) + 1
    names = [""] * n_ids
    counts: list[dict[str, float]] = [{} for _ in range(n_ids)]
    for i, (num, row) in enumerate(zip(numbers, label_rows, strict=True)):
        names[num] = row["name"]
        for part in filter(None, (row["category"] or "").split(";")):
            m = re.match(r"^\s*([^(]+)\((\d+)\)\s*$", part)
            if not m:
                raise AuglensError(
                    f"{label_path}: row {i + 2}: category entry {part!r} is not name(count)"
                )
            counts[num][m.group(1)] = float(m.group(2))
    coverage: list[dict[str, float]] | None = None
    if all((r / f"c_{c}.csv").is_file() for c in all_cats):
        coverage = [{} for _ in range(n_ids)]
        for c in all_cats:
            cpath = r / f"c_{c}.csv"
            cf, crows = _read_csv(cpath)
            for i, row in enumerate(crows):
                num = _int(cpath, i + 2, "number", row.get("number"))
                if 0 < num < n_ids:
                    coverage[num][c] = float(row.get("coverage") or 0.0)
    concept_categories = [""] * n_ids
    for i in range(1, n_ids):
        present = [c for c in all_cats if c in counts[i]]
        if not present:
            continue
        score = coverage[i] if coverage is not None else counts[i]
        best = max((score.get(c, 0.0), all_cats.index(c)) for c in present)
        concept_categories[i] = all_cats[best[1]]
    names[0] = "unlabelled"

    # index
    index_path = r / "index.csv"
    fields, rows = _read_csv(index_path)
    for col in (*META_COLUMNS, *cats):
        if col not in fields:
            raise AuglensError(
                f"{index_path}: no '{col}' column (columns: {', '.join(fields)}); expected "
                f"{','.join(META_COLUMNS)} followed by the category columns"
            )
    records = []
    for i, row in enumerate(rows):
        if split is not None and row["split"] != split:
            continue
        labels: dict[str, list[str | int]] = {}
        for c in cats:
            entries: list[str | int] = []
            for e in filter(None, (s.strip() for s in (row.get(c) or "").split(";"))):
                entries.append(int(e) if e.isdigit() else e)
            if entries:
                labels[c] = entries
        if not labels:
            continue
        records.append(
            BrodenRecord(
                row["image"], row["split"],
                *(_int(index_path, i + 2, k, row[k]) for k in ("ih", "iw", "sh", "sw")),
                labels=labels,
            )  # fmt: skip
        )
    if not records:
        raise AuglensError(
            f"broden: no image in {index_path} has labels of {', '.join(cats)}"
            + (f" in split '{split}'" if split else "")
        )
    return BrodenIndex(r, records, cats, names, concept_categories)


def _select(n: int, max_images: int | None, seed: int | None) -> np.ndarray:
    if max_images is None or max_images >= n:
        return np.arange(n, dtype=np.int64)
    if max_images < 1:
        raise AuglensError(f"broden: max_images must be >= 1, got {max_images}")
    if seed is None:
        return np.arange(max_images, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).permutation(n)[:max_images]).astype(np.int64)


def _common(values: set[tuple[int, int]], what: str, option: str) -> tuple[int, int]:
    if len(values) != 1:
        raise AuglensError(
            f"broden: the selected images have different {what} sizes "
            f"({', '.join(f'{h}×{w}' for h, w in sorted(values)[:4])}); set {option}"
        )
    return next(iter(values))


def _decode_labels(path: Path, n_ids: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise AuglensError(f"broden: label image not found: {path}") from None
    except Exception as e:  # noqa: BLE001
        raise AuglensError(f"broden: corrupt label image {path}: {e}") from None
    ids = rgb[..., 0].astype(np.int64) + 256 * rgb[..., 1].astype(np.int64)
    hi = int(ids.max(initial=0))
    if hi >= n_ids:
        raise AuglensError(
            f"broden: label image {path} holds label {hi}, but label.csv lists ids up to "
            f"{n_ids - 1}"
        )
    return ids.astype(np.int16)


def _load_record(
    index: BrodenIndex, k: int, image_hw: tuple[int, int], label_hw: tuple[int, int], layers: int
) -> tuple[Tensor, Tensor]:
    rec = index.records[k]
    img_dir = index.root / "images"
    img = decode_file(img_dir / rec.image)
    if tuple(img.shape[-2:]) != image_hw:
        from torchvision.transforms.v2 import functional as TF

        img = TF.resize(img, list(image_hw), antialias=True)
    n_ids = len(index.concept_names)
    out = torch.zeros((layers, *label_hw), dtype=torch.int16)
    for j, e in enumerate(rec.entries(index.categories)[:layers]):
        if isinstance(e, int):
            if not 0 <= e < n_ids:
                raise AuglensError(
                    f"broden: {rec.image} has label {e}, but label.csv lists ids up to {n_ids - 1}"
                )
            out[j] = e
            continue
        lab = torch.from_numpy(_decode_labels(img_dir / e, n_ids))
        if tuple(lab.shape) != label_hw:
            lab = F.interpolate(lab[None, None].float(), size=label_hw, mode="nearest")[0, 0]
            lab = lab.to(torch.int16)
        out[j] = lab
    return img, out


def iter_broden(
    source: str | os.PathLike | BrodenIndex,
    batch_size: int = 64,
    max_images: int | None = None,
    seed: int | None = 0,
    split: str | None = None,
    categories: Sequence[str] | None = None,
    image_size: int | None = None,
    label_size: int | None = None,
    layers: int | None = None,
    workers: int = 2,
) -> Iterator[BrodenBatch]:
    """Stream a Broden folder (or parsed index) in batches of ``batch_size``.

    max_images: cap (None: all); with ``seed`` a fixed random sample (kept in index order), with
    ``seed=None`` the first rows. image_size / label_size: resize images (bilinear, antialiased)
    and label maps (nearest) to squares of these sides (None: the images' own sizes, which must
    agree). layers: concept layers per image (None: the most any selected image has; images with
    more are truncated). workers: decoding threads."""
    index = source if isinstance(source, BrodenIndex) else read_broden_index(
        source, categories, split
    )
    sel = _select(len(index.records), max_images, seed)
    recs = [index.records[int(k)] for k in sel]
    image_hw = (
        (image_size, image_size)
        if image_size
        else _common({(r.ih, r.iw) for r in recs}, "image", "image_size")
    )
    label_hw = (
        (label_size, label_size)
        if label_size
        else _common({(r.sh, r.sw) for r in recs}, "label", "label_size")
    )
    n_layers = layers or max(len(r.entries(index.categories)) for r in recs)
    if batch_size < 1:
        raise AuglensError(f"broden: batch_size must be >= 1, got {batch_size}")
    chunks = [sel[i : i + batch_size] for i in range(0, len(sel), batch_size)]

    def load(chunk: np.ndarray, pool: ThreadPoolExecutor | None) -> BrodenBatch:
        def one(k: int) -> tuple[Tensor, Tensor]:
            return _load_record(index, int(k), image_hw, label_hw, n_layers)

        parts = list(pool.map(one, chunk)) if pool is not None else [one(k) for k in chunk]
        return BrodenBatch(
            torch.stack([p[0] for p in parts]),
            torch.stack([p[1] for p in parts]),
            torch.from_numpy(np.asarray(chunk, dtype=np.int64)),
        )

    pool = ThreadPoolExecutor(workers, thread_name_prefix="auglens-broden") if workers else None
    ahead = ThreadPoolExecutor(1, thread_name_prefix="auglens-broden-ahead")
    try:
        fut = ahead.submit(load, chunks[0], pool) if chunks else None
        for i in range(len(chunks)):
            batch = fut.result()  # type: ignore[union-attr]
            fut = ahead.submit(load, chunks[i + 1], pool) if i + 1 < len(chunks) else None
            yield batch
    finally:
        ahead.shutdown(wait=True, cancel_futures=True)
        if pool is not None:
            pool.shutdown(wait=True)


def load_broden(
    root: str | os.PathLike,
    max_images: int | None = 2000,
    seed: int | None = 0,
    split: str | None = None,
    categories: Sequence[str] | None = None,
    image_size: int | None = None,
    label_size: int | None = None,
    batch_size: int = 64,
    workers: int = 2,
) -> BrodenProbe:
    """Load up to ``max_images`` Broden images (a fixed random sample from ``seed``; first rows if
    None) into memory: images uint8 (N, 3, H, W), concepts int16 (N, L, h, w) with L the most
    layers any loaded image has. Arguments as `iter_broden`."""
    index = read_broden_index(root, categories, split)
    parts = list(
        iter_broden(
            index, batch_size, max_images, seed, image_size=image_size, label_size=label_size,
            workers=workers,
        )
    )  # fmt: skip
    images = torch.cat([p.images for p in parts])
    concepts = torch.cat([p.concepts for p in parts])
    picked = torch.cat([p.index for p in parts])
    return BrodenProbe(
        images,
        concepts,
        list(index.concept_names),
        list(index.concept_categories),
        info={
            "root": str(index.root),
            "categories": list(index.categories),
            "split": split,
            "n_images": int(images.shape[0]),
            "n_available": len(index.records),
            "seed": seed,
            "images": [index.records[int(k)].image for k in picked[:5]],
        },
    )
