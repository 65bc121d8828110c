"""Image files → fixed-size uint8 tensors, and a lazy container the trainer indexes like a tensor.

Geometry (`Geometry`): an image of W×H pixels becomes S×S (``size``) by

* ``crop=True`` (default, the usual ImageNet evaluation transform): resize so that the shorter
  side is ``resize`` (the longer side is ``int(resize * long / short)``, truncated, as
  torchvision's ``Resize(int)``), then take the centre ``size``×``size`` crop at offset
  ``left = round((w' - S) / 2)``, ``top = round((h' - S) / 2)`` (Python ``round``, as
  torchvision's ``center_crop``);
* ``crop=False``: resize to S×S directly (aspect ratio not kept).

Files are resized with Pillow's bilinear filter, which is antialiased when downscaling
(`Geometry.apply_pil`, single-threaded; `Geometry.apply` does the same on tensors with
torchvision, equal up to ±1). A point (x, y) in original pixel-edge coordinates (pixel i spans
[i, i+1)) maps to ``(x * w'/W - left, y * h'/H - top)``; `Geometry.map_box` applies that to boxes.

Decoding: Pillow (JPEG, PNG, WEBP, BMP, TIFF, ...; torchvision's decoders are deprecated since
0.29), then `to_rgb`: EXIF orientation applied (so boxes refer to the image as displayed),
16-bit images scaled to 8 bits (v → round(v · 255 / 65535)), float images in [0, 1] scaled by 255,
anything with transparency (RGBA, LA, PA, palette with a transparent colour) composited over black,
grey / bilevel / palette / CMYK / YCbCr converted by Pillow. A file Pillow cannot decode, including
a truncated one, is *corrupt*: `CorruptImageError` names it; a mode with no faithful 8-bit RGB
conversion (e.g. 32-bit integers beyond 16 bits, floats outside [0, 1]) names the file and mode.

`LazyImages` holds file paths and decodes on demand with a thread pool (``workers`` threads; 0 =
in the calling thread), optionally through an on-disk cache (`ImageFiles`): one file per file
list and geometry, with a "done" byte per image followed by the decoded images, written in place
(memory-mapped) as images are first decoded, so a second epoch or process reads instead of
decoding. ``images[idx]`` returns uint8 tensors like a tensor of shape ``images.shape`` would.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import AuglensError

#: File name endings treated as images when listing folders (compared in lower case).
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm",
)  # fmt: skip
#: Bump when decoded pixels change for the same file and geometry (invalidates disk caches).
DECODER_VERSION = 3
_CACHE_ALIGN = 4096


class CorruptImageError(AuglensError):
    """An image file that cannot be decoded; the message names the file."""


# ----------------------------------------------------------------------------- decoding


_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


def to_rgb(im: Any, name: str = "image") -> Any:
    """A loaded ``PIL.Image`` of any mode → an 8-bit RGB ``PIL.Image`` (module docstring:
    orientation, 16-bit and float scaling, alpha over black); ``name`` appears in errors."""
    from PIL import Image, ImageOps

    im = ImageOps.exif_transpose(im)
    mode = im.mode
    if mode in _SIXTEEN_BIT or mode in ("I", "F"):
        a = np.asarray(im)
        if mode == "F":
            if not (np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1):
                raise CorruptImageError(f"{name}: float image (mode F) with values outside "
                                        "[0, 1]; convert it to 8-bit first")
            grey = np.rint(a.astype(np.float64) * 255)
        else:
            a = a.astype(np.int64)
            if a.min() < 0 or a.max() > 65535:
                raise CorruptImageError(f"{name}: 32-bit integer image (mode {mode}) with values "
                                        "outside 0..65535; convert it to 8 or 16 bits first")
            grey = (a * 255 + 32767) // 65535  # round(v · 255 / 65535)
        grey = grey.astype(np.uint8)
        return Image.fromarray(np.repeat(grey[..., None], 3, axis=2), "RGB")
    if mode in _ALPHA or (mode == "P" and "transparency" in im.info):
        a = np.asarray(im.convert("RGBA"), dtype=np.uint32)
        rgb = (a[..., :3] * a[..., 3:] + 127) // 255  # over black, rounded
        return Image.fromarray(rgb.astype(np.uint8), "RGB")
    if mode == "RGB":
        return im
    try:
        return im.convert("RGB")
    except ValueError as e:
        raise CorruptImageError(f"{name}: image mode {mode} cannot be converted to RGB "
                                f"({e})") from None


def _open_rgb(path: str | os.PathLike) -> Any:
    """Decode a file with Pillow → loaded 8-bit RGB ``PIL.Image`` (`to_rgb`); errors name the
    file."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(im, str(path))
    except CorruptImageError:
        raise
    except FileNotFoundError:
        raise AuglensError(f"image not found: {path}") from None
    except PermissionError as e:
        raise AuglensError(f"cannot read image {path}: {e.strerror or e}") from None
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for broken files
        raise CorruptImageError(f"corrupt image {path}: {type(e).__name__}: {e}") from None


