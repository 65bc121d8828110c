"""Feeding training batches to the device: a ``DataLoader`` over precomputed index batches.

The trainer computes each epoch's index batches itself (``batch_order(n, batch_size, seed,
epoch)``, SPEC §8); `BatchFeeder` only turns them into uint8 image batches (B, 3, H, W) on the
training device, **in the same order and with the same bytes** as
``iter_batches(images, batches, device)`` (the reference; tested for equality). Nothing random
happens here, so the number of worker processes never changes what a model sees.

How a batch travels, by source:

* a tensor already on the (CUDA) training device (in-memory data moved there once): indexed on
  the device, in this process, whatever ``num_workers`` says (the fastest path for CIFAR-sized
  data);
* ``num_workers=0``: in this process — a CPU tensor is indexed (and copied to the device);
  `LazyImages` go through ``iter_batches`` itself (its background thread decodes up to 2
  batches ahead). In-memory CPU data gains nothing from workers: use 0 for it;
* ``num_workers > 0`` (CPU tensors, `LazyImages`, `LazyImages` with the memory-mapped disk
  cache): a ``torch.utils.data.DataLoader`` with ``batch_size=None`` whose sampler yields the
  epoch's index batches and whose dataset (`IndexBatches`) maps one index batch to
  ``images[idx]`` in a worker process. Workers are kept across epochs (``persistent_workers``;
  the sampler is re-read at every epoch), each holds ``prefetch_factor`` batches ahead, and
  results arrive in sampler order. With a CUDA target, batches come pinned (``pin_memory``).

Host-to-device copies are ``non_blocking``; on CUDA they are issued on a side stream one batch
ahead (`_Prefetcher`), so the copy of batch k+1 overlaps the step on batch k; the compute stream
waits on an event before it uses a batch.

Optional GPU JPEG decoding (``gpu_decode=True``, folder data only, CUDA target only): workers read
the files' bytes, the main process decodes JPEGs with nvJPEG (``torchvision.io.decode_jpeg(...,
device="cuda")``) and resizes/crops them on the GPU (`Geometry.apply`). Pixels then differ from
Pillow's by decoder rounding and resize (±few levels), so the option is off by default, never
chosen silently, and a run that uses it should record it; non-JPEG files (PNG, ...) are decoded
with Pillow in the workers; the disk cache is not used. Asking for it without a CUDA target is an
error (`AuglensError`): falling back to Pillow would make the same config give different pixels
on different machines.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler, get_worker_info

from ..data.images import LazyImages, iter_batches
from ..errors import AuglensError

_JPEG_MAGIC = b"\xff\xd8\xff"


class IndexBatches(torch.utils.data.Dataset):
    """Batch-level dataset: item ``idx`` (an int64 index tensor (B,)) is ``images[idx]``, uint8
    (B, 3, H, W) on the CPU. ``raw=True`` (for GPU decoding): a list of B entries instead, each
    ``("jpeg", bytes as uint8 (L,))`` or ``("pixels", uint8 (3, S, S))`` for non-JPEG files."""

    def __init__(self, images: Tensor | LazyImages, raw: bool = False) -> None:
        self.images = images
        self.raw = raw

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: Tensor) -> Any:
        if not self.raw:
            return self.images[idx]
        view = self.images.select(idx)
        files = view.files
        out = []
        for i in view.index:
            path = files.paths[int(i)]
            with open(path, "rb") as f:
                data = f.read()
            if data[:3] == _JPEG_MAGIC:
                out.append(("jpeg", torch.frombuffer(bytearray(data), dtype=torch.uint8)))
            else:
                out.append(("pixels", files.load(int(i))))
        return out

    def reset_process_state(self) -> None:
        """In a forked worker: drop the parent's decoding thread pool (its threads do not exist
        here) and map the disk cache afresh."""
        if isinstance(self.images, LazyImages):
            files = self.images.files
            files.__setstate__(files.__getstate__())


class _EpochSampler(Sampler):
    """Yields the current epoch's index batches (set before each pass, read in this process)."""

    def __init__(self) -> None:
        self.batches: list[Tensor] = []

    def __iter__(self) -> Iterator[Tensor]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _worker_init(_: int) -> None:
    info = get_worker_info()
    if info is not None:
        info.dataset.reset_process_state()


