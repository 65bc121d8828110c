"""Benchmark of the Study A map metrics (MAD, MSD, Pearson, Spearman, Overlap@{5,10,20}).

Times, on N pairs of 32×32 Grad-CAM-like maps (ReLU'd smooth random maps upsampled from 8×8, so
about half the pixels are exact zeros = ties):

  (a) ``compare_maps`` computing all seven metrics in one pass;
  (b) a per-pair loop with numpy and scipy.stats computing the same numbers;
  (c) the floor: ``torch.sort`` of every map once, over the batch.

Each timing is the median of several repeats, interleaved so that load from other processes hits
all three alike. A second part streams 10 000 images × 8 variants × 3 seeds pairs through
``MapComparison`` in a child process and reports its peak resident memory (``ru_maxrss``; Python's
tracemalloc does not see torch's allocator).

Usage: ``.venv/bin/python benchmarks/bench_metrics.py [--pairs 10000] [--repeats 5] [--quick]``.
Writes the markdown table to ``benchmarks/results/metrics.md`` (``--out``) and prints it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy
import scipy.stats
import torch
import torch.nn.functional as F

from auglens.metrics import MapComparison, compare_maps, top_count

METRICS = ["mad", "msd", "pearson", "spearman", "overlap"]
YS = (5, 10, 20)
HERE = Path(__file__).resolve().parent


def make_maps(n: int, generator: torch.Generator, size: int = 32, low: int = 8) -> torch.Tensor:
    """(n, size, size) float32 ReLU'd smooth random maps, bilinearly upsampled from low×low."""
    z = torch.randn(n, 1, low, low, generator=generator)
    up = F.interpolate(z, size=(size, size), mode="bilinear", align_corners=False)
    return torch.relu(up[:, 0])


