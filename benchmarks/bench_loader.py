"""Folder-loader throughput (JPEG decode + resize/crop to 224) vs the small model's training step.

Side by side in one run on CPU, repetitions interleaved, medians reported:
  loader, threads=k   `LazyImages` batches of 64 decoded by k threads (0 = the calling thread):
                      Pillow decode of a 500×375 JPEG, Pillow bilinear resize of the shorter
                      side to 256, centre crop 224
  loader, DataLoader  the usual way: a torch DataLoader with 2 worker processes calling the same
                      per-image function (batch 64)
  loader, cache hit   `LazyImages` reading the memory-mapped disk cache (second epoch)
  train step          default ``small_resnet`` (width 16), SGD step, batch 128 at 32×32 (its
                      usual input) and batch 32 at 224×224 (what the folder loader produces)
  end to end          training at 224 fed by `iter_batches` (LazyImages, 2 threads, prefetch 2),
                      i.e. decoding overlapped with the step on the same 2 cores
The JPEG fixture (``--n`` images, 8 class folders) is generated once: smooth random colour fields
with noise and edges, quality 90, ~100 kB each like ImageNet photos.

    .venv/bin/python benchmarks/bench_loader.py [--n 512] [--reps 3] \
        [--out benchmarks/results/loader.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from auglens.config import TrainConfig
from auglens.data.images import Geometry, ImageFiles, LazyImages, iter_batches, load_image
from auglens.models import build_model
from auglens.train.trainer import make_optimizer, soft_cross_entropy

GEOM = Geometry(224, 256)
LOAD_BATCH = 64


def make_jpegs(root: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` 500×375 JPEGs (quality 90) in 8 class folders; reused if present."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = root / f"class{i % 8}" / f"img_{i:05d}.JPEG"
        paths.append(p)
        if p.is_file():
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        low = rng.random((375 // 25 + 2, 500 // 25 + 2, 3))
        img = np.kron(low, np.ones((25, 25, 1)))[:375, :500] * 200
        img += rng.normal(0, 18, (375, 500, 3))
        img[:, rng.integers(0, 500, 6)] = 255  # a few sharp edges
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(p, quality=90)
    return paths


class _Files(torch.utils.data.Dataset):
    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return load_image(self.paths[i], GEOM)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--data", type=Path, default=None, help="fixture folder (default: temp)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/loader.md"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    tmp = tempfile.TemporaryDirectory(prefix="auglens-bench-loader-")
    data = args.data or Path(tmp.name) / "jpegs"
    t0 = time.perf_counter()
    paths = make_jpegs(data, args.n)
    kb = np.mean([p.stat().st_size for p in paths]) / 1024
    print(f"{len(paths)} JPEGs ({kb:.0f} kB mean) ready in {time.perf_counter() - t0:.1f}s")
    order = list(torch.randperm(len(paths), generator=torch.Generator().manual_seed(0)))
    batches = [torch.stack(order[i : i + LOAD_BATCH]) for i in range(0, len(order), LOAD_BATCH)]

    def run_lazy(workers: int, cache: Path | None = None) -> float:
        images = LazyImages(ImageFiles(paths, GEOM, workers, cache))
        t = time.perf_counter()
        for idx in batches:
            images[idx]
        dt = time.perf_counter() - t
        images.files.close()
        return len(paths) / dt

    def run_dataloader(workers: int) -> float:
        dl = torch.utils.data.DataLoader(_Files(paths), batch_size=LOAD_BATCH, shuffle=True,
                                         num_workers=workers, persistent_workers=False)
        t = time.perf_counter()
        for _ in dl:
            pass
        return len(paths) / (time.perf_counter() - t)

    cache_dir = Path(tmp.name) / "cache"
    run_lazy(2, cache_dir)  # fills the cache once

    def single_image_split() -> tuple[float, float]:
        from auglens.data.images import _open_rgb

        sample = paths[:64]
        t = time.perf_counter()
        decoded = [_open_rgb(p) for p in sample]
        t_dec = (time.perf_counter() - t) / len(sample)
        t = time.perf_counter()
        for im in decoded:
            GEOM.apply_pil(im)
        return t_dec, (time.perf_counter() - t) / len(sample)

    torch.manual_seed(0)
    model = build_model("small_resnet", 10).to(memory_format=torch.channels_last).train()
    opt = make_optimizer(model, TrainConfig())
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)

    def step(x_uint8: torch.Tensor, y: torch.Tensor) -> None:
        x = ((x_uint8.float() / 255 - mean) / 0.226).contiguous(memory_format=torch.channels_last)
        loss = soft_cross_entropy(model(x), F.one_hot(y, 10).float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def run_train(size: int, batch: int, steps: int) -> float:
        x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
        y = torch.randint(0, 10, (batch,))
        step(x, y)  # warm-up for this shape
        t = time.perf_counter()
        for _ in range(steps):
            step(x, y)
        return batch * steps / (time.perf_counter() - t)

    def run_end_to_end(steps: int = 4, batch: int = 32) -> float:
        images = LazyImages(ImageFiles(paths, GEOM, 2))
        idx = [torch.stack(order[i * batch : (i + 1) * batch]) for i in range(steps + 1)]
        y = torch.randint(0, 10, (batch,))
        it = iter_batches(images, idx, torch.device("cpu"), prefetch=2)
        step(next(it), y)  # warm-up (first batch not overlapped)
        t = time.perf_counter()
        for x in it:
            step(x, y)
        dt = time.perf_counter() - t
        images.files.close()
        return batch * steps / dt

    load_before = os.getloadavg()[0]
    keys = ["lazy0", "lazy1", "lazy2", "dl2", "cache", "train32", "train224", "e2e", "dec", "rs"]
    res: dict[str, list[float]] = {k: [] for k in keys}
    for rep in range(args.reps):
        res["lazy0"].append(run_lazy(0))
        res["lazy1"].append(run_lazy(1))
        res["lazy2"].append(run_lazy(2))
        res["dl2"].append(run_dataloader(2))
        res["cache"].append(run_lazy(2, cache_dir))
        res["train32"].append(run_train(32, 128, 6))
        res["train224"].append(run_train(224, 32, 3))
        res["e2e"].append(run_end_to_end())
        dec, rs = single_image_split()
        res["dec"].append(dec)
        res["rs"].append(rs)
        print(f"rep {rep + 1}/{args.reps} done", flush=True)
    med = {k: statistics.median(v) for k, v in res.items()}
    t224 = med["train224"]
    rows = [
        ("folder loader, 0 threads (in the calling thread)", med["lazy0"]),
        ("folder loader, 1 decoding thread", med["lazy1"]),
        ("folder loader, 2 decoding threads", med["lazy2"]),
        ("torch DataLoader, 2 worker processes, same per-image function", med["dl2"]),
        ("folder loader, disk-cache hits (memory-mapped, 2 threads)", med["cache"]),
        ("small_resnet training step, 32×32, batch 128", med["train32"]),
        ("small_resnet training step, 224×224, batch 32", t224),
        ("small_resnet at 224 fed by LazyImages (2 threads, prefetch 2)", med["e2e"]),
    ]
    lines = [
        f"{len(paths)} JPEGs 500×375 ({kb:.0f} kB mean), Pillow decode + resize (shorter side "
        f"256) + centre crop 224; {args.reps} interleaved repetitions (medians); CPU with 2 cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} torch threads. Single image, one "
        f"thread: decode {1e3 * med['dec']:.2f} ms + resize/crop {1e3 * med['rs']:.2f} ms. "
        f"Load average (1 min) {load_before:.2f} before, {os.getloadavg()[0]:.2f} after "
        "(other processes share the 2 cores: read ratios, not absolute speeds).",
        "",
        "| what | images/s | vs training at 224 |",
        "|---|---|---|",
    ]
    for name, v in rows:
        lines.append(f"| {name} | {v:.0f} | {v / t224:.2f}× |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    tmp.cleanup()


if __name__ == "__main__":
    main()
