"""ROAD, the Captum / pytorch-grad-cam adapters and RISE: cost vs their floors and references (CPU).

small_resnet (width 16, 10 classes, random init, eval), images N(0, 1) after a light blur,
targets = the predicted class. Three parts, each with its ways interleaved per repetition
(after one warm-up round); medians, and ratios as medians of per-repetition ratios:

ROAD (percentages 10…90, MoRF + LeRF, noise 0.01, Grad-CAM maps upsampled to the input):
  road        – ``road_curves(...)``: N originals + 18·N imputed images, one forward each
  impute      – the imputations alone (``noisy_linear_imputation`` for the same 18·N jobs)
  floor       – forwards only: the same number of images, same batch sizes, pre-built inputs
  pgc         – pytorch-grad-cam ``ROADMostRelevantFirstAverage`` +
                ``ROADLeastRelevantFirstAverage`` (the same percentiles,
                ``ClassifierOutputSoftmaxTarget``): the reference code
Adapters (batch B at 32×32; "direct" = the library used as its docs show, incl. the forward for
the predicted class where the library needs a target):
  captum:Saliency, captum:IntegratedGradients (n_steps 16), captum:LayerGradCam, pgc:GradCAM
  (raw and library output), pgc:ScoreCAM — each vs its direct call; the adapter also with
  ``channels_last=False`` (the same NCHW input as the direct call).
RISE (n_masks M, s = 8, p = 0.1, the same masks):
  rise        – ``RISE(...)(x)``: images × masks in forward batches of 256
  loop        – the reference's algorithm per image (``eclique/RISE`` ``RISE.forward``: masks·x,
                forwards of 250 masks, p^T·masks / (N·p1)), one image at a time

    .venv/bin/python benchmarks/bench_attrib.py [--reps 3] [--n-road 16] [--batch 64] [--masks 2000]
        [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from _harness import paired_ratio, write_result
from torch import Tensor, nn
from torchvision.transforms.functional import gaussian_blur

import auglens
from auglens.explain import EXPLAINERS, RISE
from auglens.explain.base import upsample
from auglens.metrics.faithfulness import pixel_order
from auglens.metrics.road import (
    DEFAULT_PERCENTAGES,
    imputation_noise,
    noisy_linear_imputation,
    removal_counts,
    road_curves,
)
from auglens.models import build_model, default_target_layer, get_module

PCTS = list(DEFAULT_PERCENTAGES)


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("small_resnet", 10).eval()


def make_images(n: int, size: int, seed: int = 1) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return gaussian_blur(torch.randn(n, 3, size, size, generator=g), [3, 3], [1.0, 1.0]) * 2


def timed(ways: dict[str, Callable[[], object]], order: list[str], reps: int,
          after: Callable[[], None] | None = None) -> tuple[dict, dict]:  # fmt: skip
    """Wall and CPU seconds per way: one warm-up round, then ``reps`` interleaved rounds (the
    order reversed on every other round)."""
    wall: dict[str, list[float]] = {w: [] for w in order}
    cpu: dict[str, list[float]] = {w: [] for w in order}
    for rep in range(reps + 1):
        for w in order if rep % 2 else order[::-1]:
            t0, c0 = time.perf_counter(), time.process_time()
            ways[w]()
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if after:
                after()
            if rep:
                wall[w].append(dt)
                cpu[w].append(dc)
        if rep:
            print(f"  rep {rep}: " + ", ".join(f"{w} {wall[w][-1]:.2f}s" for w in order),
                  flush=True)  # fmt: skip
    return wall, cpu


def med(t: dict[str, list[float]], w: str) -> float:
    return statistics.median(t[w])


# ------------------------------------------------------------------------------------- ROAD


def road_part(n: int, size: int, reps: int) -> dict[str, object]:
    from pytorch_grad_cam.metrics.road import (
        ROADLeastRelevantFirstAverage,
        ROADMostRelevantFirstAverage,
    )
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    model = make_model()
    x = make_images(n, size)
    exp = EXPLAINERS.get("gradcam")(model)(x)
    maps = upsample(exp.maps, size)
    tgt = exp.targets
    total = n + 2 * len(PCTS) * n
    sizes = [min(512, total - a) for a in range(0, total, 512)]
    g = torch.Generator().manual_seed(2)
    prebuilt = {b: torch.randn(b, 3, size, size, generator=g).contiguous(
        memory_format=torch.channels_last) for b in set(sizes)}  # fmt: skip
    counts = removal_counts(size * size, PCTS).tolist()
    ranked = {o: pixel_order(maps, o).numpy() for o in ("morf", "lerf")}
    imgs = x.double().numpy()

    def impute() -> None:
        for i in range(n):
            for o in ("morf", "lerf"):
                for cnt in counts:
                    removed = np.zeros(size * size, bool)
                    removed[ranked[o][i, :cnt]] = True
                    z = imputation_noise(0, i, o, cnt, 3)
                    noisy_linear_imputation(imgs[i], removed.reshape(size, size), 0.01, z)

    def floor() -> None:
        with torch.no_grad():
            for b in sizes:
                model(prebuilt[b])

    targets = [ClassifierOutputSoftmaxTarget(int(t)) for t in tgt]
    cams = maps.numpy()

    def pgc() -> None:
        ROADMostRelevantFirstAverage(PCTS)(x, cams, targets, model)
        ROADLeastRelevantFirstAverage(PCTS)(x, cams, targets, model)

    ways = {
        "road": lambda: road_curves(model, x, maps, tgt),
        "impute": impute,
        "floor": floor,
        "pgc": pgc,
    }
    wall, cpu = timed(ways, list(ways), reps)
    return {"wall": wall, "cpu": cpu, "n": n, "size": size, "total": total, "sizes": sizes}


def solver_part(sizes: list[int], ref_max: int) -> list[dict[str, object]]:
    """CPU seconds of one imputation (90 % MoRF of a smooth map, 3 channels): auglens vs the
    reference imputer (lil_matrix + spsolve), the reference only up to ``ref_max`` pixels wide."""
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    rows = []
    for size in sizes:
        img = make_images(1, size)[0]
        smooth = gaussian_blur(torch.rand(1, 1, size, size, generator=torch.Generator()
                                          .manual_seed(5)), [15, 15], [4.0, 4.0])[0, 0]
        order = smooth.reshape(-1).argsort(descending=True, stable=True)
        removed = torch.zeros(size * size, dtype=torch.bool)
        removed[order[: 9 * size * size // 10]] = True
        removed = removed.view(size, size)
        c0 = time.process_time()
        ours = noisy_linear_imputation(img, removed.numpy())
        t_ours = time.process_time() - c0
        t_ref, err = None, None
        if size <= ref_max:
            c0 = time.process_time()
            ref = NoisyLinearImputer(noise=0.0)(img, (~removed).float())
            t_ref = time.process_time() - c0
            err = float((ours.float() - ref).abs().max())
        rows.append({"size": size, "unknowns": int(removed.sum()), "ours": t_ours, "ref": t_ref,
                     "err": err})  # fmt: skip
        print(f"  {size}²: ours {t_ours:.2f}s CPU, reference {t_ref}", flush=True)
    return rows


# --------------------------------------------------------------------------------- adapters


def adapter_part(batch: int, reps: int) -> dict[str, object]:
    import captum.attr as ca
    import pytorch_grad_cam as pgc

    model = make_model()
    x = make_images(batch, 32, seed=3)
    layer = get_module(model, default_target_layer(model))

    def captum_direct(cls: type, layer_method: bool, **kw: object) -> Callable[[], Tensor]:
        def run() -> Tensor:
            pred = model(x).argmax(1)
            m = cls(model, layer) if layer_method else cls(model)
            a = m.attribute(x, target=pred, **kw)
            return a[:, 0] if a.shape[1] == 1 else a.sum(1).abs()

        return run

    def pgc_direct(cls: type) -> Callable[[], object]:
        def run() -> object:
            with cls(model=model, target_layers=[layer]) as cam:
                return cam(input_tensor=x, targets=None)

        return run

    cases = [
        ("captum:Saliency", {}, captum_direct(ca.Saliency, False)),
        ("captum:IntegratedGradients", {"n_steps": 16},
         captum_direct(ca.IntegratedGradients, False, n_steps=16)),
        ("captum:LayerGradCam", {}, captum_direct(ca.LayerGradCam, True)),
        ("pgc:GradCAM", {}, pgc_direct(pgc.GradCAM)),
        ("pgc:GradCAM", {"output": "library"}, pgc_direct(pgc.GradCAM)),
        ("pgc:ScoreCAM", {}, pgc_direct(pgc.ScoreCAM)),
    ]  # fmt: skip
    out = {}
    for name, params, direct in cases:
        label = name + ("" if not params else " " + ", ".join(f"{k}={v}" for k, v in
                                                                params.items()))  # fmt: skip
        print(label, flush=True)
        ad = EXPLAINERS.get(name)(model, **params)
        ad_nchw = EXPLAINERS.get(name)(model, channels_last=False, **params)
        ways = {"adapter": lambda ad=ad: ad(x), "adapter-nchw": lambda a=ad_nchw: a(x),
                "direct": direct}  # fmt: skip
        wall, cpu = timed(ways, list(ways), reps, after=lambda: model.zero_grad(set_to_none=True))
        out[label] = {"wall": wall, "cpu": cpu}
    return out


# ------------------------------------------------------------------------------------- RISE


def rise_part(n: int, n_masks: int, reps: int) -> dict[str, object]:
    model = make_model()
    x = make_images(n, 32, seed=4)
    rise = RISE(model, n_masks=n_masks, grid_size=8, p=0.1, seed=0, max_batch=256)
    masks = rise.masks(32, 32)

    def loop() -> Tensor:
        """eclique/RISE ``RISE.forward`` per image with our masks, softmax model."""
        out = []
        with torch.no_grad():
            logits = model(x)
            pred = logits.argmax(1)
            for i in range(n):
                stack = masks[:, None] * x[i]
                p = torch.cat([torch.softmax(model(stack[j : j + 250]), 1)
                               for j in range(0, n_masks, 250)])  # fmt: skip
                sal = (p.T @ masks.view(n_masks, -1)).view(-1, 32, 32) / n_masks / 0.1
                out.append(sal[pred[i]])
        return torch.stack(out)

    ref = loop()
    got = rise(x).maps
    err = ((got - ref).abs().max() / ref.abs().max()).item()
    assert err < 1e-4, f"RISE vs loop: {err}"
    ways = {"rise": lambda: rise(x), "loop": loop}
    wall, cpu = timed(ways, list(ways), reps)
    return {"wall": wall, "cpu": cpu, "err": err, "n": n, "masks": n_masks}


# ------------------------------------------------------------------------------------- main


def ratio_rows(r: dict, pairs: list[tuple[str, str, str, str]]) -> list[str]:
    rows = []
    for label, num, den, target in pairs:
        rows.append(f"| {label} | {target} | **{paired_ratio(r['wall'], num, den):.2f}×** | "
                    f"{paired_ratio(r['cpu'], num, den):.2f}× |")  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--n-road", type=int, default=16)
    ap.add_argument("--n-road-64", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--n-rise", type=int, default=8)
    ap.add_argument("--masks", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--solver-sizes", type=int, nargs="+", default=[64, 128, 224])
    ap.add_argument("--solver-ref-max", type=int, default=128)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/attrib.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    load0 = os.getloadavg()
    print("ROAD 32×32", flush=True)
    road32 = road_part(args.n_road, 32, args.reps)
    print("ROAD 64×64", flush=True)
    road64 = road_part(args.n_road_64, 64, args.reps)
    print("solver", flush=True)
    solver = solver_part(args.solver_sizes, args.solver_ref_max)
    print("adapters", flush=True)
    adapters = adapter_part(args.batch, args.reps)
    print("RISE", flush=True)
    rise = rise_part(args.n_rise, args.masks, args.reps)
    load1 = os.getloadavg()

    road_rows = [
        "| images | way | forwarded images | median wall s | median CPU s |",
        "|---|---|---|---|---|",
    ]
    for r in (road32, road64):
        for w, what in (("road", "auglens `road_curves`"), ("impute", "imputations alone"),
                        ("floor", "forwards alone"), ("pgc", "pytorch-grad-cam ROAD")):  # fmt: skip
            nf = {"road": r["total"], "impute": 0, "floor": r["total"],
                  "pgc": 4 * len(PCTS) * r["n"]}[w]  # fmt: skip
            road_rows.append(f"| {r['n']} × {r['size']}² | {what} | {nf} | "
                             f"{med(r['wall'], w):.2f} | {med(r['cpu'], w):.2f} |")  # fmt: skip
    road_ratios = ["| ratio | target | wall | CPU |", "|---|---|---|---|"]
    for r in (road32, road64):
        tag = f"{r['size']}²"
        road_ratios += ratio_rows(r, [
            (f"{tag}: road / forward floor", "road", "floor", ""),
            (f"{tag}: road / imputations alone", "road", "impute", ""),
            (f"{tag}: pytorch-grad-cam ROAD / road", "pgc", "road", "≥ 1"),
        ])  # fmt: skip
    solver_rows = [
        "| image | unknowns (90 % removed) | auglens CPU s | reference CPU s | reference / "
        "auglens | max abs diff |",
        "|---|---|---|---|---|---|",
    ]
    for r in solver:
        ref = "—" if r["ref"] is None else f"{r['ref']:.2f}"
        ratio = "—" if r["ref"] is None else f"**{r['ref'] / r['ours']:.1f}×**"
        err = "—" if r["err"] is None else f"{r['err']:.1e}"
        solver_rows.append(f"| {r['size']}² | {r['unknowns']} | {r['ours']:.2f} | {ref} | "
                           f"{ratio} | {err} |")  # fmt: skip
    ad_rows = [
        "| method | direct wall s | adapter / direct (wall) | CPU | adapter NCHW / direct "
        "(wall) | CPU |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in adapters.items():
        ad_rows.append(
            f"| `{label}` | {med(r['wall'], 'direct'):.3f} | "
            f"**{paired_ratio(r['wall'], 'adapter', 'direct'):.2f}×** | "
            f"{paired_ratio(r['cpu'], 'adapter', 'direct'):.2f}× | "
            f"**{paired_ratio(r['wall'], 'adapter-nchw', 'direct'):.2f}×** | "
            f"{paired_ratio(r['cpu'], 'adapter-nchw', 'direct'):.2f}× |"
        )
    rw, rc = paired_ratio(rise["wall"], "rise", "loop"), paired_ratio(rise["cpu"], "rise", "loop")
    rise_rows = [
        "| ratio | wall | CPU | rise median wall s | loop median wall s |",
        "|---|---|---|---|---|",
        f"| RISE batched / per-image loop | **{rw:.2f}×** | {rc:.2f}× | "
        f"{med(rise['wall'], 'rise'):.2f} | {med(rise['wall'], 'loop'):.2f} |",
    ]
    text = "\n".join([
        "# ROAD, adapters, RISE: cost vs floors and reference code",
        "",
        "small_resnet (width 16, 10 classes, random init, eval), CPU, "
        f"`torch.set_num_threads({args.threads})` (one thread: with two, small forwards stall on "
        "OpenMP barriers when the shared cores are busy); "
        f"{args.reps} repetitions after a warm-up round, the ways interleaved (order reversed "
        "every other round); medians; ratios are medians of per-repetition ratios (paired).",
        "",
        "## ROAD",
        "",
        f"Percentages {PCTS[0]}…{PCTS[-1]} (step 10), MoRF + LeRF, noise 0.01, Grad-CAM maps "
        "(`layer3`) upsampled to the input, target = predicted class.",
        "",
        *road_rows,
        "",
        *road_ratios,
        "",
        "The forwards are not the cost of ROAD on a CPU: the imputation is — one sparse solve per "
        "image and removal set (18 per image), which no batching removes. `road` adds the "
        "forwards (in batches of ≤ 512) to the imputations, so road ≈ impute + floor. "
        "pytorch-grad-cam runs the same reference imputer, but builds each system with "
        "`scipy.sparse.lil_matrix` and solves with `spsolve` (COLAMD, partial pivoting), and "
        "forwards the N originals again for each percentile and order (`return_diff`); auglens "
        "builds the system with vectorised COO arrays and factorises it with SuperLU in "
        "symmetric mode (MMD on AᵀA + A, no pivoting — valid because −A is a diagonally dominant "
        "M-matrix): about 2–2.5× less CPU per imputation for the contiguous removal regions of "
        "CAM-like maps below (≈ 1.5× for scattered removal sets: 90 % random pixels of a 160² "
        "image, 0.15 s vs 0.23 s CPU in a development run; both agree to ~1e-15). At 224² one "
        "imputation costs ≈ 0.3 s of CPU: ≈ 6 s per image for the 18 curve points on one core, "
        "far more than the forwards — ROAD needs its own image cap in a run.",
        "",
        "One imputation (a single system, 3 channels, 90 % of the pixels removed along a "
        "smooth map, one run each, CPU time): the factorisation is what grows with the image.",
        "",
        *solver_rows,
        "",
        "## Adapters",
        "",
        f"Batch {args.batch}×3×32×32. Adapter = `EXPLAINERS.get(name)(model, **params)(x)` "
        "(default channels-last input on CPU; maps, logits and targets, model state guarded); "
        "NCHW = the same with `channels_last=False`. Direct = the library the way its docs show "
        "(Captum: `model(x).argmax(1)`, then `attribute`, channels reduced; pytorch-grad-cam: "
        "`with GradCAM(model, [layer]) as cam: cam(x, None)`). Target ≤ 1.1×. Sub-second wall "
        "times on this shared machine are noisy; the CPU columns are the steadier measure.",
        "",
        *ad_rows,
        "",
        "The pytorch-grad-cam adapter lets gradients flow to a copy of the input rather than to "
        "the parameters (frozen, as in every auglens explainer), so it builds no parameter "
        "`.grad`; with `output='raw'` (default) it also skips the library's min-max scaling and "
        "OpenCV resize, returning maps at the layer's resolution.",
        "",
        "## RISE",
        "",
        f"{rise['n']} images 32×32, {rise['masks']} masks (s = 8, p = 0.1), the same masks for "
        "both ways; maps agree to "
        f"{rise['err']:.1e} (max abs diff / max).",
        "",
        *rise_rows,
        "",
        "Both ways forward exactly N·M masked images; on a CPU the forwards dominate, so "
        "batching images with masks gains little here (fewer, larger batches; the masks built "
        "once per call) — it matters more where a forward of 250 images does not fill the device "
        "(GPU).",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores shared "
        f"with other developers (load average {load0[0]:.1f} at the start, {load1[0]:.1f} at "
        "the end: timings are noisy, CPU columns are steadier); "
        f"torch {torch.__version__}, captum {version('captum')}, grad-cam {version('grad-cam')}, "
        f"scipy {version('scipy')}, auglens {auglens.__version__}; "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        "Command: `.venv/bin/python benchmarks/bench_attrib.py "
        f"--reps {args.reps} --n-road {args.n_road} --n-road-64 {args.n_road_64} "
        f"--batch {args.batch} --n-rise {args.n_rise} --masks {args.masks} "
        f"--threads {args.threads} --solver-sizes {' '.join(map(str, args.solver_sizes))} "
        f"--solver-ref-max {args.solver_ref_max}`",
        "",
    ])  # fmt: skip
    write_result(text, args.out)


if __name__ == "__main__":
    main()
