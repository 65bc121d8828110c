"""Network Dissection throughput vs one plain forward pass over the probe set (CPU).

Model ``build_model("small_resnet", 10)`` (random init, eval), layer ``layer3`` (64 units, 8×8),
probe set = the built-in shapes test split (``--n`` images 32×32, 4 concept layers, labels at
32×32). Ways, each over the whole probe set in batches of ``--batch``:
  forward   – ``model(normalize(x / 255))`` under ``torch.no_grad()`` (the floor; no dissection)
  fwd-cl    – the same with channels-last input (what `dissect` feeds on CPU; for reference)
  dissect   – `dissect(...)` with defaults: pass 1 keeps the activations, pass 2 reuses them
              (one forward in total)
  dissect-2 – `dissect(..., activation_cache_bytes=0)`: pass 2 runs a second forward
Repetitions are interleaved across the ways (after one warm-up each); medians are reported, and
ratios are paired within a repetition so that load drifts on the shared machine cancel. Both
dissect ways are checked to give identical counts. ``--threads 2 1`` repeats everything with
``torch.set_num_threads(2)`` and then 1 (the first setting is the headline).

    .venv/bin/python benchmarks/bench_dissection.py [--n 2000] [--batch 256] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

import auglens
from auglens.data import Dataset, build_shapes
from auglens.metrics.dissection import DissectionResult, dissect, tail_size
from auglens.models import build_model

WAYS = ["forward", "fwd-cl", "dissect", "dissect-2"]
LABELS = {
    "forward": "one plain forward (no_grad, NCHW) — the floor",
    "fwd-cl": "one forward, channels-last input",
    "dissect": "**`dissect`** (activations kept: 1 forward)",
    "dissect-2": "`dissect`, `activation_cache_bytes=0` (2 forwards)",
}
RATIOS = [
    ("dissect", "forward"),
    ("dissect", "fwd-cl"),
    ("dissect-2", "forward"),
    ("dissect-2", "dissect"),
]


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def measure(d: Dataset, model: torch.nn.Module, n: int, batch: int, reps: int) -> dict[str, Any]:
    """Interleaved repetitions of every way; wall and CPU seconds, dissect pass splits."""
    images, concepts = d.test.images[:n], d.test.concepts[:n]
    results: dict[str, DissectionResult] = {}

    def forward(channels_last: bool) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                for s in range(0, n, batch):
                    x = d.normalize(images[s : s + batch].float().div_(255))
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    model(x)

        return run

    def dis(name: str, **kw: object) -> Callable[[], None]:
        def run() -> None:
            results[name] = dissect(
                model, images, concepts, d.normalize, d.concept_names, d.concept_categories,
                batch_size=batch, **kw,
            )  # fmt: skip

        return run

    ways = {
        "forward": forward(False),
        "fwd-cl": forward(True),
        "dissect": dis("dissect"),
        "dissect-2": dis("dissect-2", activation_cache_bytes=0),
    }
    for f in ways.values():  # warm-up
        f()
    wall: dict[str, list[float]] = {w: [] for w in WAYS}
    cpu: dict[str, list[float]] = {w: [] for w in WAYS}
    split: dict[str, list[tuple[float, ...]]] = {"dissect": [], "dissect-2": []}
    for _ in range(reps):
        for w in WAYS:
            t0, c0 = time.perf_counter(), time.process_time()
            ways[w]()
            wall[w].append(time.perf_counter() - t0)
            cpu[w].append(time.process_time() - c0)
            if w in split:
                i = results[w].info
                split[w].append(
                    (
                        i["seconds_pass1"],
                        i["seconds_pass2"],
                        i["cpu_seconds_pass1"],
                        i["cpu_seconds_pass2"],
                    )
                )
        print(torch.get_num_threads(), {w: round(wall[w][-1], 3) for w in WAYS}, flush=True)
    a, b = results["dissect"], results["dissect-2"]
    same = torch.equal(a.intersection, b.intersection) and torch.equal(a.thresholds, b.thresholds)
    assert same, "the two dissect ways disagree"
    return {"wall": wall, "cpu": cpu, "split": split, "result": a}


def section(threads: int, m: dict[str, Any], n: int) -> list[str]:
    wall, cpu, split = m["wall"], m["cpu"], m["split"]

    def ratio(num: str, den: str, src: dict[str, list[float]]) -> float:
        return med([x / y for x, y in zip(src[num], src[den], strict=True)])

    lines = [
        f"### `torch.set_num_threads({threads})`",
        "",
        "| way | wall s | images/s | CPU s |",
        "|---|---|---|---|",
    ]
    for w in WAYS:
        lines.append(
            f"| {LABELS[w]} | {med(wall[w]):.3f} | {n / med(wall[w]):.0f} | {med(cpu[w]):.3f} |"
        )
    lines += ["", "| paired ratio of times | wall | CPU |", "|---|---|---|"]
    for num, den in RATIOS:
        lines.append(
            f"| {num} / {den} | **{ratio(num, den, wall):.2f}×** | {ratio(num, den, cpu):.2f}× |"
        )
    s1 = [med([p[k] for p in split["dissect"]]) for k in range(4)]
    s2 = [med([p[k] for p in split["dissect-2"]]) for k in range(4)]
    lines += [
        "",
        f"Throughput dissect / one plain forward = **{1 / ratio('dissect', 'forward', wall):.2f}**"
        f" (wall), {1 / ratio('dissect', 'forward', cpu):.2f} (CPU). "
        f"Pass split, median wall (CPU) s: `dissect` pass 1 (forward + exact tail) "
        f"{s1[0]:.2f} ({s1[2]:.2f}), pass 2 (upsample, threshold, count) {s1[1]:.2f} "
        f"({s1[3]:.2f}); `dissect-2` pass 1 {s2[0]:.2f} ({s2[2]:.2f}), pass 2 incl. the second "
        f"forward {s2[1]:.2f} ({s2[3]:.2f}).",
        "",
    ]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[2])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "dissection.md"))
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    d = build_shapes(n_train=1000, n_val=100, n_test=args.n)
    torch.manual_seed(0)
    model = build_model("small_resnet", 10).eval()
    runs = {}
    for t in args.threads:
        torch.set_num_threads(t)
        runs[t] = measure(d, model, args.n, args.batch, args.reps)
    load1 = os.getloadavg()[0]

    n = args.n
    a: DissectionResult = runs[args.threads[0]]["result"]
    info, summ = a.info, a.summary()
    fh, fw = info["feature_size"]
    vals = n * fh * fw
    lines = [
        "# Network Dissection speed: `dissect` vs one forward pass",
        "",
        f"`small_resnet` (10 classes, random init, eval), layer `{a.layer}` ({a.n_units} units, "
        f"{fh}×{fw}), probe set = shapes test split ({n} images 32×32, 4 concept layers, labels "
        f"32×32), batch {args.batch}, CPU. {args.reps} repetitions after one warm-up, the ways "
        "interleaved within each repetition; medians. Ratios are paired (median over "
        "repetitions of the ratio within one repetition).",
        "",
    ]
    for t in args.threads:
        lines += section(t, runs[t], n)
    lines += [
        f"Share of (image, unit) maps upsampled in pass 2: {info['active_map_fraction']:.1%} "
        "(the others cannot exceed T_k and are skipped).",
        "",
        f"Result (random init, so few meaningful detectors): {summ['detectors']} detector units "
        f"of {summ['units']}, unique concepts per category {summ['unique_per_category']}. "
        "The two dissect ways give identical thresholds and counts (checked).",
        "",
        "Why `dissect` costs about one forward: the layer's activations "
        f"({n}×{a.n_units}×{fh}×{fw} float32 = {n * a.n_units * fh * fw * 4 / 2**20:.0f} MiB, "
        "under the 1 GiB default `activation_cache_bytes`) are kept from pass 1 for pass 2; the "
        "forward stops at the target layer and is fed channels-last on CPU; pass 1 keeps only "
        f"the exact per-unit tail (the n − ⌊0.995 (n − 1)⌋ = {tail_size(vals, a.quantile)} largest "
        f"of n = {vals} values, merged per batch with `torch.topk`); "
        "pass 2 upsamples only maps whose max can exceed T_k, with separable matmuls instead of "
        "`F.interpolate` (≈5× faster on CPU), and counts with `bincount` on the above-threshold "
        "pixels instead of dense one-hot products. With 2 threads on this contended machine, "
        "CPU time inflates (OpenMP threads spin while waiting for a core), more for the many "
        "small ops of pass 2 than for the convolutions; the 1-thread rows show the work itself.",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores shared with other developers "
        f"(load average {load0:.1f} at the start, {load1:.1f} at the end: timings are noisy, "
        f"paired ratios less so); torch {torch.__version__}, auglens {auglens.__version__}; "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        f"Command: `.venv/bin/python benchmarks/bench_dissection.py --n {n} --batch {args.batch} "
        f"--reps {args.reps} --threads {' '.join(map(str, args.threads))}`",
        "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
