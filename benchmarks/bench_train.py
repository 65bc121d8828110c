"""Training throughput with each augmentation vs ``none``, side by side in one run (CPU).

Three ways per augmentation, batch 128, default small model on the built-in shapes dataset:
  batched   – auglens: whole batch augmented on the training device (per-sample parameters)
  aug only  – the batched augmentation alone, to read its share of the step time
  loader    – the usual torchvision way: a v2 transform per image inside a DataLoader
              (num_workers=0, and 2 worker processes), then the same training step.
Repetitions are interleaved across augmentations; medians are reported.

    .venv/bin/python benchmarks/bench_train.py [--steps 20] [--reps 3] [--threads 2] \
        [--augs none,randaugment,...] [--out benchmarks/results/train.md]

Augmentations without a torchvision per-image equivalent (cutout, saliencymix, resizemix, fmix,
gridmask, label_smoothing) get no DataLoader columns. The load average before and after the run
is recorded (the machine may be shared); the share of the step is given in wall time and in
process CPU time (all threads), which a loaded machine distorts less.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from auglens.augment import build_augmentation
from auglens.augment.reference import reference_transform
from auglens.config import TrainConfig
from auglens.data import build_shapes
from auglens.errors import ConfigError
from auglens.models import build_model
from auglens.train.trainer import make_optimizer, soft_cross_entropy

AUGS = [
    "none",
    "affine",
    "cutmix",
    "color_jitter",
    "elastic",
    "equalize",
    "gaussian_blur",
    "random_crop",
    "random_resized_crop",
    "hflip",
    "randaugment",
    "trivialaugment",
    "autoaugment",
    "augmix",
    "random_erasing",
    "gridmask",
    "resizemix",
    "fmix",
    "label_smoothing",
]
MIXED_BATCH = ("cutmix", "mixup")  # torchvision's versions mix a whole collated batch
BATCH = 128


class PerSample(torch.utils.data.Dataset):
    def __init__(self, images, labels, transform):
        self.images, self.labels, self.t = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.t(self.images[i].float() / 255), self.labels[i]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/train.md"))
    ap.add_argument("--augs", default=",".join(AUGS), help="comma-separated names ('none' "
                    "is always measured)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 is steadier on a "
                    "loaded machine: spinning OpenMP threads inflate both wall and CPU time)")
    args = ap.parse_args()
    augs = ["none"] + [a for a in args.augs.split(",") if a and a != "none"]
    load_before = os.getloadavg()
    torch.set_num_threads(args.threads)
    data = build_shapes(n_train=BATCH * args.steps, n_val=10, n_test=10)
    images, labels = data.train.images, data.train.labels
    n_cls = data.num_classes
    torch.manual_seed(0)
    model = build_model("small_resnet", n_cls).to(memory_format=torch.channels_last).train()
    opt = make_optimizer(model, TrainConfig())

    def step(x, y):
        x = data.normalize(x).contiguous(memory_format=torch.channels_last)
        loss = soft_cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    batches = list(torch.arange(len(labels)).view(args.steps, BATCH))

    def run_batched(name):
        aug = build_augmentation([{"name": name}])
        aug.set_dataset_stats(data.mean, data.std)
        g = torch.Generator().manual_seed(0)
        t_aug = c_aug = 0.0
        t0, c0 = time.perf_counter(), time.process_time()
        for idx in batches:
            x = images[idx].float() / 255
            y = F.one_hot(labels[idx], n_cls).float()
            ta, ca = time.perf_counter(), time.process_time()
            x, y, _ = aug(x, y, g)
            t_aug += time.perf_counter() - ta
            c_aug += time.process_time() - ca
            step(x, y)
        n = args.steps
        return ((time.perf_counter() - t0) / n, t_aug / n,
                (time.process_time() - c0) / n, c_aug / n)

    def run_loader(name, workers):
        try:
            t = reference_transform(name)
        except ConfigError:
            return None
        mix = name in MIXED_BATCH
        ds = PerSample(images, labels, v2_identity() if mix else t)
        dl = torch.utils.data.DataLoader(
            ds, batch_size=BATCH, shuffle=False, num_workers=workers, persistent_workers=False
        )
        t0 = time.perf_counter()
        for x, lab in dl:
            if mix:
                x, y = t(x, F.one_hot(lab, n_cls).float())
            else:
                y = F.one_hot(lab, n_cls).float()
            step(x, y)
        return (time.perf_counter() - t0) / args.steps

    res = {a: {"batched": [], "aug": [], "cpu_step": [], "cpu_aug": [], "loader0": [],
               "loader2": []} for a in augs}
    run_batched("none")  # warm-up
    for rep in range(args.reps):
        for a in augs:
            s, ta, cs, ca = run_batched(a)
            res[a]["batched"].append(s)
            res[a]["aug"].append(ta)
            res[a]["cpu_step"].append(cs)
            res[a]["cpu_aug"].append(ca)
            res[a]["loader0"].append(run_loader(a, 0))
            if rep == 0:  # worker start-up is costly; one pass is enough to read its level
                res[a]["loader2"].append(run_loader(a, 2))
        print(f"rep {rep + 1}/{args.reps} done", flush=True)

    def med_or_none(v):
        return None if any(x is None for x in v) else statistics.median(v)

    def fmt(v, f):
        return "—" if v is None else f(v)

    med = {a: {k: med_or_none(v) for k, v in r.items()} for a, r in res.items()}
    base = med["none"]["batched"]
    load_after = os.getloadavg()
    lines = [
        f"Batch {BATCH}, {args.steps} steps × {args.reps} interleaved repetitions (medians), "
        f"small_resnet, shapes 32×32, CPU, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads. Load average (1/5/15 min) before: "
        + "/".join(f"{v:.1f}" for v in load_before) + ", after: "
        + "/".join(f"{v:.1f}" for v in load_after) + f" ({os.cpu_count()} CPUs).",
        "",
        "| augmentation | batched img/s | step ms | aug ms | aug share of step | "
        "aug share (CPU time) | vs none | DataLoader img/s (0 workers) | (2 workers) | "
        "batched speed-up vs loader-0 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a in augs:
        m = med[a]
        speedup = None if m["loader0"] is None else m["loader0"] / m["batched"]
        lines.append(
            f"| {a} | {BATCH / m['batched']:.0f} | {1e3 * m['batched']:.1f} | "
            f"{1e3 * m['aug']:.2f} | "
            f"{100 * m['aug'] / m['batched']:.1f} % | "
            f"{100 * m['cpu_aug'] / m['cpu_step']:.1f} % | {m['batched'] / base:.3f}× | "
            f"{fmt(m['loader0'], lambda v: f'{BATCH / v:.0f}')} | "
            f"{fmt(m['loader2'], lambda v: f'{BATCH / v:.0f}')} | "
            f"{fmt(speedup, lambda v: f'{v:.2f}×')} |"
        )
    if "augmix" in augs:  # JSD consistency training: two AugMix views per batch
        jsd = build_augmentation([{"name": "augmix", "jsd": True}])
        g = torch.Generator().manual_seed(0)
        t_views = []
        for idx in batches:
            x = images[idx].float() / 255
            y = F.one_hot(labels[idx], n_cls).float()
            t0 = time.perf_counter()
            jsd.views(x, y, g)
            t_views.append(time.perf_counter() - t0)
        lines += [
            "",
            f"augmix with jsd=true: `views` (two AugMix views) takes "
            f"{1e3 * statistics.median(t_views):.1f} ms per batch (median of {len(t_views)}); "
            "the step itself then runs the model on 3× the batch (not measured here).",
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


def v2_identity():
    from torchvision.transforms import v2

    return v2.Identity()


if __name__ == "__main__":
    main()
