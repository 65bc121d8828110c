"""Small shared helpers: atomic writes, seeds, device choice, software versions."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .errors import AuglensError


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, stable across processes (unlike ``hash``)."""
    h = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def make_generator(*parts: object) -> torch.Generator:
    """A CPU generator seeded with ``derive_seed(*parts)``."""
    return torch.Generator().manual_seed(derive_seed(*parts))


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' → CUDA when available, else CPU. Asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AuglensError(
            f"device '{name}' requested but CUDA is not available; use 'cpu' or 'auto'"
        )
    return torch.device(name)


def check_writable_dir(path: str | Path) -> Path:
    """Create ``path`` if needed and check that files can be written there."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path, prefix=".write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise AuglensError(f"output directory {path} is not writable: {e.strerror or e}") from None
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path next to ``path``; on success rename it onto ``path``, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def software_versions() -> dict[str, str]:
    import numpy
    import torchvision

    from . import __version__

    return {
        "auglens": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
    }


def upsample(maps: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Maps (B, h, w) → (B, H, W) by bilinear interpolation, ``align_corners=False``.

    Use only when a metric needs input resolution; record that it was used.
    """
    import torch.nn.functional as F

    if maps.ndim != 3:
        raise AuglensError(f"upsample expects maps of shape (B, h, w), got {tuple(maps.shape)}")
    size = (size, size) if isinstance(size, int) else tuple(size)
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def gaussian_taps(sigma: float, radius: int) -> torch.Tensor:
    """Float64 (2·radius + 1,) normalised 1-D Gaussian exp(-½ (i/σ)²) at integer offsets
    i = -radius..radius. Each user picks its radius by the reference it follows (scipy's
    ``truncate``, skimage's SSIM window, IBA's kernel size); torchvision's blur uses its own
    formula (`auglens.augment._util.gaussian_kernels`)."""
    i = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (i / sigma) ** 2)
    return g / g.sum()
