"""The run directory: the one owner of its layout, its records, keys, file metadata, stage
manifests and lock. Everything that reads or writes a run directory asks `RunDir`.

Layout (paths relative to the run directory; documented for users in docs/outputs.md)::

    experiment.json                          the validated experiment
    run.log, .auglens.lock, .auglens.owner   log (appended), lock (filelock) and its holder
    cells/<variant>/seed<k>/                 one trained cell:
        weights.safetensors, record.json     (record written last: it marks the cell done)
        augment_log.parquet, checkpoints/epoch<NNN>.safetensors
        iba_estimator-<layer>-<n>[-epoch<NNN>].safetensors, dissection-<key>.parquet
    explanations/<method>/<variant>/seed<k>[-epoch<NNN>].safetensors
    evaluation/<method>/<variant>/seed<k>[-epoch<NNN>][-curves].parquet
    dissection/<variant>/seed<k>.parquet
    tables/[<method>/]*.parquet, plots/[<method>/]*.png
                                             Study A of a method other than gradcam goes into a
                                             sub-folder named after it; everything else at the root
    stages/<name>.json, stages/timings.json  aggregation manifests (key + outputs relative to the
                                             run directory), stage times and skipped stages
    report/index.html, report/summary.md

Keys: `content_key` (sha256 of canonical JSON, 16 hex digits) of exactly what a file depends on,
stored in the file itself: ``auglens_key`` in a safetensors header or a Parquet schema's metadata
(`read_key`, `write_table`, `write_tensors`; other metadata sorted, so identical results give
identical bytes). Weights are identified by the sha256 of their safetensors file
(`auglens.models.weights_sha256`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import AuglensError
from .utils import atomic_path, write_json

KEY = "auglens_key"
#: the Study A method whose tables and plots sit at the root of tables/ and plots/
ROOT_METHOD = "gradcam"
#: path prefix (relative to the run directory) → the stage that writes it (longest prefix wins)
STAGE_OF = {
    "experiment.json": "run", "run.log": "run", "stages/": "run", "cells/": "train",
    "tables/performance": "train", "tables/matching": "train", "explanations/": "explain",
    "tables/": "compare", "plots/": "compare", "evaluation/": "evaluate",
    "tables/interpretability": "evaluate", "tables/summary_b": "evaluate",
    "tables/alignment_counts": "evaluate", "tables/curves": "evaluate",
    "tables/conventions_b": "evaluate", "tables/label_mixing": "evaluate",
    "tables/accuracy_points_b": "evaluate", "tables/accuracy_correlation_b": "evaluate",
    "plots/alignment": "evaluate", "plots/deletion_insertion": "evaluate",
    "plots/faithfulness": "evaluate", "plots/label_mixing": "evaluate",
    "plots/accuracy_b": "evaluate", "dissection/": "dissect", "tables/dissection": "dissect",
    "plots/dissection": "dissect", "report/": "report", "sanity/": "sanity",
    "tables/sanity": "sanity", "plots/sanity": "sanity", "tables/label_study": "evaluate",
    "tables/composition": "compare",
}


def method_dir(method: str) -> str:
    """A method's folder name: adapter names such as ``captum:IntegratedGradients`` become
    ``captum-IntegratedGradients`` (``:`` is not allowed in Windows paths)."""
    return method.replace(":", "-")


def method_of_dir(name: str) -> str:
    """The method a folder name stands for (inverse of `method_dir` for adapter families)."""
    for family in ("captum", "pgc"):
        if name.startswith(family + "-"):
            return family + ":" + name[len(family) + 1:]
    return name


_HASHES: dict[tuple[str, int, int], str] = {}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_key(obj: Any) -> str:
    """sha256 (first 16 hex digits) of the canonical JSON of ``obj`` (sorted keys)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stage_of(rel: str) -> str:
    """The stage that writes ``rel`` (a path relative to the run directory)."""
    best = max((p for p in STAGE_OF if rel.startswith(p)), key=len, default="")
    return STAGE_OF.get(best, "run")


