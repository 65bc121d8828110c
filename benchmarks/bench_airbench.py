"""airbench vs small_resnet on CPU: training-step speed and time to 90 % on the shapes data.

Part ``speed`` — images/s of one SGD training step (forward, soft cross-entropy, backward, step;
channels-last input as the trainer feeds it) at 32×32 for each model × batch size, repetitions
interleaved across all (model, batch) pairs in the same run, medians reported.

Part ``converge`` — full training runs on ``build_shapes(n_train=3000, n_val=500, n_test=1000)``
with the auglens trainer's own pieces (``batch_order``, ``make_optimizer``, ``lr_factor``
one-cycle, ``soft_cross_entropy``, un-augmented, seed 0; airbench's whitening fitted with
``init_from_data`` on the training images first). The one-cycle schedule depends on the epoch
budget, so each budget E is a separate run; reported: test accuracy after E epochs and the wall
time of the run. Recipes:
  default   the trainer's defaults (SGD lr 0.1, momentum 0.9, Nesterov, wd 5e-4, batch 128)
  airbench  airbench94's optimiser for a mean loss: lr 1.5 per 1024 images (×B/1024), momentum
            0.85, Nesterov, weight decay 0.0153 per 1024 examples (`airbench_weight_decay`)

    nice -n 19 .venv/bin/python benchmarks/bench_airbench.py [--part all] [--reps 3] \
        [--threads 1] [--out benchmarks/results/airbench.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from auglens.config import TrainConfig
from auglens.data import build_shapes
from auglens.models import build_model, init_from_data
from auglens.models.airbench import airbench_lr, airbench_weight_decay
from auglens.train.trainer import (
    batch_order,
    deterministic,
    lr_factor,
    make_optimizer,
    predict,
    soft_cross_entropy,
)
from auglens.utils import derive_seed

SPEED_MODELS = {
    "small_resnet w8": ("small_resnet", {"width": 8}),
    "small_resnet w16": ("small_resnet", {"width": 16}),
    "airbench w0.25": ("airbench", {"width": 0.25}),
    "airbench w0.5": ("airbench", {"width": 0.5}),
}
#: not timed on CPU (FLOPs only): airbench94's full width
FLOPS_ONLY = {"airbench w1": ("airbench", {"width": 1.0})}
BATCHES = (32, 128, 256)


def recipe(name: str, batch: int, epochs: int) -> TrainConfig:
    if name == "airbench":
        lr = airbench_lr(batch)
        return TrainConfig(epochs=epochs, batch_size=batch, lr=lr, momentum=0.85, nesterov=True,
                           weight_decay=airbench_weight_decay(batch, lr), schedule="onecycle")
    return TrainConfig(epochs=epochs, batch_size=batch)


def speed(reps: int, steps: int) -> list[str]:
    torch.manual_seed(0)
    models, opts = {}, {}
    for label, (name, kw) in SPEED_MODELS.items():
        m = build_model(name, 10, **kw).to(memory_format=torch.channels_last).train()
        models[label], opts[label] = m, make_optimizer(m, TrainConfig())
    data = {b: (torch.randn(b, 3, 32, 32).contiguous(memory_format=torch.channels_last),
                F.one_hot(torch.randint(0, 10, (b,)), 10).float()) for b in BATCHES}

    def run(label: str, b: int, n: int) -> float:
        m, opt = models[label], opts[label]
        x, y = data[b]
        t = time.perf_counter()
        for _ in range(n):
            loss = soft_cross_entropy(m(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return b * n / (time.perf_counter() - t)

    res: dict[tuple[str, int], list[float]] = {(m, b): [] for m in models for b in BATCHES}
    for key in res:
        run(*key, 1)  # warm-up
    for rep in range(reps):
        for key in res:
            res[key].append(run(*key, steps))
        print(f"speed rep {rep + 1}/{reps}", flush=True)
    lines = [
        "| model | parameters | forward MFLOP/img | " + " | ".join(f"batch {b} img/s"
                                                         for b in BATCHES)
        + " | vs small_resnet w16 (batch 128) |",
        "|---|---|---|" + "---|" * len(BATCHES) + "---|",
    ]
    ref = statistics.median(res[("small_resnet w16", 128)])
    for label, (name, kw) in {**SPEED_MODELS, **FLOPS_ONLY}.items():
        m = models.get(label) or build_model(name, 10, **kw)
        n_par = sum(p.numel() for p in m.parameters())
        with torch.no_grad():
            mflop = count_flops(lambda m=m: m.eval()(torch.randn(1, 3, 32, 32))) / 1e6
        if label in models:
            cells = [f"{statistics.median(res[(label, b)]):.0f}" for b in BATCHES]
            rel = f"{statistics.median(res[(label, 128)]) / ref:.2f}×"
        else:
            cells, rel = ["not timed"] * len(BATCHES), ""
        lines.append(f"| {label} | {n_par / 1e3:.0f} k | {mflop:.1f} | " + " | ".join(cells)
                     + f" | {rel} |")
    return lines


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def train_run(data, name: str, kw: dict, cfg: TrainConfig, seed: int = 0) -> tuple[float, float,
                                                                                    list[float]]:
    """(test accuracy, seconds, per-epoch val accuracy) of one trainer-like run."""
    t0 = time.perf_counter()
    dev = torch.device("cpu")
    with deterministic(None):
        torch.manual_seed(derive_seed(seed, "init"))
        model = build_model(name, data.num_classes, **kw)
        init_from_data(model, data.train.images, data.normalize)
        model = model.to(memory_format=torch.channels_last)
        opt = make_optimizer(model, cfg)
        base = [g["lr"] for g in opt.param_groups]
        images, labels = data.train.images, data.train.labels
        spe = len(labels) // cfg.batch_size
        total, step, vals = spe * cfg.epochs, 0, []
        for epoch in range(cfg.epochs):
            model.train()
            for idx in batch_order(len(labels), cfg.batch_size, seed, epoch):
                x = data.normalize(images[idx].float() / 255).contiguous(
                    memory_format=torch.channels_last)
                y = F.one_hot(labels[idx], data.num_classes).float()
                f = lr_factor(cfg, step, total, spe)
                for g, lr in zip(opt.param_groups, base, strict=True):
                    g["lr"] = lr * f
                loss = soft_cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
            pv = predict(model, data.val.images, data, 500, dev).argmax(1)
            vals.append((pv == data.val.labels).float().mean().item())
        pt = predict(model, data.test.images, data, 500, dev).argmax(1)
        acc = (pt == data.test.labels).float().mean().item()
    return acc, time.perf_counter() - t0, vals


def converge(runs: list[tuple[str, str, dict, str, int, list[int]]]) -> list[str]:
    data = build_shapes(n_train=3000, n_val=500, n_test=1000)
    lines = [
        "| model | recipe | batch | epochs | test accuracy | seconds | val accuracy per epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, name, kw, rec, batch, epochs in runs:
        for e in epochs:
            acc, sec, vals = train_run(data, name, kw, recipe(rec, batch, e))
            row = (f"| {label} | {rec} | {batch} | {e} | {100 * acc:.1f} % | {sec:.0f} | "
                   + ", ".join(f"{100 * v:.0f}" for v in vals) + " |")
            print(row, flush=True)
            lines.append(row)
    return lines


RUNS = [  # (label, model, params, recipe, batch, epoch budgets)
    ("airbench w0.25", "airbench", {"width": 0.25}, "airbench", 128, [2, 3, 4, 8]),
    ("airbench w0.25", "airbench", {"width": 0.25}, "default", 128, [8]),
    ("small_resnet w16", "small_resnet", {"width": 16}, "default", 128, [8, 16]),
]
CONVERGE_NOTE = (
    "Seconds are wall time on a shared machine whose load changes between rows: compare "
    "epochs × the per-step cost of the speed table, not the seconds. The val accuracy per epoch "
    "belongs to that row's schedule (one-cycle over its own epoch budget)."
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["all", "speed", "converge"], default="all")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, nargs="+", default=None,
                    help="only these epoch budgets of `RUNS` (default: all)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/airbench.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    text = [
        f"CPU, {torch.get_num_threads()} torch threads, torch {torch.__version__}; load average "
        f"(1 min) {load:.2f} at start (the machine is shared: read ratios within a table).", "",
    ]
    if args.part in ("all", "speed"):
        text += [f"## Training step, 32×32, images/s ({args.reps} interleaved repetitions of "
                 f"{args.steps} steps, medians)", "", *speed(args.reps, args.steps), ""]
    if args.part in ("all", "converge"):
        runs = [r[:5] + ([e for e in r[5] if e in args.epochs] if args.epochs else r[5],)
                for r in RUNS]
        text += ["## Test accuracy on shapes (3000 train / 1000 test images, 32×32, 10 "
                 "classes), no augmentation, seed 0", "", *converge(runs), "",
                 CONVERGE_NOTE, ""]
    text.append(f"Load average (1 min) at the end: {os.getloadavg()[0]:.2f}.")
    out = "\n".join(text) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(out)
    print(out)


if __name__ == "__main__":
    main()
