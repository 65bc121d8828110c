"""Coverage of 95 % intervals over models by simulation (SPEC §9), for the three ways an interval
can be built from (seed × image) values:

  two-way t    – auglens' interval (`auglens.analysis.inference.interval`): seed and image
                 variance from their own resamplings, small-sample corrected, Student t with
                 Satterthwaite degrees of freedom;
  two-way pct  – the plain percentile interval of the joint (seed × image) resampling;
  image-level  – seed-average each image, then bootstrap the images (what a one-level bootstrap
                 does; ignores the training run as a source of variation).

Values y[s, i] = a_s + b_i + e_si with a ~ N(0, sd_seed²), b ~ N(0, sd_image²),
e ~ N(0, sd_noise²); the true mean is 0.

    .venv/bin/python benchmarks/coverage.py [--sims 400] [--out benchmarks/results/coverage.md]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from auglens.analysis.inference import interval
from auglens.stats import bootstrap_ci, draw, grand_mean, percentile_ci, resampled_means

SCENARIOS = [  # (seeds, images, sd_seed, sd_image, sd_noise)
    (2, 200, 0.05, 0.1, 0.1),
    (3, 200, 0.05, 0.1, 0.1),
    (5, 200, 0.05, 0.1, 0.1),
    (10, 200, 0.05, 0.1, 0.1),
    (3, 200, 0.0, 0.1, 0.1),
    (3, 200, 0.1, 0.02, 0.05),
    (3, 1000, 0.03, 0.15, 0.15),
]


def simulate(n_seeds: int, n_images: int, sd_seed: float, sd_image: float, sd_noise: float,
             sims: int, n_boot: int) -> dict[str, tuple[float, float]]:
    rng = np.random.default_rng(2024)
    rows = [(i,) for i in range(n_seeds)]
    hits = {"two-way t": [], "two-way pct": [], "image-level": []}
    widths = {k: [] for k in hits}
    for k in range(sims):
        v = (rng.normal(0, sd_seed, (n_seeds, 1)) + rng.normal(0, sd_image, (1, n_images))
             + rng.normal(0, sd_noise, (n_seeds, n_images)))
        res = draw(n_seeds, n_images, n_boot, seed=k)
        est = interval(lambda r, v=v: resampled_means(v, rows, r), grand_mean(v), res)
        lo_p, hi_p = percentile_ci(resampled_means(v, rows, res))
        lo_i, hi_i = bootstrap_ci(v.mean(0), n_boot=n_boot, seed=k)
        for name, (lo, hi) in (("two-way t", (est["low"], est["high"])),
                               ("two-way pct", (lo_p, hi_p)), ("image-level", (lo_i, hi_i))):
            hits[name].append(lo <= 0 <= hi)
            widths[name].append(hi - lo)
    return {k: (float(np.mean(hits[k])), float(np.mean(widths[k]))) for k in hits}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sims", type=int, default=400)
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/coverage.md"))
    args = ap.parse_args()
    se = (0.25 * 0.95 * 0.05 / args.sims) ** 0.5 * 2  # ≈ 2 standard errors of a 95 % share
    lines = [f"Coverage of nominal 95 % intervals, {args.sims} simulations per row, "
             f"{args.boot} resamples (±{100 * se:.1f} points Monte-Carlo error at 2 SE); "
             "mean interval width in brackets.", "",
             "| seeds | images | sd seed | sd image | sd residual | two-way t (auglens) | "
             "two-way percentile | image-level bootstrap |", "|---|---|---|---|---|---|---|---|"]
    for sc in SCENARIOS:
        r = simulate(*sc, sims=args.sims, n_boot=args.boot)
        cells = [f"{100 * c:.1f} % ({w:.3f})" for c, w in
                 (r["two-way t"], r["two-way pct"], r["image-level"])]
        lines.append("| " + " | ".join(str(x) for x in sc) + " | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