def _to_tensor(arr: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def decode_file(path: str | os.PathLike) -> Tensor:
    """Decode one image file with Pillow → uint8 (3, H, W) RGB (`to_rgb`). Missing or
    undecodable (e.g. truncated) files raise an AuglensError naming the file
    (`CorruptImageError` for undecodable ones)."""
    return _to_tensor(np.asarray(_open_rgb(path)))


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file as displayed (EXIF orientation 5–8 swaps them), from its
    header (nothing is decoded)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = int(im.size[0]), int(im.size[1])
            orientation = im.getexif().get(0x0112, 1)
            return (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    except FileNotFoundError:
        raise AuglensError(f"image not found: {path}") from None
    except Exception as e:  # noqa: BLE001
        raise CorruptImageError(f"corrupt image {path}: {type(e).__name__}: {e}") from None


@dataclass(frozen=True)
class Geometry:
    """How a W×H image becomes ``size``×``size`` (module docstring): shorter side to ``resize``
    then centre crop (``crop``), or a direct resize to size×size."""

    size: int
    resize: int
    crop: bool = True

    def plan(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(resized width w', resized height h', crop left, crop top) for a W×H image."""
        if not self.crop:
            return self.size, self.size, 0, 0
        if width <= height:
            nw, nh = self.resize, int(self.resize * height / width)
        else:
            nw, nh = int(self.resize * width / height), self.resize
        return nw, nh, int(round((nw - self.size) / 2.0)), int(round((nh - self.size) / 2.0))

    def map_box(
        self, box: tuple[float, float, float, float], width: int, height: int
    ) -> tuple[float, float, float, float]:
        """A box (x1, y1, x2, y2) in pixel-edge coordinates of the W×H original → output
        coordinates (floats, not clipped)."""
        nw, nh, left, top = self.plan(width, height)
        sx, sy = nw / width, nh / height
        x1, y1, x2, y2 = box
        return x1 * sx - left, y1 * sy - top, x2 * sx - left, y2 * sy - top

    def apply_pil(self, im: Any) -> np.ndarray:
        """An RGB ``PIL.Image`` → uint8 (size, size, 3): Pillow bilinear resize (antialiased when
        downscaling), then the crop. Single-threaded, so decoding threads never contend with the
        training step's intra-op threads."""
        from PIL import Image

        w, h = im.size
        nw, nh, left, top = self.plan(w, h)
        if (nw, nh) != (w, h):
            im = im.resize((nw, nh), Image.BILINEAR)
        return np.asarray(im)[top : top + self.size, left : left + self.size]

    def apply(self, img: Tensor) -> Tensor:
        """uint8 (3, H, W) → uint8 (3, size, size) with torchvision's antialiased bilinear resize
        (equal to `apply_pil` up to ±1 rounding)."""
        from torchvision.transforms.v2 import functional as TF

        h, w = int(img.shape[-2]), int(img.shape[-1])
        nw, nh, left, top = self.plan(w, h)
        if (nw, nh) != (w, h):
            img = TF.resize(img, [nh, nw], antialias=True)
        return img[:, top : top + self.size, left : left + self.size].contiguous()

    def key(self) -> dict[str, Any]:
        return {"size": self.size, "resize": self.resize, "crop": self.crop}


def pixel_range(lo: float, hi: float, n: int) -> tuple[int, int]:
    """Pixels i in [0, n) whose centre i + 0.5 lies in [lo, hi) → (first, end) with exclusive end
    (``first == end`` when none)."""
    a = min(max(math.ceil(lo - 0.5), 0), n)
    b = min(max(math.ceil(hi - 0.5), 0), n)
    return a, max(a, b)


def load_image(path: str | os.PathLike, geometry: Geometry) -> Tensor:
    """Decode and resize/crop one file with Pillow (`Geometry.apply_pil`) → uint8 (3, S, S)."""
    return _to_tensor(geometry.apply_pil(_open_rgb(path)))


# ----------------------------------------------------------------------------- files + cache


def files_key(paths: Sequence[Path], geometry: Geometry, stat: bool = True) -> str:
    """sha256 (first 24 hex digits) of the file list (with sizes and mtimes when ``stat``), the
    geometry and the decoder version: names a disk cache."""
    h = hashlib.sha256()
    h.update(json.dumps({"geometry": geometry.key(), "decoder": DECODER_VERSION}).encode())
    for p in paths:
        h.update(str(p).encode())
        if stat:
            try:
                st = os.stat(p)
                h.update(f":{st.st_size}:{st.st_mtime_ns}".encode())
            except OSError:
                h.update(b":missing")
        h.update(b"\0")
    return h.hexdigest()[:24]


class ImageFiles:
    """Decoding side of a lazy split: file paths, geometry, a thread pool, an optional disk cache.

    ``workers``: decoding threads (0 = the calling thread). ``cache_dir``: directory of the cache
    file ``images-<key>.u8`` (None: no cache).
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        geometry: Geometry,
        workers: int = 2,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.geometry = geometry
        self.workers = int(workers)
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._flags: np.ndarray | None = None
        self._data: np.ndarray | None = None
        self.cache_path: Path | None = None
        if cache_dir is not None and self.paths:
            self._open_cache(Path(cache_dir).expanduser())

    def __len__(self) -> int:
        return len(self.paths)

    def __getstate__(self) -> dict[str, Any]:  # pools and memory maps are per process
        state = self.__dict__.copy()
        state.update(_pool=None, _lock=None, _flags=None, _data=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        if self.cache_path is not None:
            self._map(self.cache_path)

    # -- cache
    def _open_cache(self, cache_dir: Path) -> None:
        n, s = len(self.paths), self.geometry.size
        path = cache_dir / f"images-{files_key(self.paths, self.geometry)}.u8"
        offset = -(-n // _CACHE_ALIGN) * _CACHE_ALIGN
        total = offset + n * 3 * s * s
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
                with open(tmp, "wb") as f:
                    f.truncate(total)  # sparse: zeros, every "done" byte 0
                try:
                    os.link(tmp, path)  # atomic, never replaces a cache another process opened
                except FileExistsError:
                    pass
                finally:
                    os.unlink(tmp)
            if path.stat().st_size != total:
                raise OSError(f"size {path.stat().st_size} != expected {total}")
            self._map(path)
            self.cache_path = path
        except OSError as e:
            import warnings

            warnings.warn(f"image cache {path} unusable ({e}); decoding without it", stacklevel=3)
            self.cache_path = None

    def _map(self, path: Path) -> None:
        n, s = len(self.paths), self.geometry.size
        offset = -(-n // _CACHE_ALIGN) * _CACHE_ALIGN
        mm = np.memmap(path, dtype=np.uint8, mode="r+", shape=(offset + n * 3 * s * s,))
        self._flags = mm[:n]
        self._data = mm[offset:].reshape(n, 3, s, s)

    def cached(self) -> np.ndarray:
        """bool (N,): which files are in the disk cache (all False without a cache)."""
        if self._flags is None:
            return np.zeros(len(self.paths), dtype=bool)
        return np.asarray(self._flags) == 1

    # -- decoding
    def load_np(self, i: int) -> np.ndarray:
        """File ``i`` → uint8 array (3, S, S), from the cache when it holds it (numpy only: no
        torch op, so decoding threads never wake the intra-op thread pool)."""
        if self._flags is not None and self._flags[i] == 1:
            return np.array(self._data[i])
        arr = self.geometry.apply_pil(_open_rgb(self.paths[i])).transpose(2, 0, 1)
        if self._flags is not None:
            self._data[i] = arr
            self._flags[i] = 1  # after the pixels: a crash in between only loses the entry
        return np.ascontiguousarray(arr)

    def load(self, i: int) -> Tensor:
        """File ``i`` → uint8 (3, S, S), from the cache when it holds it."""
        return torch.from_numpy(self.load_np(i))

    def _executor(self) -> ThreadPoolExecutor | None:
        if self.workers <= 0:
            return None
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="auglens-decode")
            return self._pool

    def map(self, fn: Any, items: Iterable[Any]) -> list[Any]:
        """``[fn(x) for x in items]`` on the decoding threads (in order)."""
        pool = self._executor()
        items = list(items)
        if pool is None or len(items) <= 1:
            return [fn(x) for x in items]
        return list(pool.map(fn, items))

    def load_many(self, file_idx: Sequence[int] | np.ndarray) -> Tensor:
        """Files ``file_idx`` → uint8 (B, 3, S, S), decoded on the pool."""
        idx = [int(i) for i in file_idx]
        s = self.geometry.size
        out = np.empty((len(idx), 3, s, s), dtype=np.uint8)

        def one(j: int) -> None:
            out[j] = self.load_np(idx[j])

        self.map(one, range(len(idx)))
        return torch.from_numpy(out)

    def find_corrupt(self, file_idx: Sequence[int] | np.ndarray) -> list[int]:
        """Decode (and cache) every file in ``file_idx``; the ones that are corrupt."""

        def check(i: int) -> int | None:
            try:
                self.load_np(int(i))
            except CorruptImageError:
                return int(i)
            return None

        return [i for i in self.map(check, file_idx) if i is not None]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class LazyImages:
    """Images decoded on demand, indexable like a uint8 tensor of shape (N, 3, S, S).

    ``images[i]`` → (3, S, S); ``images[a:b]``, ``images[idx]`` (int sequence, int tensor or
    array, bool mask) → (B, 3, S, S); ``len``, ``shape``, ``dtype``, ``ndim``, ``device`` (CPU)
    as for a tensor. `select` returns a lazy view; `materialize` decodes everything.
    """

    dtype = torch.uint8
    ndim = 4
    device = torch.device("cpu")

    def __init__(self, files: ImageFiles, index: Sequence[int] | np.ndarray | None = None) -> None:
        self.files = files
        self.index = np.arange(len(files), dtype=np.int64) if index is None else np.asarray(
            index, dtype=np.int64
        )

    @property
    def shape(self) -> torch.Size:
        s = self.files.geometry.size
        return torch.Size((len(self.index), 3, s, s))

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def size(self, dim: int | None = None) -> torch.Size | int:
        return self.shape if dim is None else self.shape[dim]

    def __repr__(self) -> str:
        cache = f", cache={self.files.cache_path}" if self.files.cache_path else ""
        return f"LazyImages(shape={tuple(self.shape)}, workers={self.files.workers}{cache})"

    def _positions(self, key: Any) -> np.ndarray:
        n = len(self)
        if isinstance(key, slice):
            return np.arange(n, dtype=np.int64)[key]
        if isinstance(key, Tensor):
            key = key.detach().cpu().numpy()
        arr = np.asarray(key)
        if arr.dtype == bool:
            if arr.shape != (n,):
                raise IndexError(f"boolean index of shape {arr.shape} for {n} images")
            return np.flatnonzero(arr)
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            if arr.ndim == 1 and arr.size == 0:
                return np.zeros(0, dtype=np.int64)
            raise TypeError(
                "LazyImages supports an int, a slice, or a 1-D int/bool index over images, "
                f"got {type(key).__name__} {arr.dtype} {arr.shape}"
            )
        arr = arr.astype(np.int64)
        if arr.size and (arr.min() < -n or arr.max() >= n):
            raise IndexError(f"image index out of range for {n} images")
        return np.where(arr < 0, arr + n, arr)

    def __getitem__(self, key: Any) -> Tensor:
        if isinstance(key, int | np.integer) or (isinstance(key, Tensor) and key.ndim == 0):
            i = int(key)
            if not -len(self) <= i < len(self):
                raise IndexError(f"image index {i} out of range for {len(self)} images")
            return self.files.load(int(self.index[i]))
        if isinstance(key, tuple):
            raise TypeError("LazyImages indexes images only (one index), not pixels or channels")
        return self.files.load_many(self.index[self._positions(key)])

    def select(self, key: Any) -> LazyImages:
        """A lazy view of the images ``key`` selects (nothing is decoded)."""
        return LazyImages(self.files, self.index[self._positions(key)])

    def materialize(self) -> Tensor:
        """Every image, decoded → uint8 (N, 3, S, S)."""
        return self.files.load_many(self.index)


class BoxMasks:
    """Lazy union-of-boxes masks, indexable like a bool tensor of shape (N, H, W).

    ``boxes`` int64 (N, M, 4) ``(x1, y1, x2, y2)`` with exclusive ends, padded with empty boxes;
    ``masks[idx]`` → bool (B, H, W) with ``mask[y1:y2, x1:x2] = True`` for each box.
    """

    dtype = torch.bool
    ndim = 3
    device = torch.device("cpu")

    def __init__(self, boxes: Tensor, height: int, width: int) -> None:
        self.boxes = boxes
        self.height, self.width = int(height), int(width)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((int(self.boxes.shape[0]), self.height, self.width))

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def __repr__(self) -> str:
        return f"BoxMasks(shape={tuple(self.shape)}, boxes_per_image={self.boxes.shape[1]})"

    def __getitem__(self, key: Any) -> Tensor:
        if isinstance(key, int | np.integer):
            return boxes_mask(self.boxes[int(key)][None], self.height, self.width)[0]
        return boxes_mask(self.boxes[key], self.height, self.width)

    def select(self, key: Any) -> BoxMasks:
        return BoxMasks(self.boxes[key], self.height, self.width)

    def materialize(self) -> Tensor:
        return boxes_mask(self.boxes, self.height, self.width)


def boxes_mask(boxes: Tensor, height: int, width: int) -> Tensor:
    """int64 (B, M, 4) boxes (exclusive ends, empty = padding) → bool (B, H, W) union masks."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    ys = torch.arange(height)
    xs = torch.arange(width)
    in_y = (ys >= y1[..., None]) & (ys < y2[..., None])
    in_x = (xs >= x1[..., None]) & (xs < x2[..., None])
    return (in_y[..., :, None] & in_x[..., None, :]).any(1)


def take_images(images: Any, idx: Any) -> Any:
    """``images[idx]`` for tensors; a lazy view for lazy containers (`LazyImages`, `BoxMasks`),
    as ``ImageSet.subset`` needs."""
    return images.select(idx) if isinstance(images, LazyImages | BoxMasks) else images[idx]


def iter_batches(
    images: Tensor | LazyImages,
    batches: Sequence[Tensor],
    device: torch.device,
    prefetch: int = 2,
) -> Iterator[Tensor]:
    """Yield ``images[idx]`` on ``device`` for each index batch, in order.

    Tensors are indexed on their own device (the trainer moves in-memory images to the training
    device once). `LazyImages` are decoded up to ``prefetch`` batches ahead on a background
    thread (its pool decodes each batch in parallel), pinned and copied asynchronously for CUDA.
    """
    if isinstance(images, Tensor):
        for idx in batches:
            yield images[idx.to(images.device)]
        return
    pin = device.type == "cuda"

    def fetch(idx: Tensor) -> Tensor:
        x = images[idx]
        return x.pin_memory() if pin else x

    ex = ThreadPoolExecutor(1, thread_name_prefix="auglens-prefetch")
    try:
        it = iter(batches)
        pending: deque = deque()
        for idx in it:
            pending.append(ex.submit(fetch, idx))
            if len(pending) >= max(1, prefetch):
                break
        while pending:
            x = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(ex.submit(fetch, nxt))
            yield x.to(device, non_blocking=pin)
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
