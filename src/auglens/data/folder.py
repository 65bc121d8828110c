"""ImageNet-style class folders, with optional Pascal VOC XML boxes (ImageNet's annotation format).

Layout (names configurable)::

    <root>/train/<class>/<image>        training images, one folder per class (sorted = class ids)
    <root>/val/<class>/<image>          the evaluation split (``test_dir``; ImageNet's val set)
    <root>/<boxes_dir>/<stem>.xml       optional boxes of the evaluation images, also accepted as
                                        <boxes_dir>/<class>/<stem>.xml (matched by file stem)

Images are the files with an `IMAGE_EXTENSIONS` ending, found recursively inside each class folder
in sorted order. The val split is ``val_dir`` if given, else ``val_size`` training images carved
out, class-stratified and deterministic (``split_seed``). ``max_per_class`` keeps the first k images
(sorted names) of each class folder, for small experiments.

Every image is decoded and brought to ``image_size``² by `Geometry` (shorter side to
``resize_size``, default ``round(image_size * 256 / 224)``, then centre crop; ``crop=False``:
direct resize). When all splits would take more than 2 GiB decoded (or ``lazy: true``), images
stay on disk as `LazyImages` (decoded on demand by ``workers`` threads, optionally cached under
``cache_dir``); otherwise they are decoded once into memory.

Boxes (VOC XML: ``<size><width/><height/></size>`` and ``<object><name/><bndbox><xmin/><ymin/>
<xmax/><ymax/></bndbox></object>``, several objects per file, coordinates possibly fractional):
only objects whose ``name`` equals the image's class folder are used. A box covers the inclusive
pixel indices xmin..xmax, ymin..ymax counted from ``box_origin`` (0 for ImageNet, 1 for Pascal
VOC), i.e. the pixel-edge interval ``[xmin - o, xmax - o + 1)``. If the image file's size differs
from the XML size (images re-saved smaller), boxes scale by the size ratio. A box reaching outside
the XML size is an error naming the file, unless ``clip_boxes`` (then it is clipped and counted).
Boxes are mapped through the resize and crop (`Geometry.map_box`) and rasterised by pixel centres:
output pixel i is inside when ``lo <= i + 0.5 < hi`` (`pixel_range`). The test split then has
``boxes`` int64 (N, M, 4) (exclusive ends, padded with (0, 0, 0, 0)) and ``masks`` bool (N, S, S),
the union of the image's boxes (a lazy `BoxMasks` when the images are lazy). Evaluation images
without a usable box (no XML, no box of their class, or all boxes cropped away) follow ``no_box``:
"error" (default), "drop" (removed, counted) or "keep" (empty mask).

Corrupt images are an error naming the file; with ``skip_corrupt`` they are removed from their
split with a warning and counted in ``info["skipped_corrupt"]`` (lazy data is decoded once at build
time for this; with ``cache_dir`` that pass fills the cache).

mean/std: ``normalization="imagenet"`` (default) the standard ImageNet constants; ``"train"`` exact
statistics of the decoded train split (in memory), or of a fixed sample of 2000 train images
(lazy).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import AuglensError, ConfigError
from .base import DATASETS, Dataset, ImageSet, channel_stats
from .cifar import stratified_order
from .images import (
    IMAGE_EXTENSIONS,
    BoxMasks,
    CorruptImageError,
    Geometry,
    ImageFiles,
    LazyImages,
    boxes_mask,
    image_size,
)
from .voc import VocAnnotation, _xml_index, read_voc, voc_boxes  # noqa: F401

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Decoded size (bytes, all splits) above which ``lazy: null`` keeps images on disk.
LAZY_THRESHOLD = 2 << 30
_STATS_SAMPLE = 2000


# ----------------------------------------------------------------------------- folders


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def list_classes(split_dir: Path) -> list[str]:
    """Sorted class folder names of a split directory (hidden folders ignored)."""
    return sorted(
        e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith(".")
    )


def list_images(class_dir: Path) -> list[Path]:
    """Image files inside a class folder, recursively, sorted by relative path."""
    out = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [Path(dirpath) / f for f in filenames if _is_image(f)]
    return sorted(out, key=lambda p: p.relative_to(class_dir).as_posix())


def _layout_text(train_dir: str, test_dir: str) -> str:
    return (
        f"<root>/{train_dir}/<class>/<image> and <root>/{test_dir}/<class>/<image> "
        f"(one folder per class, images ending in {', '.join(IMAGE_EXTENSIONS[:4])}, ...)"
    )


def _check_split_dir(root: Path, sub: str, train_dir: str, test_dir: str, what: str) -> Path:
    d = root / sub
    if not d.is_dir():
        raise AuglensError(
            f"imagefolder: {what} folder not found: {d}; expected "
            f"{_layout_text(train_dir, test_dir)} under root={root}"
        )
    return d


def scan_split(
    split_dir: Path,
    class_names: list[str] | None,
    max_per_class: int | None,
    known: list[str] | None = None,
) -> tuple[list[str], list[Path], np.ndarray]:
    """(class names, image paths, labels int64) of one split folder.

    ``class_names``: restrict to these classes (None: every folder; other folders are then
    ignored). ``known``: the training classes (labels index into it; without a restriction a
    folder not among them is a class-count mismatch error)."""
    present = list_classes(split_dir)
    loose = [f for f in os.listdir(split_dir) if _is_image(f)]
    if not present:
        hint = (
            f" (it holds {len(loose)} images directly: sort them into one folder per class, "
            "e.g. with ImageNet's valprep script)"
            if loose
            else ""
        )
        raise AuglensError(f"imagefolder: {split_dir} has no class folders{hint}")
    if class_names is not None:
        missing = [c for c in class_names if c not in present]
        if missing and known is None:
            raise AuglensError(
                f"imagefolder: class folder {split_dir / missing[0]} not found "
                f"({len(missing)} of the configured classes are missing)"
            )
        present = [c for c in class_names if c in present]
    names = known if known is not None else present
    index = {c: i for i, c in enumerate(names)}
    paths: list[Path] = []
    labels: list[int] = []
    for c in present:
        if c not in index:
            raise AuglensError(
                f"imagefolder: {split_dir / c} is not a training class (the training folder has "
                f"{len(names)} classes, e.g. {', '.join(names[:3])}); class-count mismatch "
                "between splits"
            )
        files = list_images(split_dir / c)
        if not files:
            raise AuglensError(
                f"imagefolder: class folder {split_dir / c} holds no images "
                f"(files ending in {', '.join(IMAGE_EXTENSIONS)})"
            )
        if max_per_class is not None:
            files = files[:max_per_class]
        paths += files
        labels += [index[c]] * len(files)
    return names, paths, np.asarray(labels, dtype=np.int64)


# ----------------------------------------------------------------------------- builder


def _val_count(val_size: int | float, n: int) -> int:
    if isinstance(val_size, bool) or not isinstance(val_size, int | float):
        raise ConfigError(f"imagefolder: val_size must be a count or a fraction, got {val_size!r}")
    k = int(val_size) if isinstance(val_size, int) else max(1, math.floor(val_size * n))
    if isinstance(val_size, float) and not 0 < val_size < 1:
        raise ConfigError(f"imagefolder: val_size as a fraction must be in (0, 1), got {val_size}")
    if not 1 <= k <= n - 1:
        raise ConfigError(
            f"imagefolder: val_size gives {k} validation images, need 1 to {n - 1} "
            f"(the training folder has {n} images)"
        )
    return k


def _check_params(**p: Any) -> None:
    for name in ("image_size", "workers"):
        v = p[name]
        lo = 0 if name == "workers" else 8
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ConfigError(f"imagefolder: {name} must be an integer >= {lo}, got {v!r}")
    r = p["resize_size"]
    if r is not None and (isinstance(r, bool) or not isinstance(r, int) or r < p["image_size"]):
        raise ConfigError(
            f"imagefolder: resize_size must be an integer >= image_size ({p['image_size']}), "
            f"got {r!r}"
        )
    m = p["max_per_class"]
    if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
        raise ConfigError(f"imagefolder: max_per_class must be an integer >= 1, got {m!r}")
    if p["box_origin"] not in (0, 1) or isinstance(p["box_origin"], bool):
        raise ConfigError(f"imagefolder: box_origin must be 0 or 1, got {p['box_origin']!r}")
    if p["no_box"] not in ("error", "drop", "keep"):
        raise ConfigError(f"imagefolder: no_box must be error, drop or keep, got {p['no_box']!r}")
    if p["normalization"] not in ("imagenet", "train"):
        raise ConfigError(
            f"imagefolder: normalization must be 'imagenet' or 'train', got {p['normalization']!r}"
        )
    if p["lazy"] not in (None, True, False):
        raise ConfigError(f"imagefolder: lazy must be true, false or null, got {p['lazy']!r}")
    c = p["classes"]
    if c is not None and not (isinstance(c, list) and c and all(isinstance(x, str) for x in c)):
        raise ConfigError(f"imagefolder: classes must be a non-empty list of names, got {c!r}")


def _check_imagefolder(
    root: str | None = None,
    train_dir: str = "train",
    test_dir: str = "val",
    val_dir: str | None = None,
    boxes_dir: str | None = None,
    **_: Any,
) -> None:
    if root is None or not isinstance(root, str | os.PathLike):
        raise ConfigError(
            f"imagefolder: root must be a directory path, got {root!r}; expected "
            f"{_layout_text(train_dir, test_dir)}"
        )
    r = Path(root).expanduser()
    if not r.is_dir():
        raise AuglensError(
            f"imagefolder: data not found: {r} does not exist; expected "
            f"{_layout_text(train_dir, test_dir)} under root"
        )
    _check_split_dir(r, train_dir, train_dir, test_dir, "training")
    _check_split_dir(r, test_dir, train_dir, test_dir, "evaluation (test_dir)")
    if val_dir is not None:
        _check_split_dir(r, val_dir, train_dir, test_dir, "validation (val_dir)")
    if boxes_dir is not None and not (r / boxes_dir).is_dir():
        raise AuglensError(
            f"imagefolder: boxes folder not found: {r / boxes_dir}; expected one Pascal VOC XML "
            f"file per evaluation image, <boxes_dir>/<stem>.xml or <boxes_dir>/<class>/<stem>.xml"
        )


def _decode_eager(files: ImageFiles, idx: np.ndarray, skip: bool) -> tuple[torch.Tensor, list]:
    """Decode files ``idx`` into memory; (uint8 (n_ok, 3, S, S), positions of corrupt ones)."""
    s = files.geometry.size
    out = np.empty((len(idx), 3, s, s), dtype=np.uint8)

    def one(j: int) -> int | None:
        try:
            out[j] = files.load_np(int(idx[j]))
        except CorruptImageError:
            if not skip:
                raise
            return j
        return None

    bad = [j for j in files.map(one, range(len(idx))) if j is not None]
    if bad:
        out = out[np.setdiff1d(np.arange(len(idx)), bad)]
    return torch.from_numpy(out), bad


@DATASETS.register("imagefolder")
def build_imagefolder(
    root: str | None = None,
    train_dir: str = "train",
    test_dir: str = "val",
    val_dir: str | None = None,
    val_size: int | float = 0.02,
    boxes_dir: str | None = None,
    image_size: int = 224,
    resize_size: int | None = None,
    crop: bool = True,
    classes: list[str] | None = None,
    max_per_class: int | None = None,
    box_origin: int = 0,
    clip_boxes: bool = False,
    no_box: str = "error",
    normalization: str = "imagenet",
    lazy: bool | None = None,
    workers: int = 2,
    cache_dir: str | None = None,
    skip_corrupt: bool = False,
    split_seed: int = 0,
    fingerprint: str = "stat",
) -> Dataset:
    """ImageNet-style class folders ``root/<split>/<class>/<image>``, optional VOC XML boxes.

    train_dir / test_dir (default "val", ImageNet's evaluation set) / val_dir: split folders under
    root; without val_dir, val_size (count, or fraction of train) images are carved from train
    (stratified, split_seed). boxes_dir: VOC XML boxes of the test images → test boxes (N, M, 4)
    and masks. image_size / resize_size / crop: geometry (module docstring). classes: subset of
    class folders; max_per_class: first k images per class folder. box_origin (0 ImageNet, 1 VOC),
    clip_boxes, no_box ("error" | "drop" | "keep"): box handling. normalization: "imagenet" or
    "train". lazy (None: by size), workers, cache_dir: on-demand decoding. skip_corrupt: drop
    undecodable images with a warning instead of failing. fingerprint: how a run's keys identify
    the files ("stat": list, sizes and modification times; "content": sha256 of every file).
    """
    t0 = time.perf_counter()
    _check_imagefolder(root, train_dir, test_dir, val_dir, boxes_dir)
    _check_params(
        image_size=image_size, resize_size=resize_size, max_per_class=max_per_class,
        box_origin=box_origin, no_box=no_box, normalization=normalization, lazy=lazy,
        classes=classes, workers=workers,
    )  # fmt: skip
    r = Path(root).expanduser()  # type: ignore[arg-type]
    geometry = Geometry(
        image_size,
        resize_size if resize_size is not None else round(image_size * 256 / 224),
        bool(crop),
    )
    class_names, tr_paths, tr_y = scan_split(r / train_dir, classes, max_per_class)
    _, te_paths, te_y = scan_split(r / test_dir, classes, max_per_class, known=class_names)
    if val_dir is not None:
        _, va_paths, va_y = scan_split(r / val_dir, classes, max_per_class, known=class_names)
        tr_idx = np.arange(len(tr_paths))
    else:
        k = _val_count(val_size, len(tr_paths))
        order = stratified_order(tr_y, int(split_seed))
        va_sel, tr_idx = np.sort(order[:k]), np.sort(order[k:])
    n_total = len(tr_paths) + len(te_paths) + (len(va_paths) if val_dir is not None else 0)
    if lazy is None:
        lazy = n_total * 3 * image_size * image_size > LAZY_THRESHOLD
    tr_files = ImageFiles(tr_paths, geometry, workers, cache_dir)
    te_files = ImageFiles(te_paths, geometry, workers, cache_dir)
    va_files = ImageFiles(va_paths, geometry, workers, cache_dir) if val_dir else tr_files
    if val_dir is None:
        splits_idx = {"train": tr_idx, "val": va_sel, "test": np.arange(len(te_paths))}
    else:
        splits_idx = {
            "train": tr_idx,
            "val": np.arange(len(va_paths)),
            "test": np.arange(len(te_paths)),
        }
    files = {"train": tr_files, "val": va_files, "test": te_files}
    labels = {
        "train": tr_y,
        "val": va_y if val_dir is not None else tr_y,
        "test": te_y,
    }
    info: dict[str, Any] = {
        "root": str(r),
        "geometry": geometry.key(),
        "lazy": bool(lazy),
        "normalization": normalization,
        "skipped_corrupt": {},
    }

    # decode (eager) or check (lazy + skip_corrupt); drop corrupt images
    images: dict[str, Any] = {}
    for split in ("train", "val", "test"):
        idx = splits_idx[split]
        if not lazy:
            x, bad = _decode_eager(files[split], idx, skip_corrupt)
        else:
            bad_files = set(files[split].find_corrupt(idx)) if skip_corrupt else set()
            bad = [j for j, i in enumerate(idx) if int(i) in bad_files]
            x = None
        if bad:
            paths = [str(files[split].paths[int(idx[j])]) for j in bad]
            warnings.warn(
                f"imagefolder: skipped {len(bad)} corrupt {split} images (e.g. {paths[0]})",
                stacklevel=2,
            )
            info["skipped_corrupt"][split] = len(bad)
            info.setdefault("corrupt_files", []).extend(paths[:20])
            idx = np.delete(idx, bad)
            splits_idx[split] = idx
        images[split] = x if x is not None else LazyImages(files[split], idx)
        if len(idx) == 0:
            raise AuglensError(f"imagefolder: the {split} split has no usable images")

    # boxes of the test split
    test_boxes = test_masks = None
    if boxes_dir is not None:
        test_boxes, keep, counts = _test_boxes(
            r / boxes_dir, te_files, splits_idx["test"], te_y, class_names, geometry,
            box_origin, bool(clip_boxes), no_box,
        )  # fmt: skip
        info["boxes"] = counts
        if keep is not None:
            splits_idx["test"] = splits_idx["test"][keep]
            images["test"] = (
                LazyImages(te_files, splits_idx["test"])
                if lazy
                else images["test"][torch.from_numpy(keep)]
            )
            test_boxes = test_boxes[torch.from_numpy(keep)]
        test_masks = (
            BoxMasks(test_boxes, image_size, image_size)
            if lazy
            else boxes_mask(test_boxes, image_size, image_size)
        )

    sets = {
        split: ImageSet(
            images[split], torch.from_numpy(labels[split][splits_idx[split]].copy())
        )
        for split in ("train", "val", "test")
    }
    sets["test"].boxes, sets["test"].masks = test_boxes, test_masks
    if normalization == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        tr = sets["train"].images
        if isinstance(tr, LazyImages):
            n = len(tr)
            pick = np.sort(np.random.default_rng(0).permutation(n)[: min(n, _STATS_SAMPLE)])
            tr = tr[pick]
            info["stats_images"] = int(pick.size)
        mean, std = channel_stats(tr.numpy())
    info["sizes"] = {k: len(v) for k, v in sets.items()}
    info["build_seconds"] = time.perf_counter() - t0
    return Dataset(
        name="imagefolder",
        train=sets["train"],
        val=sets["val"],
        test=sets["test"],
        class_names=class_names,
        mean=mean,
        std=std,
        info=info,
    )


build_imagefolder.check = _check_imagefolder  # type: ignore[attr-defined]


def _imagefolder_files(root: str | None = None, train_dir: str = "train", test_dir: str = "val",
                       val_dir: str | None = None, boxes_dir: str | None = None,
                       fingerprint: str = "stat", **_: Any) -> tuple[dict[str, list[Path]], Path]:
    """The files each split reads (for the run's keys, `auglens.data.fingerprint`): ``train``
    = every image of train_dir (and val_dir), ``test`` = test_dir's images and the box files."""
    if fingerprint not in ("stat", "content"):
        raise ConfigError(f"imagefolder: fingerprint must be 'stat' (file list, sizes, "
                          f"modification times) or 'content' (sha256), got {fingerprint!r}")
    r = Path(str(root)).expanduser()

    def images(sub: str | None) -> list[Path]:
        if sub is None or not (r / sub).is_dir():
            return []
        return [p for p in (r / sub).rglob("*") if p.is_file() and _is_image(p.name)]

    boxes = ([p for p in (r / boxes_dir).rglob("*.xml") if p.is_file()]
             if boxes_dir is not None and (r / boxes_dir).is_dir() else [])
    return {"train": images(train_dir) + images(val_dir),
            "test": images(test_dir) + boxes}, r


build_imagefolder.files = _imagefolder_files  # type: ignore[attr-defined]


def _test_boxes(
    boxes_dir: Path,
    files: ImageFiles,
    idx: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    geometry: Geometry,
    origin: int,
    clip: bool,
    no_box: str,
) -> tuple[torch.Tensor, np.ndarray | None, dict[str, int]]:
    """(boxes int64 (N, M, 4), kept positions or None, counts) for test images ``idx``."""
    xml = _xml_index(boxes_dir)
    paths = [files.paths[int(i)] for i in idx]
    classes = [class_names[int(labels[int(i)])] for i in idx]

    def one(j: int) -> tuple[list, int, str | None]:
        p, c = paths[j], classes[j]
        x = xml.get((c, p.stem)) or xml.get(("", p.stem))
        if x is None:
            return [], 0, "no annotation file"
        b, clipped = voc_boxes(read_voc(x), c, image_size(p), geometry, origin, clip)
        return b, clipped, (None if b else f"no box of class '{c}' inside the crop in {x}")

    results = files.map(one, range(len(paths)))
    missing = [(paths[j], why) for j, (_, _, why) in enumerate(results) if why]
    counts = {
        "images": len(paths),
        "boxes": sum(len(b) for b, _, _ in results),
        "clipped": sum(c for _, c, _ in results),
        "without_box": len(missing),
    }
    if missing and no_box == "error":
        p, why = missing[0]
        raise AuglensError(
            f"imagefolder: {len(missing)} of {len(paths)} evaluation images have no usable box, "
            f"e.g. {p} ({why}); expected {boxes_dir}/<stem>.xml with a box of the image's class. "
            "Set no_box: drop (remove them) or keep (empty mask)"
        )
    m = max([1] + [len(b) for b, _, _ in results])
    boxes = torch.zeros((len(paths), m, 4), dtype=torch.int64)
    for j, (b, _, _) in enumerate(results):
        if b:
            boxes[j, : len(b)] = torch.tensor(b, dtype=torch.int64)
    keep = None
    if missing and no_box == "drop":
        keep = np.asarray([j for j, (_, _, why) in enumerate(results) if not why], dtype=np.int64)
        counts["dropped"] = len(missing)
        if keep.size == 0:
            raise AuglensError(f"imagefolder: no evaluation image has a usable box in {boxes_dir}")
    return boxes, keep, counts
