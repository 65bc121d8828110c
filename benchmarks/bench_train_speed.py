"""Training speed of the default study, old vs new, and the precision / memory-format paths, side
by side in one run (CPU).

1. The default preset's training, before and after: the previous ``quick`` cell (small_resnet
   width 8, batch 32) and the current one (fast_resnet width 16, 4×4 patchify stem, batch 64,
   the precision path chosen for this machine), each trained by ``train_cell`` for the same
   number of epochs on the same 4 000 shapes images (augmentation, loss, optimiser and
   validation included), repetitions interleaved. Reports training images per second (epochs ×
   images / wall time).
2. One training step per augmentation on the new default model: float32 NCHW, float32
   channels-last (the trainer's path) and bfloat16 autocast + channels-last (used automatically
   where the CPU has native bfloat16; measured here anyway to show why it is not used without).

    .venv/bin/python benchmarks/bench_train_speed.py [--reps 3] [--epochs 2] [--steps 20] \
        [--out benchmarks/results/train-speed.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from auglens.augment import build_augmentation
from auglens.config import CellConfig, TrainConfig, load_config
from auglens.data import build_shapes
from auglens.models import build_model
from auglens.models.precision import autocast, cpu_has_bf16, resolve_precision
from auglens.train.trainer import make_optimizer, soft_cross_entropy, train_cell

AUGS = ["none", "affine", "cutmix", "color_jitter", "elastic", "equalize", "gaussian_blur",
        "random_crop"]
BEFORE = {"model": {"name": "small_resnet", "width": 8},
          "train": {"batch_size": 32, "lr": 0.1, "threads": 1}}
AFTER = {"model": {"name": "fast_resnet", "width": 16, "patch": 4},
         "train": {"batch_size": 64, "lr": 0.05, "threads": 1}}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def preset_throughput(cfg: CellConfig, epochs: int) -> float:
    t0 = time.perf_counter()
    rec = train_cell(cfg).record
    dt = time.perf_counter() - t0
    assert rec["epochs_trained"] == epochs
    return epochs * cfg.data.params()["n_train"] / dt


def step_time(aug: str, layout: str, precision: str, steps: int, data, batch: int = 64) -> float:
    torch.manual_seed(0)
    model = build_model("fast_resnet", data.num_classes, width=16, patch=4)
    cl = layout == "channels_last"
    if cl:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, TrainConfig())
    augment = build_augmentation([] if aug == "none" else [{"name": aug}])
    augment.set_dataset_stats(data.mean, data.std)
    g = torch.Generator().manual_seed(0)
    dev = torch.device("cpu")
    images, labels = data.train.images, data.train.labels

    def run(k: int) -> None:
        for i in range(k):
            sl = slice((i * batch) % (len(labels) - batch), (i * batch) % (len(labels) - batch)
                       + batch)
            x = images[sl].float() / 255
            y = F.one_hot(labels[sl], data.num_classes).float()
            x, y, _ = augment(x, y, g)
            x = data.normalize(x)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(dev, precision):
                out = model(x)
            loss = soft_cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    run(2)
    t0 = time.perf_counter()
    run(steps)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/train-speed.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)  # the local executor gives each of 2 workers one thread
    common = {"data": {"name": "shapes", "n_train": 4000, "n_val": 500, "n_test": 1000},
              "train": {"stop": "fixed", "epochs": args.epochs}}
    cfgs = {}
    for name, spec in (("before", BEFORE), ("after", AFTER)):
        raw = {"data": common["data"], "model": spec["model"],
               "train": common["train"] | spec["train"]}
        cfgs[name] = load_config(CellConfig, raw)
    build_shapes(n_train=4000, n_val=500, n_test=1000)  # cache the data outside the timing
    res: dict[str, list[float]] = {k: [] for k in cfgs}
    for rep in range(args.reps):
        for name, cfg in cfgs.items():
            res[name].append(preset_throughput(cfg, args.epochs))
        print(f"preset rep {rep + 1}/{args.reps}: "
              + ", ".join(f"{k} {v[-1]:.0f} img/s" for k, v in res.items()), flush=True)
    before, after = statistics.median(res["before"]), statistics.median(res["after"])

    data = build_shapes(n_train=2048, n_val=10, n_test=10)
    auto = resolve_precision("auto", torch.device("cpu"))
    paths = [("NCHW", "fp32"), ("channels_last", "fp32"), ("channels_last", "bf16")]
    steps: dict[tuple[str, str], list[float]] = {}
    for _rep in range(args.reps):
        for aug in AUGS:
            for layout, prec in paths:
                n = args.steps if prec == "fp32" or cpu_has_bf16() else max(3, args.steps // 5)
                steps.setdefault((aug, layout + "/" + prec), []).append(
                    step_time(aug, layout, prec, n, data))
        print(f"step rep {_rep + 1}/{args.reps} done", flush=True)
    med = {k: statistics.median(v) for k, v in steps.items()}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        f"CPU: {cpu_name()}; torch {torch.__version__}, capability "
        f"{torch.backends.cpu.get_cpu_capability()}, native bfloat16: {cpu_has_bf16()} → "
        f"`precision: auto` uses **{auto}** here. One torch thread (as each of the 2 local "
        f"workers); load average at the end {load:.1f}. Medians of {args.reps} interleaved "
        "repetitions.",
        "",
        "**Default preset training, before → after** (`train_cell`, "
        f"{args.epochs} epochs × 4 000 shapes images at 32×32, validation included):",
        "",
        "| preset cell | model | training images/s |",
        "|---|---|---|",
        f"| before (previous `quick`) | small_resnet width 8, batch 32 | {before:.0f} |",
        f"| after (current `quick`) | fast_resnet width 16, patch 4, batch 64 | {after:.0f} |",
        f"| **ratio** | | **{after / before:.2f}×** |",
        "",
        "**One training step per augmentation** (fast_resnet width 16, patch 4, batch 64; ms per "
        "step):",
        "",
        "| augmentation | fp32 NCHW | fp32 channels-last | bf16 + channels-last | "
        "channels-last vs NCHW | bf16 vs fp32 channels-last |",
        "|---|---|---|---|---|---|",
    ]
    for aug in AUGS:
        a, b, c = (med[(aug, f"{lay}/{p}")] for lay, p in paths)
        lines.append(f"| {aug} | {1e3 * a:.2f} | {1e3 * b:.2f} | {1e3 * c:.2f} | "
                     f"{a / b:.2f}× faster | {b / c:.2f}× |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
