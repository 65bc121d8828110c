"""GPU check of auglens at real scale: one command, under 8 minutes on one H200-class GPU.

Writes ``benchmarks/results/gpu.md`` (rewritten after every measurement and on SIGTERM/SIGINT,
so a killed run leaves its partial results). Sections, each time-boxed on its own (the time left
of ``--budget`` split among the remaining sections 36/15/15/34, so an overrun shrinks the later
boxes instead of the total growing), each row beside the ideal = peak / FLOPs per image, FLOPs
counted with ``torch.utils.flop_counter.FlopCounterMode`` (training: 3 × the forward; explaining:
the very call that is timed, on 2 images), peak = the GPU's dense bf16 TFLOP/s (table `PEAKS` by
device name, else ``--peak-tflops``):

  train    ResNet-50 and EfficientNet-B0 at 224, training images/s on synthetic in-memory data on
           the device: fp32 (torch defaults), AMP bf16, AMP + channels-last, + ``torch.compile``
  feed     a JPEG folder it generates (500×375, ~100 kB) fed through `BatchFeeder` (in-process,
           DataLoader workers, the memory-mapped disk cache cold and hot, nvJPEG decoding), and
           ResNet-50 AMP + channels-last training fed from it
  explain  ResNet-50 at 224 (fp32, eval): Grad-CAM and IBA (`explain_images`), deletion/insertion
           curves (`deletion_insertion_curves`, 16 steps, MoRF/LeRF/RaO×4), dissection
           (`dissect`, random concept labels) — images/s
  paper_a  airbench (`auglens.models.airbench`), baseline + 7 Study A augmentations × 5 seeds on
           CIFAR-10's size: a synthetic stand-in (50 000 / 10 000 at 32×32) or the real CIFAR-10
           with ``--cifar-root`` (paper-a split: 45 000 train); per-cell test accuracy, GPU time

    python benchmarks/bench_gpu.py                      # on the GPU machine (≈ 8 min)
    python benchmarks/bench_gpu.py --smoke              # CPU, tiny sizes, seconds
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from auglens.augment import build_augmentation
from auglens.config import TrainConfig
from auglens.data.images import Geometry, ImageFiles, LazyImages
from auglens.explain import explain_images, fit_estimator, upsample
from auglens.metrics.dissection import dissect
from auglens.metrics.faithfulness import deletion_insertion_curves
from auglens.models import build_model, init_from_data
from auglens.models.airbench import airbench_lr, airbench_weight_decay
from auglens.train.feeding import BatchFeeder
from auglens.train.trainer import batch_order, lr_factor, make_optimizer, soft_cross_entropy
from auglens.utils import derive_seed, make_generator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _gpu_common import (  # noqa: E402
    Box,
    Report,
    count_flops,
    fmt,
    free,
    ideal_cells,
    make_jpegs,
    normalizer,
    stand_in,
    sync,
    timed,
)

#: Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), matched in order against the device name.
PEAKS = [("H200", 989.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0)]
STUDY_A = ["baseline", "affine", "cutmix", "color_jitter", "elastic", "equalize",
           "gaussian_blur", "random_crop"]  # fmt: skip
SECTIONS = ["train", "feed", "explain", "paper_a"]
SHARE = {"train": 0.36, "feed": 0.15, "explain": 0.15, "paper_a": 0.34}


@dataclass(frozen=True)
class Sizes:
    size: int = 224
    batch: int = 256
    warm: int = 3
    steps: int = 10
    feed_n: int = 4096
    jpeg_wh: tuple[int, int] = (500, 375)
    feed_batch: int = 256
    cam_n: int = 1024
    iba_n: int = 256
    faith_n: int = 32
    dis_n: int = 1024
    a_train: int = 50000
    a_test: int = 10000
    a_epochs: int = 10
    a_batch: int = 1024
    a_seeds: int = 5
    a_width: float = 1.0


SMOKE = Sizes(size=32, batch=2, warm=1, steps=1, feed_n=12, jpeg_wh=(80, 60), feed_batch=4,
              cam_n=4, iba_n=2, faith_n=2, dis_n=4, a_train=128, a_test=64, a_epochs=1,
              a_batch=32, a_seeds=1, a_width=0.25)  # fmt: skip


# ----------------------------------------------------------------------------- train


def make_step(model, opt, x, y, norm, amp: bool, cl: bool, compiled: bool = False):
    """One training step as the trainer does it (uint8 → normalise → [channels-last] →
    [autocast bf16] → soft cross-entropy → SGD)."""
    fwd = torch.compile(model) if compiled else model
    dev = x.device

    def step() -> None:
        xx = norm(x.float().div(255))
        if cl:
            xx = xx.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            logits = fwd(xx)
        loss = soft_cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def forward_flops(model, x, norm) -> float:
    """Forward FLOPs per image (eval-free: train mode, no grad)."""
    with torch.no_grad():
        return count_flops(lambda: model(norm(x[:2].float() / 255))) / min(2, len(x))


def section_train(rep: Report, S: Sizes, dev: torch.device, box: Box, peak, smoke: bool,
                  state: dict) -> None:
    amp = dev.type == "cuda"
    rep.open("train", f"Training throughput at {S.size} (synthetic in-memory data on the device)",
             [f"Batch {S.batch}, {S.warm} warm-up + {S.steps} timed steps, SGD (trainer's "
              "optimizer), soft cross-entropy, uint8 → normalise on the device; eager modes of "
              "both networks first (one model each, modes in order), then the compiled ones. "
              "fp32 uses torch defaults (cuDNN may use TF32 for "
              "convolutions). Train FLOPs = 3 × counted forward FLOPs; the ideal uses the dense "
              "bf16 peak for every row." + ("" if amp else " On CPU autocast is off (bf16 "
                                              "convolutions fall back to a slow path): the AMP "
                                              "rows run fp32.")],
             ["model", "mode", "img/s", "step ms", "train GFLOP/img", "ideal img/s",
              "% of ideal", "compile s"])
    norm = normalizer(dev)
    modes = [("fp32", False, False, False), ("AMP bf16", True, False, False),
             ("AMP bf16 + channels-last", True, True, False),
             ("AMP bf16 + channels-last + compile", True, True, True)]
    flops: dict[str, float] = {}
    # eager modes of both networks first, then the compiled ones (compiling takes ~1 min each)
    for phase, mname in [(p, m) for p in (modes[:3], modes[3:])
                         for m in ("resnet50", "efficientnet_b0")]:
        def skip(comp: bool) -> str:
            if comp and smoke:
                return "skipped: --smoke (compiling takes minutes on CPU)"
            return "skipped: time box" if box.left() < (75 if comp else 10) and not smoke else ""

        if all(skip(m[3]) for m in phase):
            for m in phase:
                rep.row("train", [mname, m[0], skip(m[3]), "", "", "", "", ""])
            continue
        g = torch.Generator(device=dev).manual_seed(0)
        x = torch.randint(0, 256, (S.batch, 3, S.size, S.size), dtype=torch.uint8, device=dev,
                          generator=g)
        y = F.one_hot(torch.randint(0, 1000, (S.batch,), device=dev, generator=g), 1000).float()
        torch.manual_seed(0)
        model = build_model(mname, 1000).to(dev).train()
        opt = make_optimizer(model, TrainConfig())
        if mname not in flops:
            flops[mname] = 3 * forward_flops(model, x, norm)
        for label, bf16, cl, comp in phase:
            if skip(comp):
                rep.row("train", [mname, label, skip(comp), "", "", "", "", ""])
                continue
            try:
                if cl:
                    model = model.to(memory_format=torch.channels_last)
                step = make_step(model, opt, x, y, norm, bf16 and amp, cl, comp)
                t_warm = timed(step, dev, S.warm)
                dt = timed(step, dev, S.steps) / S.steps
                rate = S.batch / dt
                state[(mname, label)] = rate
                rep.row("train", [mname, label, fmt(rate), f"{1e3 * dt:.1f}",
                                  *ideal_cells(rate, flops[mname], peak),
                                  f"{t_warm:.0f}" if comp else ""])
            except Exception as e:  # noqa: BLE001 - record and go on
                rep.row("train", [mname, label, f"failed: {type(e).__name__}: {e}"[:200],
                                  "", "", "", "", ""])
            finally:
                step = None
                free(dev)
        model = opt = x = y = None
        free(dev)


# ----------------------------------------------------------------------------- feed


def section_feed(rep: Report, S: Sizes, dev: torch.device, box: Box, smoke: bool, state: dict,
                 tmp: Path) -> None:
    cpus = os.cpu_count() or 2
    rep.open("feed", "Feeding from a JPEG folder (BatchFeeder)",
             [f"{S.feed_n} JPEGs {S.jpeg_wh[0]}×{S.jpeg_wh[1]} (in the OS page cache after "
              f"generation), Pillow decode + resize (shorter side {round(S.size * 256 / 224)}) "
              f"+ centre crop {S.size}, batches of {S.feed_batch} in `batch_order`; one epoch "
              f"per row (the first epoch of a worker pool includes its start-up). {cpus} CPU "
              "cores."],
             ["what", "epoch", "img/s", "note"])
    t = time.perf_counter()
    paths = make_jpegs(tmp / "jpegs", S.feed_n, S.jpeg_wh)
    kb = np.mean([p.stat().st_size for p in paths]) / 1024
    rep.note("feed", f"fixture: {len(paths)} files, {kb:.0f} kB mean, generated in "
                     f"{time.perf_counter() - t:.1f} s")
    geom = Geometry(S.size, round(S.size * 256 / 224))
    n = len(paths)
    epochs = [batch_order(n, S.feed_batch, 0, e) for e in range(2)]
    n_img = len(epochs[0]) * S.feed_batch

    def run(label: str, feeder: BatchFeeder, n_epochs: int = 2, note: str = "") -> None:
        try:
            with feeder:
                for e in range(n_epochs):
                    if box.left() < 3 and not smoke:
                        rep.row("feed", [label, e + 1, "skipped: time box", ""])
                        return
                    dt = timed(lambda e=e: [None for _ in feeder.epoch(epochs[e])], dev)
                    rep.row("feed", [label, e + 1, fmt(n_img / dt), note or
                                     feeder.describe()])
                    state[(label, e)] = n_img / dt
        except Exception as e:  # noqa: BLE001
            rep.row("feed", [label, "", f"failed: {type(e).__name__}: {e}"[:200], ""])

    def lazy(threads: int, cache: Path | None = None) -> LazyImages:
        return LazyImages(ImageFiles(paths, geom, threads, cache))

    run("in-process, 2 decoding threads (= iter_batches)", BatchFeeder(lazy(2), dev), 1)
    worker_counts = [2] if smoke else sorted({max(1, cpus // 2), cpus})
    for w in worker_counts:
        run(f"DataLoader, {w} workers × 1 thread", BatchFeeder(lazy(1), dev, num_workers=w,
                                                               prefetch_factor=4))
    w = worker_counts[-1]
    run(f"memmap cache, {w} workers (epoch 1 decodes + fills, epoch 2 reads)",
        BatchFeeder(lazy(1, tmp / "cache"), dev, num_workers=w, prefetch_factor=4))
    if dev.type == "cuda":
        run(f"nvJPEG on the GPU, {w} workers reading bytes",
            BatchFeeder(lazy(1), dev, num_workers=w, prefetch_factor=4, gpu_decode=True))
    else:
        rep.row("feed", ["nvJPEG on the GPU", "", "skipped: no CUDA device", ""])
    # end to end: ResNet-50 AMP + channels-last fed by the workers
    if box.left() < 15 and not smoke:
        rep.row("feed", ["ResNet-50 training fed by the folder", "", "skipped: time box", ""])
        return
    try:
        torch.manual_seed(0)
        model = build_model("resnet50", 8).to(dev).to(memory_format=torch.channels_last)
        opt = make_optimizer(model, TrainConfig())
        norm = normalizer(dev)
        labels = torch.arange(n, device=dev) % 8
        with BatchFeeder(lazy(1), dev, num_workers=w, prefetch_factor=4) as feeder:
            for e in range(2):
                def epoch(e: int = e) -> None:
                    for idx, xb in zip(epochs[e], feeder.epoch(epochs[e]), strict=True):
                        y = F.one_hot(labels[idx.to(dev)], 8).float()
                        make_step(model, opt, xb, y, norm, dev.type == "cuda", True)()

                dt = timed(epoch, dev)
                ref = state.get(("resnet50", "AMP bf16 + channels-last"))
                note = (f"{100 * n_img / dt / ref:.0f} % of the synthetic-data rate ({ref:.0f})"
                        if ref else "")
                rep.row("feed", [f"ResNet-50 AMP bf16 + CL fed by {w} workers", e + 1,
                                 fmt(n_img / dt), note])
    except Exception as e:  # noqa: BLE001
        rep.row("feed", ["ResNet-50 training fed by the folder", "",
                         f"failed: {type(e).__name__}: {e}"[:200], ""])
    finally:
        model = opt = None
        free(dev)


# ----------------------------------------------------------------------------- explain


def section_explain(rep: Report, S: Sizes, dev: torch.device, box: Box, peak, smoke) -> None:
    rep.open("explain", f"Explaining and scoring ResNet-50 at {S.size} (auglens functions)",
             ["Random-init ResNet-50 (fp32, eval), random uint8 images on the device; images/s "
              "= explained images per second of the whole call; FLOPs counted on the same call "
              "(all forwards/backwards it makes per image)."],
             ["what", "images", "img/s", "GFLOP/img", "ideal img/s", "% of ideal", "settings"])
    torch.manual_seed(0)
    model = build_model("resnet50", 1000).to(dev).eval()
    norm = normalizer(dev)
    n_max = max(S.cam_n, S.dis_n)
    g = torch.Generator(device=dev).manual_seed(1)
    images = torch.randint(0, 256, (n_max, 3, S.size, S.size), dtype=torch.uint8, device=dev,
                           generator=g)
    k = min(2, n_max)

    def measure(label: str, n: int, fn: Callable[[torch.Tensor], Any], settings: str) -> Any:
        if box.left() < 5 and not smoke:
            rep.row("explain", [label, n, "skipped: time box", "", "", "", settings])
            return None
        try:
            fn(images[:k])  # warm-up (cuDNN autotune, allocator)
            flops = count_flops(lambda: fn(images[:k])) / k
            out = None

            def call() -> None:
                nonlocal out
                out = fn(images[:n])

            dt = timed(call, dev)
            rate = n / dt
            rep.row("explain", [label, n, fmt(rate), *ideal_cells(rate, flops, peak),
                                settings])
            return out
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            rep.row("explain", [label, n, f"failed: {type(e).__name__}: {e}"[:200], "", "", "",
                                settings])
            return None

    measure("Grad-CAM (`explain_images`)", S.cam_n,
            lambda x: explain_images(model, x, norm, "gradcam", batch_size=256), "batch 256")
    try:
        t = time.perf_counter()
        est = fit_estimator(model, images[: max(S.iba_n, 2)], norm, batch_size=256)
        sync(dev)
        rep.note("explain", f"IBA estimator fitted on {max(S.iba_n, 2)} images in "
                            f"{time.perf_counter() - t:.1f} s (layer4)")
        iba = {"estimator": est} | ({"steps": 2, "batch_noise": 2} if smoke else {})
        measure("IBA (`explain_images`)", S.iba_n,
                lambda x: explain_images(model, x, norm, "iba", batch_size=64,
                                         method_params=iba),
                "batch 64, " + ("2 steps × 2 noise copies (smoke)" if smoke else
                                "10 steps × 10 noise copies"))
    except Exception as e:  # noqa: BLE001
        rep.row("explain", ["IBA", S.iba_n, f"failed: {type(e).__name__}: {e}"[:200], "", "",
                            "", ""])
    cams = explain_images(model, images[: S.faith_n], norm, "gradcam")
    maps = upsample(cams.maps, S.size).to(dev)
    targets = cams.targets.to(dev)

    def faith(x: torch.Tensor) -> Any:
        m = len(x)
        xn = norm(x.float() / 255)
        return deletion_insertion_curves(model, xn, maps[:m], targets[:m], n_steps=steps,
                                         n_random=n_rand, max_batch=512)

    steps, n_rand = (4, 1) if smoke else (16, 4)
    measure("deletion/insertion (`deletion_insertion_curves`)", S.faith_n, faith,
            f"{steps} steps, MoRF/LeRF/RaO×{n_rand}, deletion and insertion")
    lab = S.size // 4
    concepts = torch.randint(0, 9, (n_max, 2, lab, lab), dtype=torch.int16,
                             generator=torch.Generator().manual_seed(2))
    names = ["-"] + [f"concept{i}" for i in range(1, 9)]
    cats = [""] + ["object"] * 4 + ["color"] * 4
    measure("dissection (`dissect`, layer4)", S.dis_n,
            lambda x: dissect(model, x, concepts[: len(x)], norm, names, cats, layer="layer4",
                              batch_size=256), f"2 label layers at {lab}×{lab}, 8 concepts")
    model = None
    free(dev)


# ----------------------------------------------------------------------------- paper A


def train_airbench_cell(xtr, ytr, xte, yte, mean, std, spec, seed, S, dev) -> tuple[float, float]:
    """The trainer's semantics (SPEC §8 seeds, batch order, augmentation generator) with airbench
    and AMP bf16 + channels-last. Returns (test accuracy, seconds)."""
    sync(dev)
    t = time.perf_counter()
    norm = normalizer(dev, mean, std)
    torch.manual_seed(derive_seed(seed, "init"))
    model = build_model("airbench", 10, width=S.a_width)
    init_from_data(model, xtr[:5000], normalizer(torch.device("cpu"), mean, std))
    model = model.to(dev).to(memory_format=torch.channels_last)
    lr = airbench_lr(S.a_batch)
    cfg = TrainConfig(epochs=S.a_epochs, batch_size=S.a_batch, lr=lr, momentum=0.85,
                      nesterov=True, weight_decay=airbench_weight_decay(S.a_batch, lr))
    opt = make_optimizer(model, cfg)
    base = [gr["lr"] for gr in opt.param_groups]
    aug = build_augmentation(spec)
    aug.set_dataset_stats(mean, std)
    aug_gen = make_generator(seed, "augment")
    n = len(ytr)
    spe = n // S.a_batch
    total, step = spe * S.a_epochs, 0
    for epoch in range(S.a_epochs):
        model.train()
        for idx in batch_order(n, S.a_batch, seed, epoch):
            idx_d = idx.to(dev)
            x = xtr[idx_d].float().div_(255)
            y = F.one_hot(ytr[idx_d], 10).float()
            x, y, _ = aug(x, y, aug_gen)
            x = norm(x).contiguous(memory_format=torch.channels_last)
            f = lr_factor(cfg, step, total, spe)
            for gr, b in zip(opt.param_groups, base, strict=True):
                gr["lr"] = b * f
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                logits = model(x)
            loss = soft_cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    model.eval()
    correct = 0
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16,
                                         enabled=dev.type == "cuda"):
        for i in range(0, len(yte), 2000):
            xb = norm(xte[i : i + 2000].float() / 255).contiguous(memory_format=torch.channels_last)
            correct += int((model(xb).argmax(1) == yte[i : i + 2000]).sum())
    sync(dev)
    return correct / len(yte), time.perf_counter() - t


def section_paper_a(rep: Report, S: Sizes, dev: torch.device, box: Box, cifar_root,
                    smoke: bool) -> None:
    real = cifar_root is not None
    if real:
        from auglens.data import build_cifar10

        d = build_cifar10(root=str(cifar_root), val_size=5000)
        xtr, ytr, xte, yte = d.train.images, d.train.labels, d.test.images, d.test.labels
        mean, std = d.mean, d.std
        what = f"real CIFAR-10 from {cifar_root} (paper-a split: {len(ytr)} train, 5000 val)"
    else:
        xtr, ytr, xte, yte, mean, std = stand_in(S.a_train, S.a_test)
        what = (f"a SYNTHETIC stand-in of CIFAR-10's size ({len(ytr)} train / {len(yte)} test, "
                "32×32, 10 classes): its accuracy says nothing about CIFAR-10 — only the time "
                "is meaningful; pass --cifar-root for the accuracy check")
    lr = airbench_lr(S.a_batch)
    rep.open("paper_a", "paper-a with airbench: baseline + 7 Study A augmentations × seeds",
             [f"Data: {what}. airbench width {S.a_width}, {S.a_epochs} epochs, batch "
              f"{S.a_batch}, SGD Nesterov lr {lr:.3g} (one-cycle), momentum 0.85, weight decay "
              f"{airbench_weight_decay(S.a_batch, lr):.3g}, AMP bf16 + channels-last, no flips, "
              "translations, label smoothing or TTA. Targets (issue): every cell ≥ 93 % on real "
              "CIFAR-10, all 40 cells ≤ 10 GPU-minutes. Seeds run in order (all variants of "
              "seed 0 first) until the time box ends."],
             ["variant", *[f"seed {s}" for s in range(S.a_seeds)], "mean s per cell"])
    xtr, ytr, xte, yte = xtr.to(dev), ytr.to(dev), xte.to(dev), yte.to(dev)
    acc: dict[tuple[str, int], float] = {}
    secs: dict[tuple[str, int], float] = {}
    stopped = ""
    for seed in range(S.a_seeds):
        for v in STUDY_A:
            if secs and box.left() < 1.3 * max(secs.values()) and not smoke:
                stopped = f"time box reached before {v}/seed {seed}"
                break
            spec = [] if v == "baseline" else [{"name": v}]
            try:
                acc[(v, seed)], secs[(v, seed)] = train_airbench_cell(
                    xtr, ytr, xte, yte, mean, std, spec, seed, S, dev)
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                stopped = f"{v}/seed {seed} failed: {type(e).__name__}: {e}"[:200]
                break
            print(f"[paper_a] {v} seed {seed}: {100 * acc[(v, seed)]:.2f} % in "
                  f"{secs[(v, seed)]:.1f} s", flush=True)
            _paper_table(rep, S, acc, secs)
        if stopped:
            break
    done = len(secs)
    total = sum(secs.values())
    cells = len(STUDY_A) * S.a_seeds
    est = total / done * cells if done else float("nan")
    rep.note("paper_a", f"{done}/{cells} cells in {total:.0f} s of GPU time"
                        + (f"; all {cells} would take ≈ {est:.0f} s ({est / 60:.1f} min, target "
                           "≤ 10 min)" if done < cells else f" ({total / 60:.1f} min, target "
                                                            "≤ 10 min)"))
    if acc:
        low = min(acc, key=acc.get)
        rep.note("paper_a", f"lowest cell {low[0]}/seed {low[1]}: {100 * acc[low]:.2f} %"
                            + ("" if real else " (synthetic data: not comparable to 93 %)"))
    if stopped:
        rep.note("paper_a", f"stopped: {stopped}")


def _paper_table(rep: Report, S: Sizes, acc: dict, secs: dict) -> None:
    rows = []
    for v in STUDY_A:
        cells = [f"{100 * acc[(v, s)]:.2f} %" if (v, s) in acc else "" for s in range(S.a_seeds)]
        ts = [secs[(v, s)] for s in range(S.a_seeds) if (v, s) in secs]
        rows.append("| " + " | ".join([v, *cells, f"{np.mean(ts):.1f}" if ts else ""]) + " |")
    rep.parts["paper_a"]["rows"] = rows
    rep.write()


# ----------------------------------------------------------------------------- main


def peak_for(dev: torch.device, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, f"{override:g} TFLOP/s (--peak-tflops)"
    if dev.type != "cuda":
        return None, "unknown on CPU (pass --peak-tflops for an ideal column)"
    name = torch.cuda.get_device_name(dev)
    for key, tf in PEAKS:
        if key in name:
            return tf, f"{tf:g} TFLOP/s dense bf16 ({key}, from the table)"
    return None, f"unknown for '{name}' (pass --peak-tflops)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, runs on CPU in seconds")
    ap.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda[:N]")
    ap.add_argument("--budget", type=float, default=450.0, help="seconds for all sections")
    ap.add_argument("--sections", nargs="+", default=SECTIONS, choices=SECTIONS)
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--cifar-root", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu.md"))
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu")
                       if args.device == "auto" else args.device)
    S = SMOKE if args.smoke else Sizes()
    peak, peak_text = peak_for(dev, args.peak_tflops)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "CPU"
    shm = os.statvfs("/dev/shm") if os.path.isdir("/dev/shm") else None
    header = [
        "# auglens GPU check" + (" (--smoke: tiny sizes, numbers mean nothing)" if args.smoke
                                 else ""),
        "",
        f"Device: {dev} — {name}; peak: {peak_text}. torch {torch.__version__}, "
        f"{os.cpu_count()} CPU cores, /dev/shm "
        f"{(shm.f_bsize * shm.f_blocks / 2**30) if shm else 0:.0f} GiB, Python "
        f"{platform.python_version()}. Budget {args.budget:.0f} s in all; each section gets the "
        "time left split in the ratio "
        f"{', '.join(f'{k} {100 * v:.0f}' for k, v in SHARE.items())}.",
    ]
    rep = Report(args.out, header)
    current = {"section": "setup"}

    def on_signal(signum: int, frame: object) -> None:
        sec = current["section"]
        if sec in rep.parts:
            rep.status(sec, f"killed by signal {signum} (partial)")
        rep.header.append(f"\nKilled by signal {signum} after {time.monotonic() - t0:.0f} s "
                          f"during '{sec}'.")
        rep.write()
        os._exit(128 + signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    state: dict = {}
    try:
        with tempfile.TemporaryDirectory(prefix="auglens-gpu-") as tmp:
            for sec in args.sections:
                current["section"] = sec
                rest = sum(SHARE[x] for x in args.sections[args.sections.index(sec):])
                box = Box(max(0.0, t0 + args.budget - time.monotonic()) * SHARE[sec] / rest)
                ts, cs = time.monotonic(), time.process_time()
                try:
                    if sec == "train":
                        section_train(rep, S, dev, box, peak, args.smoke, state)
                    elif sec == "feed":
                        section_feed(rep, S, dev, box, args.smoke, state, Path(tmp))
                    elif sec == "explain":
                        section_explain(rep, S, dev, box, peak, args.smoke)
                    else:
                        section_paper_a(rep, S, dev, box, args.cifar_root, args.smoke)
                    status = "done" if box.left() > 0 else "done (time box reached)"
                except Exception as e:  # noqa: BLE001 - one section's failure is a result
                    traceback.print_exc()
                    if sec not in rep.parts:
                        rep.open(sec, sec, [], ["error"])
                    status = f"failed: {type(e).__name__}: {e}"[:300]
                rep.status(sec, f"{status}, {time.monotonic() - ts:.0f} s wall, "
                                f"{time.process_time() - cs:.0f} s CPU of the main process")
                free(dev)
        rep.header.append(f"\nTotal {time.monotonic() - t0:.0f} s.")
        rep.write()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