def _tail(seed: int, epoch: int | None) -> str:
    return f"seed{seed}" if epoch is None else f"seed{seed}-epoch{epoch:03d}"


@dataclass(frozen=True)
class CellFiles:
    """The files of one trained cell directory (inside a run directory, or any ``auglens train
    --out`` directory)."""

    path: Path

    @property
    def weights(self) -> Path:
        return self.path / "weights.safetensors"

    @property
    def record(self) -> Path:
        """record.json, written last: its presence marks a finished cell."""
        return self.path / "record.json"

    @property
    def augment_log(self) -> Path:
        return self.path / "augment_log.parquet"

    def checkpoint(self, epoch: int) -> Path:
        """The weights after ``epoch`` (1-based)."""
        return self.path / "checkpoints" / f"epoch{epoch:03d}.safetensors"

    def estimator(self, layer: str, n_images: int, epoch: int | None = None) -> Path:
        tail = "" if epoch is None else f"-epoch{epoch:03d}"
        return self.path / f"iba_estimator-{layer}-{n_images}{tail}.safetensors"


@dataclass(frozen=True)
class CellRecord:
    """What ``record.json`` says about a finished cell (``raw``: the whole record)."""

    variant: str
    seed: int
    config_hash: str
    weights_sha256: str
    checkpoint_sha256: Mapping[str, str]
    raw: Mapping[str, Any] = field(repr=False)

    def weights(self, epoch: int | None = None) -> str:
        """sha256 of the final weights, or of the checkpoint after ``epoch``."""
        if epoch is None:
            return self.weights_sha256
        sha = self.checkpoint_sha256.get(str(epoch))
        if sha is None:
            raise AuglensError(f"cell {self.variant}/seed{self.seed} has no checkpoint of epoch "
                               f"{epoch} (the baseline keeps one per epoch; `--force train`)")
        return sha


