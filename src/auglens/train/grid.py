"""Train every (variant, seed) cell of an experiment into ``OUT/cells/<variant>/seed<k>/``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import CellConfig, ExperimentConfig
from .trainer import RECORD, WEIGHTS, train_cell


def cell_dir(out_dir: str | Path, variant: str, seed: int) -> Path:
    return Path(out_dir) / "cells" / variant / f"seed{seed}"


def cell_done(path: Path, cfg: CellConfig, checkpoints: bool = False) -> bool:
    """A cell is done when its record exists, matches the config hash and its weights exist
    (and, with ``checkpoints``, when it kept one checkpoint per epoch)."""
    rec = path / RECORD
    if not rec.is_file() or not (path / WEIGHTS).is_file():
        return False
    try:
        record = json.loads(rec.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if record.get("config_hash") != cfg.content_hash():
        return False
    return not checkpoints or len(record.get("checkpoint_sha256") or {}) == len(
        record.get("history", ()))


def train_grid(
    exp: ExperimentConfig,
    out_dir: str | Path,
    on_cell: Callable[[str, int, dict[str, Any], bool], None] | None = None,
    on_epoch: Callable[[str, int, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train (or reuse) every cell; returns one performance row per cell.

    ``on_cell(variant, seed, record, cached)`` is called after each cell; ``on_epoch`` per epoch.
    """
    rows = []
    for variant, seed, cfg in exp.cells():
        path = cell_dir(out_dir, variant, seed)
        cached = cell_done(path, cfg)
        if cached:
            record = json.loads((path / RECORD).read_text())
        else:
            cb = (lambda e, v=variant, s=seed: on_epoch(v, s, e)) if on_epoch else None
            record = train_cell(cfg, path, progress=cb).record
        test = record["test"]
        rows.append(
            {
                "variant": variant,
                "seed": seed,
                **{k: test[k] for k in ("accuracy", "precision", "recall", "f1")},
                "train_seconds": record["train_seconds"],
            }
        )
        if on_cell:
            on_cell(variant, seed, record, cached)
    return rows
