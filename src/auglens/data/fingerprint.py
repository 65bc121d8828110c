"""The content identity of a dataset's inputs, for the run's keys: a change to the files a split
is read from changes its fingerprint, so exactly the work that reads that split is recomputed.

A builder declares its files with a ``files(**params) -> {"train": [...], "test": [...]}``
attribute (``train`` = everything training reads, validation split included; ``test`` = what is
explained and evaluated, ground-truth boxes included); built-in data without files (``shapes``) is
identified by its parameters and generator version, which the config already carries. Files are
identified by (path relative to the data root, size, modification time), or by their content
(sha256) with ``fingerprint: content`` in the data section.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .base import DATASETS

SPLITS = ("train", "test")
_CACHE: dict[str, dict[str, str]] = {}


def files_fingerprint(paths: Iterable[Path], root: Path, content: bool = False) -> str:
    """sha256 over the sorted (relative path, size, mtime_ns) — or (relative path, sha256 of the
    bytes) with ``content`` — of ``paths``; a missing file counts as absent."""
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        rel = os.path.relpath(p, root).replace(os.sep, "/")
        try:
            if content:
                f = hashlib.sha256()
                with open(p, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        f.update(chunk)
                h.update(f"{rel}\0{f.hexdigest()}\n".encode())
            else:
                st = p.stat()
                h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{rel}\0missing\n".encode())
    return h.hexdigest()[:16]


def data_fingerprint(name: str, params: dict[str, Any]) -> dict[str, str]:
    """``{"train": …, "test": …}`` for the dataset a config names (empty strings for data
    without files). Computed once per process and configuration (listing and stat'ing the files,
    or hashing them with ``fingerprint: content``)."""
    import json

    cache_key = json.dumps([name, params], sort_keys=True, default=str)
    if cache_key in _CACHE:
        return _CACHE[cache_key]
    builder = DATASETS.get(name)
    lister = getattr(builder, "files", None)
    if lister is None:
        out = {s: "" for s in SPLITS}
    else:
        params = dict(params)
        content = params.get("fingerprint", "stat") == "content"
        files, root = lister(**params)
        out = {s: files_fingerprint(files.get(s, ()), root, content) for s in SPLITS}
    _CACHE[cache_key] = out
    return out


def forget() -> None:
    """Drop the per-process cache (tests that change files between runs in one process)."""
    _CACHE.clear()