class RunDir:
    """Paths, records, manifests and the lock of one run directory ``root``."""

    def __init__(self, root: str | Path | RunDir) -> None:
        self.root = root.root if isinstance(root, RunDir) else Path(root)
        #: damaged files found by the checks (relative paths), to be reported and recomputed
        self.damaged: set[str] = set()
        self.reported: set[str] = set()

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    # ------------------------------------------------------------------ top level
    @property
    def experiment(self) -> Path:
        return self.root / "experiment.json"

    @property
    def log(self) -> Path:
        return self.root / "run.log"

    @property
    def lock_file(self) -> Path:
        return self.root / ".auglens.lock"

    @property
    def lock_owner(self) -> Path:
        """Who holds the lock (pid, since when), for the refusal message."""
        return self.root / ".auglens.owner"

    @property
    def timings(self) -> Path:
        return self.root / "stages" / "timings.json"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    def manifest(self, name: str) -> Path:
        return self.root / "stages" / f"{name}.json"

    # ------------------------------------------------------------------ cells
    def cell(self, variant: str, seed: int) -> Path:
        return self.root / "cells" / variant / f"seed{seed}"

    def cell_files(self, variant: str, seed: int) -> CellFiles:
        return CellFiles(self.cell(variant, seed))

    def weights(self, variant: str, seed: int, epoch: int | None = None) -> Path:
        """The final weights of a cell, or its checkpoint after ``epoch`` (1-based)."""
        files = self.cell_files(variant, seed)
        return files.weights if epoch is None else files.checkpoint(epoch)

    def record_path(self, variant: str, seed: int) -> Path:
        return self.cell_files(variant, seed).record

    def estimator(self, variant: str, seed: int, layer: str, n_images: int,
                  epoch: int | None = None) -> Path:
        return self.cell_files(variant, seed).estimator(layer, n_images, epoch)

    def dissection_cache(self, variant: str, seed: int) -> Path:
        """The folder holding a cell's exact dissection counts (keyed by the weights' hash)."""
        return self.cell(variant, seed)

    def record(self, variant: str, seed: int) -> CellRecord | None:
        """The record of a finished cell, or None (missing or unreadable)."""
        try:
            raw = json.loads(self.record_path(variant, seed).read_text())
        except (OSError, ValueError):
            return None
        return CellRecord(variant, seed, raw.get("config_hash", ""),
                          raw.get("weights_sha256", ""), raw.get("checkpoint_sha256") or {}, raw)

    def cell_done(self, variant: str, seed: int, key: str, checkpoints: bool = False) -> bool:
        """True when the cell's record has ``key`` (`auglens.keys.cell_inputs`) and its weights
        (and, with ``checkpoints``, one checkpoint per epoch) are intact: their sha256 equals the
        record's. A damaged file is reported by `damaged` and makes the cell not done."""
        rec = self.record(variant, seed)
        if rec is None or rec.raw.get("key") != key:
            return False
        files = [(self.weights(variant, seed), rec.weights_sha256)]
        if checkpoints:
            if len(rec.checkpoint_sha256) != len(rec.raw.get("history", ())):
                return False
            files += [(self.weights(variant, seed, int(e)), sha)
                      for e, sha in rec.checkpoint_sha256.items()]
        return all(self.intact_file(p, sha) for p, sha in files)

    def intact_file(self, path: Path, sha256: str) -> bool:
        """True if ``path`` exists with this sha256 (cached per process by path, size and
        modification time); a file that exists with another hash is recorded in `damaged`."""
        try:
            st = path.stat()
        except OSError:
            return False
        stamp = (str(path), st.st_size, st.st_mtime_ns)
        if stamp not in _HASHES:
            _HASHES[stamp] = _sha256(path)
        if _HASHES[stamp] != sha256:
            self.damaged.add(self.relative(path))
            return False
        return True

    # ------------------------------------------------------------------ per-cell results
    @property
    def explanations_root(self) -> Path:
        return self.root / "explanations"

    def explanation(self, method: str, variant: str, seed: int, epoch: int | None = None) -> Path:
        return (self.root / "explanations" / method_dir(method) / variant
                / f"{_tail(seed, epoch)}.safetensors")

    def explained_methods(self) -> list[str]:
        """Methods with stored explanations (their registry names)."""
        root = self.root / "explanations"
        return sorted(method_of_dir(p.name) for p in root.iterdir()
                      if p.is_dir()) if root.is_dir() else []

    def trained_cells(self) -> list[tuple[str, int]]:
        """(variant, seed) of every cell directory with a record, sorted."""
        out = []
        for p in sorted((self.root / "cells").glob("*/seed*/record.json")):
            try:
                out.append((p.parent.parent.name, int(p.parent.name.removeprefix("seed"))))
            except ValueError:
                continue
        return out

    def study_a_methods(self) -> list[str]:
        """Methods with Study A tables: ``gradcam`` at the root, others in sub-folders."""
        out = [ROOT_METHOD] if self.table("summary_a").is_file() else []
        root = self.root / "tables"
        if root.is_dir():
            out += sorted(method_of_dir(p.name) for p in root.iterdir()
                          if p.is_dir() and (p / "summary_a.parquet").is_file())
        return out

    def manifests(self) -> list[Path]:
        """The aggregation manifests in stages/ (not timings.json)."""
        return sorted(p for p in (self.root / "stages").glob("*.json")
                      if p.name != self.timings.name)

    def evaluation(self, method: str, variant: str, seed: int, epoch: int | None = None) -> Path:
        return (self.root / "evaluation" / method_dir(method) / variant
                / f"{_tail(seed, epoch)}.parquet")

    def curves(self, method: str, variant: str, seed: int, epoch: int | None = None) -> Path:
        return (self.root / "evaluation" / method_dir(method) / variant
                / f"{_tail(seed, epoch)}-curves.parquet")

    def dissection(self, variant: str, seed: int) -> Path:
        return self.root / "dissection" / variant / f"seed{seed}.parquet"

    def sanity(self, method: str, variant: str, seed: int) -> Path:
        """The sanity checks (cascade, random logit) of one cell and method."""
        return self.root / "sanity" / method_dir(method) / variant / f"seed{seed}.parquet"

    # ------------------------------------------------------------------ tables and plots
    def tables(self, method: str | None = None) -> Path:
        """tables/ (``method`` None or ``gradcam``) or tables/<method>/ (Study A of another
        method)."""
        return self.root / "tables" / ("" if method in (None, ROOT_METHOD) else method_dir(method))

    def plots(self, method: str | None = None) -> Path:
        return self.root / "plots" / ("" if method in (None, ROOT_METHOD) else method_dir(method))

    def table(self, name: str, method: str | None = None) -> Path:
        return self.tables(method) / f"{name}.parquet"

    def plot(self, name: str, method: str | None = None) -> Path:
        return self.plots(method) / f"{name}.png"

    # ------------------------------------------------------------------ manifests
    def relative(self, path: str | Path) -> str:
        """``path`` relative to the run directory (POSIX separators)."""
        p = Path(path)
        try:
            return p.relative_to(self.root).as_posix()
        except ValueError:
            return p.resolve().relative_to(self.root.resolve()).as_posix()

    def write_manifest(self, name: str, key: str | None, outputs: list[Path]) -> None:
        """Record that aggregation ``name`` with input key ``key`` wrote ``outputs``: each by its
        path relative to the run directory (a copied or moved run stays cached), size and
        sha256 (a damaged output is recomputed, never trusted)."""
        files = {}
        for p in sorted(outputs, key=str):
            files[self.relative(p)] = {"size": Path(p).stat().st_size, "sha256": _sha256(Path(p))}
        write_json(self.manifest(name), {"key": key, "outputs": files})

    def manifest_outputs(self, name: str, key: str | None) -> list[Path] | None:
        """The outputs of aggregation ``name`` if it was done with ``key`` and every output is
        still there, intact (size and sha256 as recorded); else None (damaged ones are added to
        `damaged`)."""
        try:
            m = json.loads(self.manifest(name).read_text())
        except (OSError, ValueError):
            return None
        if key is None or m.get("key") != key or not isinstance(m.get("outputs"), dict):
            return None
        outs = []
        for rel, meta in m["outputs"].items():
            path = self.root / rel
            try:
                size = path.stat().st_size
            except OSError:
                return None
            if size != meta.get("size") or not self.intact_file(path, meta.get("sha256", "")):
                self.damaged.add(rel)
                return None
            outs.append(path)
        return outs

    def key_of(self, path: Path) -> str | None:
        """The key stored in a per-cell result file (`read_key`), None when it is missing; a file
        that exists but is unreadable or truncated is added to `damaged` (and gives None)."""
        if not Path(path).is_file():
            return None
        key = read_key(path)
        if key is None:
            self.damaged.add(self.relative(path))
        return key

    # ------------------------------------------------------------------ housekeeping
    def stale_temporaries(self) -> Iterator[Path]:
        """Temporary files (``.<name>.*.tmp``) a killed process left behind."""
        if self.root.is_dir():
            yield from (p for p in self.root.rglob(".*.tmp") if p.is_file())

    def clean_temporaries(self) -> int:
        """Delete stale temporaries (call with the lock held); returns how many."""
        n = 0
        for p in list(self.stale_temporaries()):
            try:
                p.unlink()
                n += 1
            except OSError:
                pass
        return n

    def lock(self, wait: bool = False) -> RunLock:
        """The run directory's exclusive lock (`RunLock`), as a context manager."""
        return RunLock(self, wait)


