"""Helpers of bench_gpu.py: time boxes, the incrementally written report, timing, FLOPs, and the
synthetic data it generates (a JPEG folder, a CIFAR-sized stand-in)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Box:
    """A section's time box."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


class Report:
    """Markdown sections written atomically after every change."""

    def __init__(self, path: Path, header: list[str]) -> None:
        self.path, self.header = path, header
        self.parts: dict[str, dict[str, Any]] = {}

    def open(self, name: str, title: str, intro: list[str], columns: list[str]) -> None:
        self.parts[name] = {"title": title, "intro": intro, "status": "running",
                            "head": ["| " + " | ".join(columns) + " |",
                                     "|" + "---|" * len(columns)], "rows": [], "notes": []}
        self.write()

    def row(self, name: str, cells: list[Any]) -> None:
        self.parts[name]["rows"].append("| " + " | ".join(str(c) for c in cells) + " |")
        print(f"[{name}] " + " | ".join(str(c) for c in cells), flush=True)
        self.write()

    def note(self, name: str, text: str) -> None:
        self.parts[name]["notes"].append(text)
        self.write()

    def status(self, name: str, text: str) -> None:
        self.parts[name]["status"] = text
        print(f"[{name}] {text}", flush=True)
        self.write()

    def text(self) -> str:
        out = list(self.header)
        for p in self.parts.values():
            out += ["", f"## {p['title']}", "", f"Status: {p['status']}.", "", *p["intro"]]
            out += ["", *p["head"], *p["rows"]]
            if p["notes"]:
                out += ["", *[f"- {n}" for n in p["notes"]]]
        return "\n".join(out) + "\n"

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(self.text())
        os.replace(tmp, self.path)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn: Callable[[], Any], dev: torch.device, n: int = 1) -> float:
    """Seconds for ``n`` calls of ``fn`` (device synchronised before and after)."""
    sync(dev)
    t = time.perf_counter()
    for _ in range(n):
        fn()
    sync(dev)
    return time.perf_counter() - t


def fmt(rate: float) -> str:
    """A rate with 3 significant digits below 100, whole numbers above."""
    return f"{rate:.0f}" if rate >= 100 else f"{rate:.3g}"


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs (matmuls and convolutions, 2 per multiply-add) of one call of ``fn``. Note: torch
    2.14's counter overcounts the backward of grouped (depthwise) convolutions by about the
    group count, so training FLOPs are taken as 3 × the counted forward FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def ideal_cells(rate: float, flops_per_image: float | None, peak: float | None) -> list[str]:
    """[GFLOP/img, ideal img/s, % of ideal] for a measured rate."""
    if not flops_per_image:
        return ["n/a", "n/a", "n/a"]
    g = f"{flops_per_image / 1e9:.2f}"
    if not peak:
        return [g, "n/a (no peak)", "n/a"]
    ideal = peak * 1e12 / flops_per_image
    return [g, fmt(ideal), f"{100 * rate / ideal:.2g} %"]


def normalizer(dev: torch.device, mean=MEAN, std=STD) -> Callable[[torch.Tensor], torch.Tensor]:
    m = torch.tensor(mean, device=dev).view(1, 3, 1, 1)
    s = torch.tensor(std, device=dev).view(1, 3, 1, 1)
    return lambda x: (x - m.to(x.dtype)) / s.to(x.dtype)


def free(dev: torch.device) -> None:
    """Return cached CUDA memory between measurements (nothing to do on the CPU)."""
    if dev.type == "cuda":
        import gc

        gc.collect()
        torch.cuda.empty_cache()


def _one_jpeg(args: tuple[Path, int, tuple[int, int]]) -> None:
    from PIL import Image

    path, seed, (w, h) = args
    if path.is_file():
        return
    rng = np.random.default_rng(seed)
    low = rng.random((h // 25 + 2, w // 25 + 2, 3))
    img = np.kron(low, np.ones((25, 25, 1)))[:h, :w] * 200 + rng.normal(0, 18, (h, w, 3))
    img[:, rng.integers(0, w, 6)] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)


def make_jpegs(root: Path, n: int, wh: tuple[int, int]) -> list[Path]:
    """``n`` JPEGs (smooth colour fields + noise + edges, quality 90) in 8 class folders."""
    from concurrent.futures import ProcessPoolExecutor

    paths = [root / f"class{i % 8}" / f"img_{i:05d}.JPEG" for i in range(n)]
    jobs = [(p, i, wh) for i, p in enumerate(paths)]
    if n <= 64:
        for j in jobs:
            _one_jpeg(j)
    else:
        with ProcessPoolExecutor(os.cpu_count() or 2) as ex:
            list(ex.map(_one_jpeg, jobs, chunksize=32))
    return paths


def stand_in(n_train: int, n_test: int):
    """Synthetic CIFAR-sized data: per-class smooth colour templates + noise, uint8 32×32."""
    g = torch.Generator().manual_seed(0)
    templ = F.interpolate(torch.rand(10, 3, 4, 4, generator=g), size=32, mode="bilinear",
                          align_corners=False)

    def split(n: int, seed: int):
        gg = torch.Generator().manual_seed(seed)
        y = torch.randint(0, 10, (n,), generator=gg)
        x = 0.5 * templ[y] + 0.5 * torch.rand(n, 3, 32, 32, generator=gg)
        return (x * 255).round().to(torch.uint8), y

    xtr, ytr = split(n_train, 1)
    xte, yte = split(n_test, 2)
    mean = tuple(float(v) for v in (xtr[:5000].float() / 255).mean((0, 2, 3)))
    std = tuple(float(v) for v in (xtr[:5000].float() / 255).std((0, 2, 3)))
    return xtr, ytr, xte, yte, mean, std