class _Prefetcher:
    """Copies CPU batches to a CUDA device on a side stream, one batch ahead of the consumer."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device)

    def _start(self, x: Tensor) -> tuple[Tensor, Any, Tensor]:
        with torch.cuda.stream(self.stream):
            y = x.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        return y, event, x  # keep the host tensor alive until the copy is consumed

    def _finish(self, item: tuple[Tensor, Any, Tensor]) -> Tensor:
        y, event, _ = item
        compute = torch.cuda.current_stream(self.device)
        compute.wait_event(event)
        y.record_stream(compute)  # the allocator must not reuse y before the step is done
        return y

    def __call__(self, source: Iterable[Tensor]) -> Iterator[Tensor]:
        pending = None
        for x in source:
            item = self._start(x) if x.device.type == "cpu" else (x, None, x)
            if pending is not None:
                yield self._finish(pending) if pending[1] is not None else pending[0]
            pending = item
        if pending is not None:
            yield self._finish(pending) if pending[1] is not None else pending[0]


def _check_int(name: str, value: object, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise AuglensError(f"feeder: {name} must be an integer >= {lo}, got {value!r}")
    return value


class BatchFeeder:
    """Image batches for precomputed index batches, on ``device`` (conventions: module doc).

    ``images``: uint8 (N, 3, H, W) tensor (on the CPU or the target device) or `LazyImages`.
    ``num_workers``: worker processes (0 = in this process). ``prefetch_factor``: batches each
    worker keeps ready.
    ``pin_memory`` None: when the target is CUDA (a no-op without CUDA). ``persistent_workers``:
    keep workers between epochs (until `close`). ``gpu_decode``: nvJPEG decoding of folder data
    (CUDA target only). ``multiprocessing_context``: e.g. "spawn" (None: the platform default,
    fork on Linux; forked workers re-create the decoding pool and disk-cache mapping).

    Use ``for xb in feeder.epoch(batches)`` once per epoch, and `close` (or ``with``) at the end.
    """

    def __init__(
        self,
        images: Tensor | LazyImages,
        device: torch.device | str,
        *,
        num_workers: int = 0,
        prefetch_factor: int = 2,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        gpu_decode: bool = False,
        multiprocessing_context: str | None = None,
    ) -> None:
        if not isinstance(images, Tensor | LazyImages):
            raise AuglensError(
                f"feeder: images must be a uint8 tensor or LazyImages, got {type(images).__name__}"
            )
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise AuglensError(
                f"feeder: images must be uint8 (N, 3, H, W), got {images.dtype} "
                f"{tuple(images.shape)}"
            )
        self.images = images
        self.device = torch.device(device)
        self.num_workers = _check_int("num_workers", num_workers, 0)
        self.prefetch_factor = _check_int("prefetch_factor", prefetch_factor, 1)
        self.gpu_decode = bool(gpu_decode)
        if self.gpu_decode:
            if not isinstance(images, LazyImages):
                raise AuglensError(
                    "feeder: gpu_decode needs folder data decoded on demand (LazyImages, "
                    "imagefolder with lazy: true); these images are already decoded in memory"
                )
            if self.device.type != "cuda" or not torch.cuda.is_available():
                raise AuglensError(
                    f"feeder: gpu_decode needs a CUDA training device, got '{self.device}' "
                    f"(CUDA available: {torch.cuda.is_available()}); set gpu_decode off to "
                    "decode with Pillow (pixels differ slightly between the two decoders, so "
                    "there is no silent fall-back)"
                )
        cuda = self.device.type == "cuda"
        want_pin = cuda if pin_memory is None else bool(pin_memory)
        #: whether batches really come pinned (pinning needs CUDA)
        self.pinned = want_pin and torch.cuda.is_available()
        on_device = isinstance(images, Tensor) and images.device.type != "cpu"
        if on_device and images.device != self.device:
            raise AuglensError(
                f"feeder: images are on {images.device} but the target is {self.device}; keep "
                "them on the CPU or move them to the training device"
            )
        #: "device" (indexed on the device), "in-process" or "workers"
        self.mode = (
            "device" if on_device else "workers" if self.num_workers > 0 else "in-process"
        )
        if self.gpu_decode and self.mode == "in-process":
            self.mode = "workers-0"  # DataLoader without workers: raw bytes read in this process
        self._sampler = _EpochSampler()
        self._loader: DataLoader | None = None
        if self.mode.startswith("workers"):
            workers = self.num_workers
            self._loader = DataLoader(
                IndexBatches(images, raw=self.gpu_decode),
                batch_size=None,
                sampler=self._sampler,
                num_workers=workers,
                collate_fn=_identity if self.gpu_decode else None,
                pin_memory=self.pinned and not self.gpu_decode,
                persistent_workers=bool(persistent_workers) and workers > 0,
                prefetch_factor=self.prefetch_factor if workers > 0 else None,
                worker_init_fn=_worker_init if workers > 0 else None,
                multiprocessing_context=multiprocessing_context if workers > 0 else None,
            )
        self._prefetch = _Prefetcher(self.device) if cuda and torch.cuda.is_available() else None

    def describe(self) -> str:
        """One line: how batches are fed (for logs and records)."""
        if isinstance(self.images, LazyImages):
            src = "LazyImages"
        else:
            src = f"tensor on {self.images.device}"
        parts = [f"{self.mode}", f"source {src}", f"target {self.device}"]
        if self.mode.startswith("workers"):
            parts.append(f"{self.num_workers} workers × prefetch {self.prefetch_factor}")
        parts.append("pinned" if self.pinned else "not pinned")
        if self.gpu_decode:
            parts.append("nvJPEG decoding")
        return ", ".join(parts)

    def _source(self, batches: list[Tensor]) -> Iterator[Any]:
        if self.mode == "device":
            for idx in batches:
                yield self.images[idx.to(self.images.device)]
        elif self.mode == "in-process":
            if isinstance(self.images, LazyImages):
                yield from iter_batches(self.images, batches, self.device)
                return
            for idx in batches:
                x = self.images[idx.to(self.images.device)]
                yield x.pin_memory() if self.pinned and x.device.type == "cpu" else x
        else:
            self._sampler.batches = batches
            yield from self._loader

    def epoch(self, batches: Sequence[Tensor]) -> Iterator[Tensor]:
        """uint8 (B, 3, H, W) on the device for each index batch, in order."""
        batches = list(batches)
        source = self._source(batches)
        if self.gpu_decode:
            source = (self._decode(item) for item in source)
        if self._prefetch is not None:
            yield from self._prefetch(source)
        else:
            for x in source:
                yield x.to(self.device, non_blocking=True)

    def _decode(self, item: list[tuple[str, Tensor]]) -> Tensor:
        """Raw batch from `IndexBatches` (raw=True) → uint8 (B, 3, S, S) on the CUDA device."""
        from torchvision.io import ImageReadMode, decode_jpeg

        geometry = self.images.files.geometry
        jpeg_pos = [j for j, (kind, _) in enumerate(item) if kind == "jpeg"]
        out: list[Tensor | None] = [None] * len(item)
        for j, (kind, t) in enumerate(item):
            if kind == "pixels":
                out[j] = t.to(self.device, non_blocking=True)
        if jpeg_pos:
            data = [item[j][1] for j in jpeg_pos]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                try:
                    decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
                except RuntimeError:  # e.g. a CMYK or progressive file nvJPEG rejects
                    decoded = [self._decode_one(d) for d in data]
            for j, img in zip(jpeg_pos, decoded, strict=True):
                out[j] = geometry.apply(img)
        return torch.stack(out)  # type: ignore[arg-type]

    def _decode_one(self, data: Tensor) -> Tensor:
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:  # decode this one with Pillow
            import io

            import numpy as np
            from PIL import Image

            with Image.open(io.BytesIO(data.numpy().tobytes())) as im:
                arr = np.asarray(im.convert("RGB"))
            return torch.from_numpy(arr.transpose(2, 0, 1).copy()).to(self.device)

    def close(self) -> None:
        """Stop the worker processes (a later `epoch` starts them again)."""
        loader = self._loader
        it = getattr(loader, "_iterator", None) if loader is not None else None
        if it is not None:
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            loader._iterator = None

    def __enter__(self) -> BatchFeeder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _identity(x: Any) -> Any:
    return x


def feed_batches(
    images: Tensor | LazyImages,
    batches: Sequence[Tensor],
    device: torch.device | str,
    **options: Any,
) -> Iterator[Tensor]:
    """One pass of a `BatchFeeder` (``options`` as its keywords); workers stop at the end."""
    feeder = BatchFeeder(images, device, persistent_workers=False, **options)
    try:
        yield from feeder.epoch(batches)
    finally:
        feeder.close()