class RunLock:
    """Exclusive lock on a run directory (``.auglens.lock``, `filelock`, portable). A second
    process refuses with a clear message naming the holder, or waits when ``wait``. Released on
    exit, also on a crash (the OS drops the lock with the process)."""

    def __init__(self, run: RunDir | str | Path, wait: bool = False) -> None:
        self.run = run if isinstance(run, RunDir) else RunDir(run)
        self.wait = wait
        self._lock: Any = None

    def __enter__(self) -> RunLock:
        from filelock import FileLock, Timeout

        self.run.root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.run.lock_file), timeout=-1 if self.wait else 0)
        try:
            lock.acquire()
        except Timeout:
            try:
                holder = self.run.lock_owner.read_text().strip() or "unknown"
            except OSError:
                holder = "unknown"
            raise AuglensError(
                f"run directory {self.run.root} is in use by another auglens process "
                f"({holder}); wait for it to finish, pass --wait, or choose another --out"
            ) from None
        self._lock = lock
        self.run.lock_owner.write_text(f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None


# ---------------------------------------------------------------------- file metadata (keys)


def write_table(df: Any, path: Path, key: str | None = None,
                extra: Mapping[str, str] | None = None) -> Path:
    """Write a DataFrame as Parquet atomically; ``key`` (and ``extra``, prefixed ``auglens_``)
    go into the schema metadata, sorted."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    if key is not None:
        meta[KEY.encode()] = key.encode()
    for k, v in sorted((extra or {}).items()):
        meta[f"auglens_{k}".encode()] = str(v).encode()
    with atomic_path(path) as tmp:
        pq.write_table(table.replace_schema_metadata(dict(sorted(meta.items()))), tmp)
    return path


def table_metadata(path: Path) -> dict[str, str] | None:
    """The ``auglens_*`` metadata of a Parquet file (prefix removed; ``key`` for the key), or
    None when the file is missing or unreadable."""
    import pyarrow.parquet as pq

    if not Path(path).is_file():
        return None
    try:
        meta = pq.read_schema(path).metadata or {}
    except Exception:  # noqa: BLE001 - any damage: treat as absent
        return None
    return {k.decode()[8:]: v.decode() for k, v in meta.items() if k.startswith(b"auglens_")}


def write_tensors(path: Path, tensors: Mapping[str, Any], meta: Mapping[str, str]) -> Path:
    """Write tensors as safetensors atomically with string metadata, the header in canonical form
    (sorted keys): safetensors itself orders metadata keys by a hash map, so identical results
    would otherwise give different bytes."""
    from safetensors.torch import save

    raw = save(dict(tensors), metadata={k: str(v) for k, v in meta.items()})
    n = int.from_bytes(raw[:8], "little")
    header = json.dumps(json.loads(raw[8:8 + n]), sort_keys=True, separators=(",", ":"))
    header += " " * (-len(header) % 8)  # keep the data 8-byte aligned, as safetensors does
    with atomic_path(path) as tmp:
        tmp.write_bytes(len(header).to_bytes(8, "little") + header.encode() + raw[8 + n:])
    return path


def read_tensors(path: str | Path, tensors: bool = True, what: str = "file"
                 ) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; ``tensors=False`` reads only the header. A
    missing or damaged file raises an AuglensError naming it."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise AuglensError(f"{what} not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            loaded = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
            return loaded, dict(f.metadata() or {})
    except Exception as e:  # noqa: BLE001 - safetensors raises several types
        raise AuglensError(f"corrupt {what} {path}: {e}") from None


def safetensors_intact(path: Path) -> bool:
    """Cheap integrity check of a safetensors file: its header parses and the file is exactly as
    long as the header says (a truncated or extended file fails)."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"),
                  default=0)
        return Path(path).stat().st_size == 8 + n + end
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False


def read_key(path: str | Path) -> str | None:
    """The key stored in a Parquet or safetensors file, or None (missing, unreadable or — for
    safetensors — truncated: `safetensors_intact`; Parquet checks its footer on read)."""
    path = Path(path)
    if path.suffix == ".parquet":
        meta = table_metadata(path)
        return None if meta is None else meta.get("key")
    if not safetensors_intact(path):
        return None
    try:
        return read_tensors(path, tensors=False)[1].get(KEY)
    except AuglensError:
        return None