def loop_reference(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """The same metrics pair by pair with numpy / scipy.stats (what one would write by hand)."""
    n_pairs, n = a.shape
    ks = {y: top_count(n, y) for y in YS}
    out = {name: np.empty(n_pairs) for name in ["mad", "msd", "pearson", "spearman"]}
    out.update({f"overlap@{y}": np.empty(n_pairs) for y in YS})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant maps: scipy warns and returns NaN
        for i in range(n_pairs):
            x, y_ = a[i].astype(np.float64), b[i].astype(np.float64)
            xn = (x - x.min()) / (x.max() - x.min()) if x.max() > x.min() else np.zeros_like(x)
            yn = (y_ - y_.min()) / (y_.max() - y_.min()) if y_.max() > y_.min() else 0 * y_
            d = xn - yn
            out["mad"][i] = np.abs(d).mean()
            out["msd"][i] = (d * d).mean()
            out["pearson"][i] = scipy.stats.pearsonr(x, y_).statistic
            out["spearman"][i] = scipy.stats.spearmanr(x, y_).statistic
            oa, ob = np.argsort(-x, kind="stable"), np.argsort(-y_, kind="stable")
            for y, k in ks.items():
                out[f"overlap@{y}"][i] = np.intersect1d(oa[:k], ob[:k]).size / k
    return out


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall-clock seconds, process CPU seconds summed over threads) of one call."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def _proc_status_mb(field: str) -> float | None:
    """A memory field (VmRSS, VmHWM) of /proc/self/status in MB, or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def stream_child(images: int, variants: int, seeds: int, chunk: int) -> None:
    """Child process: stream images × variants × seeds pairs through MapComparison; print JSON.

    Peak memory is VmHWM of this process (reset after the warm-up via /proc/self/clear_refs);
    ``ru_maxrss`` is not usable here because Linux carries the parent's value over fork/exec.
    """
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(1)
    mc = MapComparison(METRICS, YS)
    mc.update(make_maps(8, g), make_maps(8, g))  # warm-up, then measure from a clean state
    mc.reset()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS high-water mark
    except OSError:
        pass
    base_mb = _proc_status_mb("VmRSS")
    t0 = time.perf_counter()
    for _seed in range(seeds):
        for start in range(0, images, chunk):
            m = min(chunk, images - start)
            baseline = make_maps(m, g)
            for _variant in range(variants):
                mc.update(make_maps(m, g), baseline)
    elapsed = time.perf_counter() - t0
    values = mc.compute()
    peak_mb = _proc_status_mb("VmHWM")
    if peak_mb is None or base_mb is None:  # not Linux: fall back to ru_maxrss (KB on Linux)
        peak_mb = base_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "pairs": len(mc),
                "metrics": list(values),
                "seconds": elapsed,
                "base_rss_mb": base_mb,
                "peak_rss_mb": peak_mb,
                "results_mb": sum(v.numel() * v.element_size() for v in values.values()) / 2**20,
                "nan_counts": mc.nan_counts(),
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=5, help="repeats of the fast timings")
    p.add_argument("--loop-repeats", type=int, default=3, help="repeats of the scipy loop")
    p.add_argument("--stream-images", type=int, default=10_000)
    p.add_argument("--stream-chunk", type=int, default=2_000, help="images per update()")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (not for the table)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "metrics.md")
    p.add_argument("--stream-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.pairs, args.repeats, args.loop_repeats, args.stream_images = 500, 2, 1, 500
    if args.stream_child:
        stream_child(args.stream_images, 8, 3, args.stream_chunk)
        return

    torch.set_num_threads(2)
    load_before = os.getloadavg()
    g = torch.Generator().manual_seed(0)
    a, b = make_maps(args.pairs, g), make_maps(args.pairs, g)
    a_flat, b_flat = a.reshape(args.pairs, -1), b.reshape(args.pairs, -1)
    zero_frac = float((a == 0).float().mean())

    # correctness first: the fast path must reproduce the loop
    fast = compare_maps(a, b, METRICS, YS)
    ref = loop_reference(a_flat.numpy(), b_flat.numpy())
    max_err = {k: float(np.nanmax(np.abs(fast[k].numpy() - ref[k]))) for k in ref}
    assert max(max_err.values()) < 1e-10, max_err

    fns: dict[str, Callable[[], object]] = {
        "floor": lambda: (torch.sort(a_flat, dim=1), torch.sort(b_flat, dim=1)),
        "compare": lambda: compare_maps(a, b, METRICS, YS),
    }
    times: dict[str, list[float]] = {"floor": [], "compare": [], "loop": []}
    cpu: dict[str, list[float]] = {"floor": [], "compare": [], "loop": []}
    for r in range(args.repeats):
        for name, fn in fns.items():
            wall, c = timed(fn)
            times[name].append(wall)
            cpu[name].append(c)
        if r < args.loop_repeats:
            wall, c = timed(lambda: loop_reference(a_flat.numpy(), b_flat.numpy()))
            times["loop"].append(wall)
            cpu["loop"].append(c)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    load_after = os.getloadavg()

    child = subprocess.run(
        [sys.executable, __file__, "--stream-child", "--stream-images", str(args.stream_images),
         "--stream-chunk", str(args.stream_chunk)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    stream = json.loads(child.stdout.strip().splitlines()[-1])

    n = args.pairs
    rows = [
        ("(a) `compare_maps` (all 7 metrics, one pass)", "compare"),
        ("(b) per-pair numpy/scipy.stats loop", "loop"),
        ("(c) floor: `torch.sort` of every map once", "floor"),
    ]
    lines = [
        f"### Map metrics: {n:,} pairs of 32×32 maps (MAD, MSD, Pearson, Spearman, "
        "Overlap@{5,10,20})",
        "",
        "| what | median wall s | all repeats, wall s | median CPU s | per pair, wall µs |",
        "| --- | ---: | --- | ---: | ---: |",
    ]
    for label, key in rows:
        reps = ", ".join(f"{v:.3f}" for v in times[key])
        lines.append(
            f"| {label} | {med[key]:.3f} | {reps} | {med_cpu[key]:.3f} | {med[key] / n * 1e6:.1f} |"
        )
    speedup = med["loop"] / med["compare"]
    over_floor = med["compare"] / med["floor"]
    speedup_cpu = med_cpu["loop"] / med_cpu["compare"]
    over_floor_cpu = med_cpu["compare"] / med_cpu["floor"]
    lines += [
        "",
        "| ratio | wall | CPU time | target | met (wall) |",
        "| --- | ---: | ---: | ---: | --- |",
        f"| loop / compare_maps (speed-up) | {speedup:.1f}× | {speedup_cpu:.1f}× | ≥ 20× | "
        f"{'yes' if speedup >= 20 else 'no'} |",
        f"| compare_maps / sort floor | {over_floor:.2f}× | {over_floor_cpu:.2f}× | ≤ 1.5× | "
        f"{'yes' if over_floor <= 1.5 else 'no'} |",
        "",
        f"Streaming {stream['pairs']:,} pairs (10 000 images × 8 variants × 3 seeds"
        if not args.quick
        else f"Streaming {stream['pairs']:,} pairs (quick run",
    ]
    lines[-1] += (
        f", {args.stream_chunk} images per `MapComparison.update`) took {stream['seconds']:.1f} s; "
        f"peak RSS {stream['peak_rss_mb']:.0f} MB (VmHWM of the streaming process; its RSS after "
        f"imports and warm-up: {stream['base_rss_mb']:.0f} MB; per-image results kept: "
        f"{stream['results_mb']:.1f} MB). "
        f"Target < 1 GB: {'met' if stream['peak_rss_mb'] < 1024 else 'not met'}."
    )
    lines += [
        "",
        f"Setup: torch {torch.__version__}, numpy {np.__version__}, scipy {scipy.__version__}, "
        f"Python {platform.python_version()}, torch threads {torch.get_num_threads()}, "
        f"{os.cpu_count()} CPUs shared with other users (load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after). Maps: ReLU(bilinear 8×8 → 32×32 of N(0,1)), "
        f"{zero_frac:.0%} exact zeros. Timings are wall-clock medians of interleaved repeats "
        f"({args.repeats} fast, {args.loop_repeats} loop). Max |compare_maps − loop| over all "
        f"metrics: {max(max_err.values()):.1e}.",
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
        print(f"written to {args.out}")
    if not math.isfinite(speedup):
        sys.exit(1)


if __name__ == "__main__":
    main()
