"""Built-in synthetic dataset ``shapes``: 10 geometric shapes on textured, cluttered backgrounds.

Nothing is downloaded: every image is generated deterministically from ``seed`` and cached on disk
as one ``.npz`` per parameter set. Each image shows one object (the class) in a flat colour from
``OBJECT_COLORS``, at a random scale, position and rotation, on a background with one of
``TEXTURES`` in one of ``BACKGROUND_COLORS``, with 1-3 small clutter items (blobs and short lines
in other object colours) drawn under the object.

Conventions
-----------
* Geometry is defined on a 32×32 *base canvas* (pixel centres at ``i + 0.5``); an image of side S
  samples the same scene at pixel centres ``(i + 0.5) * 32 / S``, so shapes scale with the size.
* Object pixels are hard-edged and noise-free: ``image[:, mask] == OBJECT_COLORS[color]`` exactly
  and ``mask`` is exactly ``shape_inside(label, u, v)`` at the pixel centres, where
  ``u = (dx*cos(a) + dy*sin(a)) / r``, ``v = (-dx*sin(a) + dy*cos(a)) / r``,
  ``(dx, dy) = (x - cx, y - cy)`` in base pixels (x right, y down) and ``(cx, cy), r, a`` are the
  scene's ``center``, ``radius`` and ``angle`` (see ``Scenes``). Every shape lies in the unit disc.
* Off the object, a per-image brightness factor (0.85-1.15, background only) and per-pixel integer
  noise (uniform in [-4, 4], background and clutter) are applied; no off-mask pixel ever equals the
  object colour (palettes are far apart and clutter never uses the object's colour).
* Concept layers (``CONCEPT_LAYERS``): 0 shape and 1 object colour label exactly the mask pixels;
  2 background texture and 3 background colour label exactly the *visible background* pixels, i.e.
  neither object nor clutter. Clutter pixels are unlabelled (0) in every layer.
* Splits use independent seeds (``[seed, split, chunk]``), in fixed chunks of 1000 scenes, so
  changing one split's size leaves the other splits unchanged and keeps the first images of a
  split unchanged (images ``[:n]`` are the same for every size ``>= n``). Classes are balanced:
  images ``[10*i : 10*i + 10]`` of a split hold each class exactly once.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from ..utils import atomic_path
from .base import DATASETS, Dataset, ImageSet, channel_stats

#: Bump when the generated images change for the same parameters (invalidates caches).
GENERATOR_VERSION = 2
#: Side of the base canvas on which all geometry is defined (pixels).
BASE_SIZE = 32

#: Class names; class k is ``SHAPES[k]``.
SHAPES: tuple[str, ...] = (
    "circle",
    "ring",
    "triangle",
    "square",
    "star",
    "plus",
    "crescent",
    "half_disc",
    "bar",
    "tee",
)
#: Object colour palette, name -> RGB (saturated; far from every background colour).
OBJECT_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (40, 190, 40),
    "blue": (40, 70, 230),
    "yellow": (240, 220, 30),
    "cyan": (30, 210, 220),
    "magenta": (220, 40, 220),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
}
#: Background textures; pattern pixels are the background colour darkened by ``TEXTURE_DARKEN``.
TEXTURES: tuple[str, ...] = ("plain", "stripes", "checker", "dots", "grid", "noise")
#: Background colour palette, name -> RGB (muted).
BACKGROUND_COLORS: dict[str, tuple[int, int, int]] = {
    "sand": (190, 170, 120),
    "slate": (105, 120, 140),
    "moss": (100, 125, 80),
    "brick": (160, 95, 80),
    "grey": (128, 128, 128),
    "plum": (125, 90, 125),
}
TEXTURE_DARKEN = 0.45
#: Concept layers of ``ImageSet.concepts`` (axis 1), in order.
CONCEPT_LAYERS: tuple[str, ...] = ("shape", "object_color", "bg_texture", "bg_color")
#: First global concept id of each layer; id = offset + index into the layer's palette.
CONCEPT_OFFSETS: dict[str, int] = {
    "shape": 1,
    "object_color": 1 + len(SHAPES),
    "bg_texture": 1 + len(SHAPES) + len(OBJECT_COLORS),
    "bg_color": 1 + len(SHAPES) + len(OBJECT_COLORS) + len(TEXTURES),
}
#: Global concept names; id 0 is "unlabelled".
CONCEPT_NAMES: tuple[str, ...] = (
    ("unlabelled",) + SHAPES + tuple(OBJECT_COLORS) + TEXTURES + tuple(BACKGROUND_COLORS)
)
#: Category of each global concept id ("" for id 0), from ``base.CONCEPT_CATEGORIES``.
CONCEPT_CATEGORY: tuple[str, ...] = (
    ("",)
    + ("object",) * len(SHAPES)
    + ("color",) * len(OBJECT_COLORS)
    + ("texture",) * len(TEXTURES)
    + ("color",) * len(BACKGROUND_COLORS)
)
SPLITS: tuple[str, ...] = ("train", "val", "test")

_CHUNK = 1000  # scenes per seeded chunk (fixes the random streams; never change without a bump)
_PIXEL_BUDGET = 1 << 20  # pixels per rendering block (bounds memory)
_MAX_CLUTTER = 3
_RADIUS = (0.25 * BASE_SIZE, 0.40 * BASE_SIZE)  # object bounding radius: 50-80 % of the side
_NOISE = 4
_OBJ_RGB = np.array(list(OBJECT_COLORS.values()), dtype=np.float64)
_BG_RGB = np.array(list(BACKGROUND_COLORS.values()), dtype=np.float64)


# ----------------------------------------------------------------------------- shapes


def shape_inside(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """bool array like ``u``: whether local unit coordinates ``(u, v)`` lie in ``SHAPES[shape]``.

    Shapes are centred on the origin, lie inside the unit disc, and are given unrotated.
    """
    r2 = u * u + v * v
    au, av = np.abs(u), np.abs(v)
    name = SHAPES[shape]
    if name == "circle":
        return r2 <= 0.85**2
    if name == "ring":
        return (r2 <= 0.95**2) & (r2 >= 0.5**2)
    if name == "triangle":  # equilateral, circumradius 0.98, one vertex pointing to -v
        h = 0.49
        c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
        return (v <= h) & (c * u - s * v <= h) & (-c * u - s * v <= h)
    if name == "square":
        return np.maximum(au, av) <= 0.68
    if name == "star":  # 5 points, outer radius 0.98, inner radius 0.42
        sector = 2 * math.pi / 5
        phi = np.mod(np.arctan2(v, u), sector)
        phi = np.minimum(phi, sector - phi)  # fold onto [0, pi/5]
        rad = np.sqrt(r2)
        px, py = rad * np.cos(phi), rad * np.sin(phi)
        ax, bx, by = 0.98, 0.42 * math.cos(sector / 2), 0.42 * math.sin(sector / 2)
        # inside = same side of the edge A=(ax, 0) -> B=(bx, by) as the origin
        return (bx - ax) * py - by * (px - ax) >= 0
    if name == "plus":
        return ((au <= 0.28) & (av <= 0.95)) | ((av <= 0.28) & (au <= 0.95))
    if name == "crescent":
        return (r2 <= 0.95**2) & ((u - 0.42) ** 2 + v * v > 0.75**2)
    if name == "half_disc":
        return (r2 <= 0.98**2) & (v >= 0)
    if name == "bar":
        return (au <= 0.92) & (av <= 0.3)
    if name == "tee":
        return ((au <= 0.72) & (v >= 0.3) & (v <= 0.68)) | ((au <= 0.2) & (v >= -0.9) & (v <= 0.3))
    raise ValueError(f"unknown shape index {shape}")


# ----------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class Scenes:
    """Random parameters of N scenes (numpy arrays, first axis N); lengths are in base pixels.

    labels int64 (N,) class; color int64 (N,) index into OBJECT_COLORS; texture, bg_color int64 (N,)
    indices into TEXTURES, BACKGROUND_COLORS; center float64 (N, 2) object centre (x, y); radius
    float64 (N,) bounding radius; angle float64 (N,) rotation in radians (see module docstring);
    brightness float64 (N,) background factor; tex_phase float64 (N, 2); tex_orient int64 (N,)
    stripe orientation in multiples of 45°; noise_bits bool (N, 16, 16) the "noise" texture;
    clutter_active bool (N, 3); clutter_p float64 (N, 3, 2) centre (x, y); clutter_len,
    clutter_width, clutter_angle float64 (N, 3) segment length (0 for blobs), half-width, angle;
    clutter_color int64 (N, 3) index into OBJECT_COLORS (never the object's colour).
    """

    labels: np.ndarray
    color: np.ndarray
    texture: np.ndarray
    bg_color: np.ndarray
    center: np.ndarray
    radius: np.ndarray
    angle: np.ndarray
    brightness: np.ndarray
    tex_phase: np.ndarray
    tex_orient: np.ndarray
    noise_bits: np.ndarray
    clutter_active: np.ndarray
    clutter_p: np.ndarray
    clutter_len: np.ndarray
    clutter_width: np.ndarray
    clutter_angle: np.ndarray
    clutter_color: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, sl: slice | np.ndarray) -> Scenes:
        return Scenes(**{f.name: getattr(self, f.name)[sl] for f in fields(self)})

    @staticmethod
    def concat(parts: list[Scenes]) -> Scenes:
        return Scenes(
            **{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Scenes)}
        )


def _sample_chunk(seed: int, split: int, chunk: int, spurious_strength: float) -> Scenes:
    """All ``_CHUNK`` scenes of one chunk; the draws never depend on anything but the three ids."""
    rng = np.random.default_rng([seed, split, chunk, 0])
    n, k = _CHUNK, _MAX_CLUTTER
    n_cls, n_col, n_tex = len(SHAPES), len(OBJECT_COLORS), len(TEXTURES)
    labels = rng.permuted(np.tile(np.arange(n_cls, dtype=np.int64), (n // n_cls, 1)), axis=1)
    labels = labels.ravel()  # each block of 10 consecutive scenes holds every class once
    color = rng.integers(0, n_col, n)
    random_tex = rng.integers(0, n_tex, n)
    cue = rng.random(n) < spurious_strength
    texture = np.where(cue, labels % n_tex, random_tex).astype(np.int64)
    bg_color = rng.integers(0, len(BACKGROUND_COLORS), n)
    radius = rng.uniform(*_RADIUS, n)
    center = rng.uniform(radius[:, None], BASE_SIZE - radius[:, None], (n, 2))
    angle = rng.uniform(0.0, 2 * math.pi, n)
    brightness = rng.uniform(0.85, 1.15, n)
    tex_phase = rng.uniform(0.0, 24.0, (n, 2))
    tex_orient = rng.integers(0, 4, n)
    noise_bits = rng.random((n, 16, 16)) < 0.5
    n_clutter = rng.integers(1, k + 1, n)
    clutter_active = np.arange(k)[None, :] < n_clutter[:, None]
    clutter_p = rng.uniform(1.0, BASE_SIZE - 1.0, (n, k, 2))
    is_line = rng.random((n, k)) < 0.5
    clutter_len = np.where(is_line, rng.uniform(4.0, 8.0, (n, k)), 0.0)
    clutter_width = np.where(is_line, 0.6, rng.uniform(1.2, 2.2, (n, k)))
    clutter_angle = rng.uniform(0.0, math.pi, (n, k))
    clutter_color = (color[:, None] + rng.integers(1, n_col, (n, k))) % n_col
    if split != 0:  # the spurious cue exists in train only
        texture = random_tex.astype(np.int64)
    return Scenes(
        labels, color, texture, bg_color, center, radius, angle, brightness, tex_phase,
        tex_orient, noise_bits, clutter_active, clutter_p, clutter_len, clutter_width,
        clutter_angle, clutter_color,
    )  # fmt: skip


def sample_scenes(n: int, split: str, seed: int = 0, spurious_strength: float = 0.0) -> Scenes:
    """The first ``n`` scenes of ``split`` ("train", "val" or "test"), as ``build_shapes`` uses."""
    sid = SPLITS.index(split)
    parts = [
        _sample_chunk(seed, sid, c, spurious_strength).take(slice(0, min(_CHUNK, n - c * _CHUNK)))
        for c in range(math.ceil(n / _CHUNK))
    ]
    return Scenes.concat(parts) if parts else _sample_chunk(seed, sid, 0, 0.0).take(slice(0, 0))


# ----------------------------------------------------------------------------- rendering


def _texture_pattern(sc: Scenes, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """bool (B, S, S): True where the texture darkens the background colour."""
    b, s = len(sc), x.shape[-1]
    out = np.zeros((b, s, s), dtype=bool)
    for t, name in enumerate(TEXTURES):
        idx = np.flatnonzero(sc.texture == t)
        if idx.size == 0 or name == "plain":
            continue
        px = sc.tex_phase[idx, 0, None, None]
        py = sc.tex_phase[idx, 1, None, None]
        if name == "stripes":
            a = sc.tex_orient[idx, None, None] * (math.pi / 4)
            d = x * np.cos(a) + y * np.sin(a) + px
            out[idx] = np.mod(d, 6.0) < 3.0
        elif name == "checker":
            out[idx] = (np.floor((x + px) / 4.0) + np.floor((y + py) / 4.0)) % 2 == 1
        elif name == "dots":
            dx, dy = np.mod(x + px, 6.0) - 3.0, np.mod(y + py, 6.0) - 3.0
            out[idx] = dx * dx + dy * dy <= 1.7**2
        elif name == "grid":
            out[idx] = (np.mod(x + px, 6.0) < 1.0) | (np.mod(y + py, 6.0) < 1.0)
        elif name == "noise":
            cx = np.minimum((x[0, 0] / 2.0).astype(np.int64), 15)
            cy = np.minimum((y[0, :, 0] / 2.0).astype(np.int64), 15)
            out[idx] = sc.noise_bits[idx][:, cy[:, None], cx[None, :]]
    return out


def _object_mask(sc: Scenes, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """bool (B, S, S): the inside test of each scene's object at the pixel centres ``x``, ``y``."""
    b, s = len(sc), x.shape[-1]
    mask = np.zeros((b, s, s), dtype=bool)
    cos_a, sin_a = np.cos(sc.angle), np.sin(sc.angle)
    for k in range(len(SHAPES)):
        idx = np.flatnonzero(sc.labels == k)
        if idx.size == 0:
            continue
        dx = x - sc.center[idx, 0, None, None]
        dy = y - sc.center[idx, 1, None, None]
        c, sn, r = cos_a[idx, None, None], sin_a[idx, None, None], sc.radius[idx, None, None]
        u = (dx * c + dy * sn) / r
        v = (-dx * sn + dy * c) / r
        mask[idx] = shape_inside(k, u, v)
    return mask


def _render_block(
    sc: Scenes, size: int, noise: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render scenes → (images uint8 (B, 3, S, S), mask bool (B, S, S), visible background bool)."""
    coord = (np.arange(size, dtype=np.float64) + 0.5) * (BASE_SIZE / size)
    x, y = coord[None, None, :], coord[None, :, None]
    pattern = _texture_pattern(sc, x, y)
    base = _BG_RGB[sc.bg_color] * sc.brightness[:, None]  # (B, 3)
    img = base[:, :, None, None] * (1.0 - TEXTURE_DARKEN * pattern[:, None])
    clutter = np.zeros(pattern.shape, dtype=bool)
    for j in range(_MAX_CLUTTER):
        cx = sc.clutter_p[:, j, 0, None, None]
        cy = sc.clutter_p[:, j, 1, None, None]
        ux = np.cos(sc.clutter_angle[:, j])[:, None, None]
        uy = np.sin(sc.clutter_angle[:, j])[:, None, None]
        half = sc.clutter_len[:, j, None, None] / 2.0
        dx, dy = x - cx, y - cy
        t = np.clip(dx * ux + dy * uy, -half, half)  # closest point on the segment
        ex, ey = dx - t * ux, dy - t * uy
        w = sc.clutter_width[:, j, None, None]
        m = (ex * ex + ey * ey <= w * w) & sc.clutter_active[:, j, None, None]
        col = _OBJ_RGB[sc.clutter_color[:, j]][:, :, None, None]
        img = np.where(m[:, None], col, img)
        clutter |= m
    img = np.clip(np.rint(img + noise), 0, 255).astype(np.uint8)
    mask = _object_mask(sc, x, y)
    obj = _OBJ_RGB[sc.color].astype(np.uint8)[:, :, None, None]
    img = np.where(mask[:, None], obj, img)
    return img, mask, ~mask & ~clutter


def _render_split(
    n: int, split: str, size: int, seed: int, spurious_strength: float
) -> dict[str, np.ndarray]:
    """Generate the first ``n`` images of a split; arrays as stored in the cache."""
    sid = SPLITS.index(split)
    images = np.empty((n, 3, size, size), dtype=np.uint8)
    masks = np.empty((n, size, size), dtype=bool)
    visible = np.empty((n, size, size), dtype=bool)
    scenes = []
    block = max(1, _PIXEL_BUDGET // (size * size))
    for c in range(math.ceil(n / _CHUNK)):
        lo_c = c * _CHUNK
        m = min(_CHUNK, n - lo_c)
        sc = _sample_chunk(seed, sid, c, spurious_strength).take(slice(0, m))
        scenes.append(sc)
        noise_rng = np.random.default_rng([seed, sid, c, 1])
        for lo in range(0, m, block):
            hi = min(m, lo + block)
            noise = noise_rng.integers(-_NOISE, _NOISE + 1, (hi - lo, 3, size, size), np.int16)
            img, mask, vis = _render_block(sc.take(slice(lo, hi)), size, noise)
            images[lo_c + lo : lo_c + hi] = img
            masks[lo_c + lo : lo_c + hi] = mask
            visible[lo_c + lo : lo_c + hi] = vis
    all_sc = Scenes.concat(scenes)
    if not masks.reshape(n, -1).any(axis=1).all():  # pragma: no cover - geometry guarantees it
        raise RuntimeError("shapes: an object mask is empty")
    return {
        "images": images,
        "labels": all_sc.labels,
        "ids": np.stack([all_sc.color, all_sc.texture, all_sc.bg_color], axis=1),
        "masks": np.packbits(masks.reshape(n, -1), axis=1),
        "visible": np.packbits(visible.reshape(n, -1), axis=1),
    }


def _image_set(arr: dict[str, np.ndarray], size: int) -> ImageSet:
    """Cache arrays of one split → ImageSet with boxes and concepts derived from the masks."""
    n = arr["labels"].shape[0]
    hw = size * size
    masks = np.unpackbits(arr["masks"], axis=1, count=hw).view(bool).reshape(n, size, size)
    visible = np.unpackbits(arr["visible"], axis=1, count=hw).view(bool).reshape(n, size, size)
    labels = arr["labels"].astype(np.int64)
    color, texture, bg_color = (arr["ids"][:, i].astype(np.int64) for i in range(3))
    concepts = np.zeros((n, len(CONCEPT_LAYERS), size, size), dtype=np.int16)
    per_layer = (
        (masks, CONCEPT_OFFSETS["shape"] + labels),
        (masks, CONCEPT_OFFSETS["object_color"] + color),
        (visible, CONCEPT_OFFSETS["bg_texture"] + texture),
        (visible, CONCEPT_OFFSETS["bg_color"] + bg_color),
    )
    for layer, (where, ids) in enumerate(per_layer):
        concepts[:, layer] = where * ids.astype(np.int16)[:, None, None]
    rows, cols = masks.any(axis=2), masks.any(axis=1)  # (N, H), (N, W)
    y1, x1 = rows.argmax(axis=1), cols.argmax(axis=1)
    y2, x2 = size - rows[:, ::-1].argmax(axis=1), size - cols[:, ::-1].argmax(axis=1)
    boxes = np.stack([x1, y1, x2, y2], axis=1).astype(np.int64)
    return ImageSet(
        images=torch.from_numpy(arr["images"]),
        labels=torch.from_numpy(labels),
        masks=torch.from_numpy(masks),
        boxes=torch.from_numpy(boxes),
        concepts=torch.from_numpy(concepts),
    )


# ----------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    """``$AUGLENS_CACHE`` if set, else ``~/.cache/auglens``."""
    env = os.environ.get("AUGLENS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "auglens"


def _cache_path(root: Path, params: dict) -> Path:
    key = json.dumps(params, sort_keys=True)
    return root / f"shapes-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"


def _expected_shapes(params: dict) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    s = params["image_size"]
    packed = math.ceil(s * s / 8)
    out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    for split in SPLITS:
        n = params[f"n_{split}"]
        out[f"{split}/images"] = ((n, 3, s, s), np.dtype(np.uint8))
        out[f"{split}/labels"] = ((n,), np.dtype(np.int64))
        out[f"{split}/ids"] = ((n, 3), np.dtype(np.int64))
        out[f"{split}/masks"] = ((n, packed), np.dtype(np.uint8))
        out[f"{split}/visible"] = ((n, packed), np.dtype(np.uint8))
    return out


def _load_cache(path: Path, params: dict) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None if the file is missing, corrupt or for other parameters."""
    if not path.is_file():
        return None
    try:
        expected = _expected_shapes(params)
        with np.load(path, allow_pickle=False) as z:
            if json.loads(str(z["params"])) != params:
                raise ValueError("parameters differ")
            arrays = {k: z[k] for k in expected}  # reading a member checks its zip CRC-32
        for k, (shape, dtype) in expected.items():
            if arrays[k].shape != shape or arrays[k].dtype != dtype:
                raise ValueError(f"{k}: {arrays[k].dtype}{arrays[k].shape}, want {dtype}{shape}")
        return arrays
    except Exception as e:  # noqa: BLE001 - any unreadable cache is rebuilt
        warnings.warn(f"shapes: ignoring unreadable cache {path} ({e!r}); rebuilding", stacklevel=3)
        return None


def _save_cache(path: Path, params: dict, arrays: dict[str, np.ndarray]) -> bool:
    """Write the cache atomically (`auglens.utils.atomic_path`); False on error (the dataset is
    still returned, only not cached)."""
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, params=np.array(json.dumps(params, sort_keys=True)), **arrays)
            f.flush()
            os.fsync(f.fileno())
        return True
    except OSError as e:
        warnings.warn(f"shapes: could not write cache {path} ({e}); continuing", stacklevel=3)
        return False


# ----------------------------------------------------------------------------- builder


def _check_int(name: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not lo <= value <= hi:
        raise ConfigError(f"shapes: {name} must be an integer in [{lo}, {hi}], got {value!r}")
    return int(value)


@DATASETS.register("shapes")
def build_shapes(
    n_train: int = 10000,
    n_val: int = 2000,
    n_test: int = 2000,
    image_size: int = 32,
    seed: int = 0,
    spurious_strength: float = 0.0,
    root: str | os.PathLike | None = None,
) -> Dataset:
    """Synthetic shapes: 10 classes (``SHAPES``), generated from ``seed`` and cached under ``root``.

    n_train / n_val / n_test: split sizes, each in [1, 1000000]. image_size: side S in [16, 512]
    (square RGB images). seed: integer in [0, 2**32 - 1]. spurious_strength: in [0, 1]; in train
    only, each image's background texture is ``TEXTURES[label % 6]`` with this probability, else
    uniformly random (val/test: always random). root: cache directory (default
    ``default_cache_dir()``).

    Each split has images uint8 (N, 3, S, S), labels int64 (N,), masks bool (N, S, S), boxes int64
    (N, 4) tight around the mask, concepts int16 (N, 4, S, S) with layers ``CONCEPT_LAYERS``.
    mean/std are computed on the train split. ``info`` holds ``params``, ``cache_file``,
    ``from_cache``, ``concept_layers`` and ``build_seconds``.
    """
    limit = 1_000_000
    params = {
        "generator_version": GENERATOR_VERSION,
        "n_train": _check_int("n_train", n_train, 1, limit),
        "n_val": _check_int("n_val", n_val, 1, limit),
        "n_test": _check_int("n_test", n_test, 1, limit),
        "image_size": _check_int("image_size", image_size, 16, 512),
        "seed": _check_int("seed", seed, 0, 2**32 - 1),
    }
    s = spurious_strength
    if isinstance(s, bool) or not isinstance(s, int | float) or not 0.0 <= s <= 1.0:
        raise ConfigError(f"shapes: spurious_strength must be a number in [0, 1], got {s!r}")
    params["spurious_strength"] = float(s)
    if root is not None and not isinstance(root, str | os.PathLike):
        raise ConfigError(f"shapes: root must be a directory path or None, got {root!r}")
    cache_dir = Path(root).expanduser() if root is not None else default_cache_dir()
    path = _cache_path(cache_dir, params)

    t0 = time.perf_counter()
    arrays = _load_cache(path, params)
    from_cache = arrays is not None
    if arrays is None:
        arrays = {}
        for split in SPLITS:
            out = _render_split(
                params[f"n_{split}"], split, params["image_size"], params["seed"], float(s)
            )
            arrays.update({f"{split}/{k}": v for k, v in out.items()})
        _save_cache(path, params, arrays)
    size = params["image_size"]
    sets = {
        split: _image_set(
            {k.split("/")[1]: v for k, v in arrays.items() if k.startswith(split + "/")}, size
        )
        for split in SPLITS
    }
    mean, std = channel_stats(arrays["train/images"])
    return Dataset(
        name="shapes",
        train=sets["train"],
        val=sets["val"],
        test=sets["test"],
        class_names=list(SHAPES),
        mean=mean,
        std=std,
        concept_names=list(CONCEPT_NAMES),
        concept_categories=list(CONCEPT_CATEGORY),
        info={
            "params": dict(params),
            "cache_file": str(path),
            "from_cache": from_cache,
            "concept_layers": list(CONCEPT_LAYERS),
            "build_seconds": time.perf_counter() - t0,
        },
    )
