"""Running metrics over a batch: blocks of pairs on a persistent thread pool with torch's
intra-op threads held at 1 (:func:`compare_maps`), and streaming accumulation
(:class:`MapComparison`) that hands freed heap memory back to the OS between chunks."""

from __future__ import annotations

import ctypes
import functools
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch
from torch import Tensor

from ...errors import AuglensError
from .context import EmdBackend, LogitsKind, MapContext
from .definitions import DEFAULT_METRICS, MetricFn, resolve_metrics
from .distributions import _metric_com_shift, _metric_emd, _validate_logits
from .maps import _check_nonnegative, _Maps, _validate_maps

# Pixels per block of pairs on the CPU: the float64 intermediates of a block (≈ 1 MiB each) stay
# in cache. Blocks run with torch's intra-op threads set to 1 and are spread over a pool of
# ``workers`` threads instead (torch and numpy release the GIL).
_BLOCK_PIXELS = 1 << 17
_BLOCK_PIXELS_ACCELERATOR = 1 << 24


def _block_pairs(n_pixels: int, block_pairs: int | None, device: torch.device) -> int:
    if block_pairs is None:
        limit = _BLOCK_PIXELS if device.type == "cpu" else _BLOCK_PIXELS_ACCELERATOR
        return max(1, limit // n_pixels)
    if block_pairs < 1:
        raise AuglensError(f"block_pairs must be ≥ 1, got {block_pairs}")
    return block_pairs


_THREADS_LOCK = threading.Lock()
_THREADS_STATE = {"depth": 0, "saved": 0}


@contextmanager
def _single_threaded_torch() -> Iterator[None]:
    """Set torch's intra-op threads to 1 while inside (re-entrant across threads: the first to
    enter saves the old count, the last to leave restores it)."""
    with _THREADS_LOCK:
        if _THREADS_STATE["depth"] == 0:
            _THREADS_STATE["saved"] = torch.get_num_threads()
            if _THREADS_STATE["saved"] != 1:
                torch.set_num_threads(1)
        _THREADS_STATE["depth"] += 1
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _THREADS_STATE["depth"] -= 1
            if _THREADS_STATE["depth"] == 0 and _THREADS_STATE["saved"] != 1:
                torch.set_num_threads(_THREADS_STATE["saved"])


def _run(
    resolved: list[tuple[str, MetricFn]],
    maps: _Maps,
    a_logits: Tensor | None,
    b_logits: Tensor | None,
    logits_kind: LogitsKind,
    emd_backend: EmdBackend,
    block_pairs: int | None,
    workers: int | None = None,
) -> dict[str, Tensor]:
    """Evaluate resolved metrics on a validated batch, block by block (cache-sized blocks)."""
    n_pairs, n_pixels = maps.a.shape
    if a_logits is not None or b_logits is not None:
        if a_logits is None or b_logits is None:
            raise AuglensError("pass both a_logits and b_logits (N, K), or neither")
        _validate_logits(a_logits, b_logits, logits_kind)
        if a_logits.shape[0] != n_pairs:
            raise AuglensError(
                f"logits describe {a_logits.shape[0]} images but there are {n_pairs} map pairs"
            )
    for name, fn in resolved:  # whole-batch counts in the error, before any block runs
        if fn in (_metric_com_shift, _metric_emd):
            _check_nonnegative(maps, name)
    device = maps.a.device
    step = _block_pairs(n_pixels, block_pairs, device)
    n_workers = _workers(workers) if device.type == "cpu" else 1

    def block(s: int) -> list[Tensor]:
        e = s + step
        ctx = MapContext._checked(
            maps.rows(s, e),
            None if a_logits is None else a_logits[s:e],
            None if b_logits is None else b_logits[s:e],
            logits_kind,
            emd_backend,
        )
        return [fn(ctx) for _, fn in resolved]

    starts = range(0, max(n_pairs, 1), step)
    if device.type != "cpu":
        blocks = [block(s) for s in starts]
    else:
        # Blocks are small: torch's own OpenMP threads would only add barriers (pathological
        # when the cores are shared), so blocks run single-threaded, spread over a thread pool.
        with _single_threaded_torch():
            if n_workers == 1 or len(starts) == 1:
                blocks = [block(s) for s in starts]
            else:
                blocks = list(_pool(n_workers).map(block, starts))
    return {
        name: torch.cat([b[i] for b in blocks]) if len(blocks) > 1 else blocks[0][i]
        for i, (name, _) in enumerate(resolved)
    }


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(n_workers: int) -> ThreadPoolExecutor:
    """A persistent pool per size: fresh threads per call would each take a new malloc arena and
    let the process's resident memory creep up over thousands of calls."""
    with _POOLS_LOCK:
        pool = _POOLS.get(n_workers)
        if pool is None:
            pool = _POOLS[n_workers] = ThreadPoolExecutor(
                max_workers=n_workers, thread_name_prefix="auglens-metrics"
            )
        return pool


def _workers(workers: int | None) -> int:
    if workers is None:
        return max(1, torch.get_num_threads())
    if workers < 1:
        raise AuglensError(f"workers must be ≥ 1, got {workers}")
    return workers


def _single(
    name: str, fn: MetricFn, a: Tensor, b: Tensor, emd_backend: EmdBackend = "auto"
) -> Tensor:
    maps = _validate_maps(a, b)
    return _run([(name, fn)], maps, None, None, "logits", emd_backend, None)[name]


def compare_maps(
    a: Tensor,
    b: Tensor,
    metrics: str | Iterable[str] = DEFAULT_METRICS,
    ys: Sequence[float] = (5, 10, 20),
    *,
    a_logits: Tensor | None = None,
    b_logits: Tensor | None = None,
    logits_kind: LogitsKind = "logits",
    emd_backend: EmdBackend = "auto",
    block_pairs: int | None = None,
    workers: int | None = None,
) -> dict[str, Tensor]:
    """Compute several metrics on one batch of pairs, sharing work → {name: (N,) float64}.

    ``a`` other model's maps, ``b`` baseline maps, (N, h, w) or (N, n). One min-max normalisation
    serves MAD/MSD/Pearson/SSIM; one stable descending sort per map serves Spearman and every top-Y
    threshold. The batch is processed in blocks of ``block_pairs`` pairs (default: ≈ 131 K pixels
    per block, so intermediates stay in cache) spread over ``workers`` threads (default:
    ``torch.get_num_threads()``). ``class_kld`` needs ``a_logits``/``b_logits`` (N, K). Unknown
    names raise :class:`AuglensError` listing the valid ones.
    """
    resolved = resolve_metrics(metrics, ys)
    maps = _validate_maps(a, b)
    return _run(resolved, maps, a_logits, b_logits, logits_kind, emd_backend, block_pairs, workers)


# Why: glibc arenas keep freed blocks; trimming cut peak RSS ≈970 → ≈890 MB (96 K-pair stream).
@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` via ctypes, looked up once; None without glibc (musl, macOS…)."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None


def _release_free_memory() -> None:
    """Return freed heap memory to the OS (glibc ``malloc_trim(0)``); no-op without glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def count_nans(results: dict[str, Tensor]) -> dict[str, int]:
    """Number of NaN values per metric (constant maps for Pearson/Spearman, empty maps for EMD…)."""
    return {name: int(torch.isnan(v).sum()) for name, v in results.items()}


class MapComparison:
    """Stateful (TorchCAM-style) accumulator: ``update(a, b)`` per batch, ``compute()`` at the end.

    Feed pairs in chunks of any size; each chunk is processed block by block (see
    :func:`compare_maps`), so working memory is bounded by the chunk itself. Per-image results are
    kept on the CPU as float64 (8 bytes per pair and metric). NaNs (e.g. constant maps) are kept in
    place and counted by :meth:`nan_counts`.

    ``trim_memory`` (default True): after each update, hand freed heap memory back to the OS
    (glibc ``malloc_trim``; a no-op elsewhere). Without it, glibc's per-thread arenas keep the
    freed block intermediates and resident memory creeps up by a few MB per chunk.
    """

    def __init__(
        self,
        metrics: str | Iterable[str] = DEFAULT_METRICS,
        ys: Sequence[float] = (5, 10, 20),
        *,
        logits_kind: LogitsKind = "logits",
        emd_backend: EmdBackend = "auto",
        block_pairs: int | None = None,
        workers: int | None = None,
        trim_memory: bool = True,
    ) -> None:
        self._resolved = resolve_metrics(metrics, ys)
        self.names = [name for name, _ in self._resolved]
        self.logits_kind: LogitsKind = logits_kind
        self.emd_backend: EmdBackend = emd_backend
        self.block_pairs = block_pairs
        self.workers = workers
        self.trim_memory = trim_memory
        self.reset()

    def reset(self) -> None:
        """Forget every accumulated value."""
        self._values: dict[str, list[Tensor]] = {name: [] for name in self.names}
        self.n_pairs = 0

    def __len__(self) -> int:
        return self.n_pairs

    def update(
        self,
        a: Tensor,
        b: Tensor,
        *,
        a_logits: Tensor | None = None,
        b_logits: Tensor | None = None,
    ) -> None:
        """Add a chunk of pairs: ``a`` other maps, ``b`` baseline maps (N, h, w) or (N, n)."""
        maps = _validate_maps(a, b)
        out = _run(
            self._resolved, maps, a_logits, b_logits, self.logits_kind, self.emd_backend,
            self.block_pairs, self.workers,
        )  # fmt: skip
        for name, v in out.items():
            self._values[name].append(v.detach().to("cpu", torch.float64))
        self.n_pairs += maps.a.shape[0]
        del maps, out
        if self.trim_memory:
            _release_free_memory()

    def compute(self) -> dict[str, Tensor]:
        """{name: (pairs so far,) float64 CPU tensor}, in update order."""
        return {
            name: torch.cat(v) if v else torch.zeros(0, dtype=torch.float64)
            for name, v in self._values.items()
        }

    def nan_counts(self) -> dict[str, int]:
        """Number of NaN values per metric so far (never dropped silently)."""
        return {name: sum(int(torch.isnan(t).sum()) for t in v) for name, v in self._values.items()}
