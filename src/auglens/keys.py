"""What every cached result depends on, as key inputs (`auglens.rundir.content_key` of them is the
key). One place says what a key covers:

- a trained cell: its full config (data, model, training, augmentations, seed), the content
  identity of the training files (`auglens.data.fingerprint`; built-in data by its parameters),
  the checkpoint it starts from (sha256 of the file, when ``model.checkpoint`` is set) and the
  numeric environment (torch version, device, CPU instruction set, pinned thread count,
  precision path);
- an explanation: the cell's weights (sha256), the test files, the method, layer, parameters and
  image count, and the numeric environment it runs in;
- an evaluation / dissection: the explanation (or weights) key, the settings that change per-cell
  numbers, the probe files, and the numeric environment;
- a stage table: the keys of every per-cell file it reads and the analysis settings.

Every CPU task runs with a pinned number of torch threads (``train.threads``, default 1), whatever
the executor or worker count, so resuming with another ``--workers`` gives identical results.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from .config import CellConfig
from .models.precision import numeric_environment, resolve_precision
from .utils import resolve_device


def task_threads(cfg: CellConfig) -> int:
    """The pinned torch thread count of every CPU task of this cell (``train.threads`` or 1)."""
    return int(cfg.train.threads or 1)


@contextlib.contextmanager
def pinned_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` for the block, restored after."""
    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def environment(cfg: CellConfig, precision: str | None = None) -> dict[str, str]:
    """The numeric environment a task of this cell runs in (``precision`` None: the training
    precision path; explanation and scoring run in ``fp32``)."""
    device = resolve_device(cfg.train.device)
    prec = precision or resolve_precision(cfg.train.precision, device)
    return numeric_environment(device, prec, task_threads(cfg))


def compute_precision(cfg: CellConfig, method: str | None = None) -> str:
    """Precision path of explaining and scoring a cell: bfloat16 autocast where training uses it
    (CUDA, CPUs with native bf16), float32 for IBA (its optimisation stays in float32)."""
    if method == "iba":
        return "fp32"
    return resolve_precision(cfg.train.precision, resolve_device(cfg.train.device))


def data_files(cfg: CellConfig, split: str) -> str:
    """Fingerprint of the files the ``train`` or ``test`` split of the cell's data reads."""
    from .data.fingerprint import data_fingerprint

    return data_fingerprint(cfg.data.name, cfg.data.params())[split]


def cell_inputs(cfg: CellConfig) -> dict[str, Any]:
    """The key inputs of a trained cell (module docstring)."""
    from .models.registry import file_sha256

    ckpt = cfg.model.checkpoint
    return {"config": cfg.content_hash(), "train_files": data_files(cfg, "train"),
            "checkpoint": file_sha256(ckpt) if ckpt is not None and ckpt.is_file() else None,
            "numeric": environment(cfg)}


def cell_key(cfg: CellConfig) -> str:
    """The key a trained cell's record must carry to be reused."""
    from .rundir import content_key

    return content_key(cell_inputs(cfg))


def describe_change(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    """Why a cached result with key inputs ``old`` is not reused for ``new`` (for --dry-run)."""
    if not old:
        return "not computed yet"
    names = {"config": "configuration", "train_files": "training files", "test_files":
             "test files", "checkpoint": "starting checkpoint", "numeric": "numeric environment"}
    changed = [k for k in new if old.get(k) != new[k]]
    if "numeric" in changed and isinstance(old.get("numeric"), dict):
        diff = [f"{k} {old['numeric'].get(k)} → {v}" for k, v in new["numeric"].items()
                if old["numeric"].get(k) != v]
        return "numeric environment changed (" + ", ".join(diff) + ")"
    return ", ".join(names.get(k, k) for k in changed) + " changed" if changed else "stale"
