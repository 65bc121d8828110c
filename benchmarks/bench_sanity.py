"""Sanity checks: cost per model on small_resnet at 32×32, and (with ``--cell``) what they say
about Grad-CAM / Grad-CAM++ / LayerCAM of a trained cell.

Cost (CPU, random-init model with non-trivial BatchNorm statistics, ``--n`` random uint8
images, Grad-CAM, default settings): ways, interleaved per repetition after a warm-up:
  explain      – one `explain_images` pass (the unit of cost)
  cascade      – `cascading_randomisation` (block groups; 1 + G explain passes, Spearman + SSIM
                 per step, paired and shuffled, plus the random-map control)
  random_logit – `random_logit_test` (2 explain passes + metrics)
  random_maps  – `random_maps` for the n image ids
With ``--cell RUN/cells/<variant>/seed<k>`` (repeatable): the cell's model and its dataset's first
``--n`` test images; per method (CAMs, and attention rollout for a transformer) the mean
Spearman / SSIM per cascade step, the controls, the random-logit test and
`randomisation_verdict`.

    .venv/bin/python benchmarks/bench_sanity.py [--n 256] [--reps 3] [--threads 2]
        [--width 16] [--cell DIR ...] [--out benchmarks/results/sanity.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import torch
from _harness import ratio_table, write_result

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import random_model  # noqa: E402

import auglens  # noqa: E402
from auglens.analysis.sanity import (  # noqa: E402
    cascading_randomisation,
    random_logit_test,
    random_maps,
    randomisation_verdict,
    summarize_sanity,
)
from auglens.explain import explain_images  # noqa: E402


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - 0.5) / 0.25


def cost(n: int, reps: int, width: int) -> tuple[dict, list[str]]:
    model = random_model("small_resnet", 10, 0, width=width)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    ways = {
        "explain": lambda imgs: explain_images(model, imgs, _normalize),
        "cascade": lambda imgs: cascading_randomisation(model, imgs, _normalize),
        "random_logit": lambda imgs: random_logit_test(model, imgs, _normalize),
        "random_maps": lambda imgs: random_maps(torch.arange(imgs.shape[0]), (8, 8)),
    }
    for f in ways.values():
        f(images[:4])
    wall: dict[str, list[float]] = {k: [] for k in ways}
    cpu: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(reps):
        for k, f in ways.items():
            t0, c0 = time.perf_counter(), time.process_time()
            f(images)
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    med = {k: statistics.median(v) for k, v in wall.items()}
    rows = ["| way | median wall s | per image |", "|---|---|---|"]
    rows += [f"| {k} | {v:.2f} | {1e3 * v / n:.2f} ms |" for k, v in med.items()]
    rows += [""] + ratio_table(
        {"small_resnet": {"wall": wall, "cpu": cpu}},
        [
            ("cascade / explain", "cascade", "explain", ""),
            ("random_logit / explain", "random_logit", "explain", ""),
        ],
    )
    return med, rows


def findings(cell: Path, n: int) -> list[str]:
    from auglens.config import CellConfig
    from auglens.explain.store import load_cell_model
    from auglens.train.trainer import load_dataset

    record = json.loads((cell / "record.json").read_text())
    cfg = CellConfig.model_validate(record["config"])
    data = load_dataset(cfg)
    model = load_cell_model(cell, cfg, data.num_classes)
    images = data.test.images[:n]
    methods = ["gradcam", "gradcam++", "layercam"]
    if any(isinstance(m, torch.nn.MultiheadAttention) for m in model.modules()):
        methods.append("rollout")
    rows = [
        f"### {cfg.model.name} {cfg.model.params()} on {cfg.data.name} {cfg.data.params()}",
        "",
        f"Trained {cfg.train.epochs} epochs ({cfg.train.optimizer}, lr {cfg.train.lr}), test "
        f"accuracy {record['test']['accuracy']:.3f}; first {n} test images; mean Spearman ρ / "
        "SSIM of the absolute maps to the original model's maps.",
        "",
        "| method | test | step | group | ρ | SSIM | ρ NaN |",
        "|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for method in methods:
        table = cascading_randomisation(model, images, data.normalize, method)
        logit = random_logit_test(model, images, data.normalize, method)
        table = pd.concat([table, logit], ignore_index=True)
        s = summarize_sanity(table)
        piv = s.pivot_table(
            index=["test", "step", "group"], columns="metric", values=["mean", "n_nan"], sort=False
        )
        for (test, step, group), r in piv.iterrows():
            rows.append(
                f"| {method} | {test} | {step} | {group} | {r[('mean', 'spearman')]:.3f} | "
                f"{r[('mean', 'ssim')]:.3f} | {int(r[('n_nan', 'spearman')])} |"
            )
        v = randomisation_verdict(table)
        verdicts.append(
            f"- {method}: fails = **{v['fails']}** (ρ after randomising `{v['group']}` "
            f"{v['similarity']:.3f} vs random maps {v['control']:.3f}, margin {v['margin']}); "
            f"all groups randomised ρ {v['all_randomised']:.3f}, shuffled pairing "
            f"{v['all_randomised_shuffled']:.3f}"
        )
    return rows + ["", "Verdicts (`randomisation_verdict`, defaults):", ""] + verdicts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--cell", type=Path, action="append", default=[])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sanity.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0]
    _, rows = cost(args.n, args.reps, args.width)
    text = [
        "# Sanity checks: cost per model and findings",
        "",
        f"Cost: small_resnet (width {args.width}, 6 block groups) at 32×32, {args.n} random "
        f"images, Grad-CAM, CPU, `torch.set_num_threads({args.threads})`, {args.reps} "
        "repetitions (ways interleaved), medians; ratios paired within a repetition.",
        "",
        *rows,
    ]
    if args.cell:
        text += ["", "## Findings on trained cells"]
    for cell in args.cell:
        text += ["", *findings(cell, args.n)]
    text += [
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores shared (load average "
        f"{load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end); torch "
        f"{torch.__version__}, auglens {auglens.__version__}; "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        "Command: `.venv/bin/python benchmarks/bench_sanity.py " + " ".join(sys.argv[1:]) + "`",
        "",
    ]
    write_result("\n".join(text), args.out)


if __name__ == "__main__":
    main()
