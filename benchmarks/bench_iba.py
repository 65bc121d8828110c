"""IBA cost: one batched call on 32 images vs the same code one image at a time (CPU).

Per model (auglens ``small_resnet`` at 32×32 by default, optionally torchvision ``resnet18`` at
64×64), random init with non-trivial BatchNorm statistics, eval; the estimator is fitted on
random uint8 images (timing only). Ways, each producing maps of the predicted class for the same
``--batch`` images with the default IBA settings (10 steps × 10 noise copies):
  batched      – ``EXPLAINERS.get("iba")(model, estimator=est)(x)``: one call, α (B, C, h, w);
                 each step runs only the network after the layer (torch.fx split)
  single       – the same explainer called on ``x[i:i+1]`` for every i (B calls)
  batched-full – one call with ``head_only=False``: each step runs the whole model on the B·10
                 noisy batch with a hook replacing the layer output (the part before the layer
                 recomputed without autograd graph)
  single-full  – ``head_only=False`` one image at a time
Repetitions interleave the ways (after a warm-up call of each way on two images); medians of
wall-clock seconds and paired ratios are reported. Default ways: the first three (single-full
is slow; add ``--ways batched single batched-full single-full``). The maps of all ways are
checked to agree (≤ 1e-4 × max; the noise is the same for every image, so they are the same
computation).

    .venv/bin/python benchmarks/bench_iba.py [--batch 32] [--reps 3] [--threads 2]
        [--models small_resnet resnet18] [--ways batched single batched-full single-full]
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

import torch
from _harness import ratio_table, write_result
from torch import Tensor, nn

import auglens
from auglens.explain import EXPLAINERS, fit_estimator
from auglens.models import build_model

#: name -> (input size, build kwargs)
MODELS: dict[str, tuple[int, dict[str, object]]] = {
    "small_resnet": (32, {}),
    "resnet18": (64, {}),
}
WAYS = ["batched", "single", "batched-full", "single-full"]


def normalize(x: Tensor) -> Tensor:
    return (x - 0.5) / 0.25


def make_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    m = build_model(name, 10, **MODELS[name][1])
    g = torch.Generator().manual_seed(0)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            c = mod.num_features
            mod.running_mean.copy_(0.1 * torch.randn(c, generator=g))
            mod.running_var.copy_(0.5 + torch.rand(c, generator=g))
            mod.weight.data.copy_(0.5 + torch.rand(c, generator=g))
            mod.bias.data.copy_(0.1 * torch.randn(c, generator=g))
    return m.eval()


def bench_model(name: str, batch: int, reps: int, ways: list[str]) -> dict[str, object]:
    size = MODELS[name][0]
    model = make_model(name)
    g = torch.Generator().manual_seed(1)
    train = torch.randint(0, 256, (256, 3, size, size), dtype=torch.uint8, generator=g)
    t0 = time.perf_counter()
    est = fit_estimator(model, train, normalize, batch_size=64)
    fit_s = time.perf_counter() - t0
    x = normalize(torch.randint(0, 256, (batch, 3, size, size), generator=g).float() / 255)
    head = EXPLAINERS.get("iba")(model, estimator=est)
    full = EXPLAINERS.get("iba")(model, estimator=est, head_only=False)

    def one_by_one(iba: Callable[[Tensor], object]) -> Callable[[Tensor], Tensor]:
        return lambda x: torch.cat([iba(x[i : i + 1]).maps for i in range(x.shape[0])])

    fns: dict[str, Callable[[Tensor], Tensor]] = {
        "batched": lambda x: head(x).maps,
        "single": one_by_one(head),
        "batched-full": lambda x: full(x).maps,
        "single-full": one_by_one(full),
    }
    wall: dict[str, list[float]] = {w: [] for w in ways}
    cpu: dict[str, list[float]] = {w: [] for w in ways}
    maps: dict[str, Tensor] = {}
    for w in ways:  # warm-up on two images
        fns[w](x[:2])
    for rep in range(reps):
        for w in ways:
            t0, c0 = time.perf_counter(), time.process_time()
            maps[w] = fns[w](x)
            wall[w].append(time.perf_counter() - t0)
            cpu[w].append(time.process_time() - c0)
        print(f"  {name} rep {rep + 1}: " + ", ".join(f"{w} {wall[w][-1]:.2f}s" for w in ways))
    ref = maps[ways[0]]
    scale = ref.abs().max().item()
    err = max((maps[w] - ref).abs().max().item() for w in ways) / scale
    assert err <= 1e-4, f"{name}: maps of the ways differ by {err:.2e} × max"
    assert head.last_mode == "head" and full.last_mode == "full"
    return {
        "wall": wall,
        "cpu": cpu,
        "size": size,
        "layer": head.layer_name,
        "maps": tuple(ref.shape[1:]),
        "channels": est.shape[0],
        "err": err,
        "fit": fit_s,
    }


#: (label, numerator way, denominator way, target)
RATIOS = [
    ("one at a time / batched (fx head)", "single", "batched", "≥ 5"),
    ("one at a time / batched (full forward)", "single-full", "batched-full", ""),
    ("full forward / fx head, batched", "batched-full", "batched", ""),
    ("full forward / fx head, one at a time", "single-full", "single", ""),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=["small_resnet"], choices=list(MODELS))
    ap.add_argument("--ways", nargs="+", default=WAYS[:3], choices=WAYS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/iba.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    results = {n: bench_model(n, args.batch, args.reps, args.ways) for n in args.models}
    load1 = os.getloadavg()
    ways = args.ways
    t1 = [
        "| model | input | layer (C×h×w) | " + " | ".join(ways) + " | per image, batched |",
        "|---|---|---|" + "---|" * len(ways) + "---|",
    ]
    for name, r in results.items():
        med = {w: statistics.median(r["wall"][w]) for w in ways}  # type: ignore[index]
        h, w_ = r["maps"]  # type: ignore[misc]
        per = f"{1000 * med[ways[0]] / args.batch:.0f} ms ({ways[0]})"
        t1.append(
            f"| {name} | {r['size']}×{r['size']} | `{r['layer']}` {r['channels']}×{h}×{w_} | "
            + " | ".join(f"{med[w]:.2f}" for w in ways)
            + f" | {per} |"
        )
    ratios = [x for x in RATIOS if x[1] in ways and x[2] in ways]
    t2 = ratio_table(results, ratios)
    errs = ", ".join(f"{n} {r['err']:.1e}" for n, r in results.items())
    fits = ", ".join(f"{n} {r['fit']:.2f} s" for n, r in results.items())
    text = "\n".join(
        [
            "# IBA speed: one batched call vs one image at a time",
            "",
            f"{args.batch} images, random-init models (10 classes, BatchNorm statistics "
            f"perturbed), eval, CPU, `torch.set_num_threads({args.threads})`, target = "
            "predicted class, "
            "default IBA settings (10 Adam steps × 10 noise copies, β = 10). "
            f"{args.reps} repetitions after a warm-up call of each way on two images, the ways "
            "interleaved within each "
            "repetition. *batched* = one call on all images; *single* = the same explainer "
            f"called {args.batch} times on one image; *-full* = `head_only=False` (every step "
            "runs the whole model on the noisy batch, the layer's output replaced by a hook) "
            "instead of only the network after the layer (torch.fx split, the default).",
            "",
            "Median wall-clock seconds for all images:",
            "",
            *t1,
            "",
            "Ratios: median over repetitions of the ratio within the same repetition (paired, "
            "so that load drifts on the shared machine cancel); wall clock and process CPU time.",
            "",
            *t2,
            "",
            f"Maps of all ways agree (max abs diff / max: {errs}; checked ≤ 1e-4): batched and "
            "one-at-a-time IBA are the same computation (the noise draws depend on the seed "
            "only). Estimator fit on 256 images (not in the timings): "
            f"{fits}.",
            "",
            f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
            "shared with other developers (load average "
            f"{load0[0]:.1f} at the start, {load1[0]:.1f} at the end: timings are noisy); "
            f"torch {torch.__version__}, auglens {auglens.__version__}; "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
            "Command: `.venv/bin/python benchmarks/bench_iba.py "
            f"--batch {args.batch} --reps {args.reps} --threads {args.threads} "
            f"--models {' '.join(args.models)} --ways {' '.join(ways)}`",
            "",
        ]
    )
    write_result(text, args.out)


if __name__ == "__main__":
    main()
