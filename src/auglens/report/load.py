"""Read what a run directory holds (tolerating anything missing) and say why a file is absent."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import AuglensError

STUDY_A = "`auglens compare RUN_DIR` or `auglens run`"
EVALUATE = "`auglens evaluate RUN_DIR` or `auglens run`"
DISSECT = "`auglens dissect RUN_DIR` or `auglens run`"
STUDY_B = f"{EVALUATE} (alignment, faithfulness) and {DISSECT} (dissection)"

#: path prefix (relative to the run directory) → what writes it; longest prefix wins.
PRODUCERS = {
    "experiment.json": "`auglens run`, first thing",
    "cells/": "the train stage of `auglens run`",
    "run.log": "`auglens run`",
    "stages/": "`auglens run`",
    "explanations/": "`auglens explain RUN_DIR` or `auglens run`",
    "tables/performance.parquet": "the train stage of `auglens run`",
    "tables/matching.parquet": "the train stage of `auglens run`",
    "tables/interpretability_matched.parquet": EVALUATE,
    "tables/label_mixing.parquet": EVALUATE,
    "tables/accuracy_points_b.parquet": EVALUATE,
    "tables/accuracy_correlation_b.parquet": EVALUATE,
    "plots/accuracy_b.png": EVALUATE,
    "tables/": STUDY_A,
    "plots/": STUDY_A,
    "tables/interpretability.parquet": EVALUATE,
    "tables/summary_b.parquet": EVALUATE,
    "tables/alignment_counts.parquet": EVALUATE,
    "tables/curves.parquet": EVALUATE,
    "tables/conventions_b.json": EVALUATE,
    "tables/dissection": DISSECT,
    "plots/alignment.png": EVALUATE,
    "plots/deletion_insertion_curves.png": EVALUATE,
    "plots/faithfulness_scores.png": EVALUATE,
    "plots/label_mixing.png": EVALUATE,
    "plots/dissection_detectors.png": DISSECT,
}


#: the pipeline stage (stages/timings.json "skipped") that writes a path prefix
STAGE_OF = {"cells/": "train", "explanations/": "explain", "tables/dissection": "dissect",
            "plots/dissection": "dissect", "tables/interpretability": "evaluate",
            "tables/summary_b": "evaluate", "tables/alignment_counts": "evaluate",
            "tables/curves": "evaluate", "plots/alignment": "evaluate",
            "plots/deletion_insertion": "evaluate", "plots/faithfulness": "evaluate",
            "plots/label_mixing": "evaluate", "tables/performance": "train",
            "tables/matching": "train", "tables/label_mixing": "evaluate",
            "tables/accuracy_points_b": "evaluate", "tables/accuracy_correlation_b": "evaluate",
            "plots/accuracy_b": "evaluate",
            "tables/": "compare", "plots/": "compare"}


def _longest(prefixes: dict[str, str], rel: str) -> str:
    return max((p for p in prefixes if rel.startswith(p)), key=len, default="")


def producer(rel: str) -> str:
    """The command that writes ``rel`` (a path relative to the run directory)."""
    best = _longest(PRODUCERS, rel)
    if best == "tables/" or best == "plots/":
        parts = rel.split("/")
        if len(parts) == 3:  # tables/<method>/x.parquet: another method's Study A
            return f"`auglens compare RUN_DIR --method {parts[1]}`"
    return PRODUCERS.get(best, "`auglens run`")


class Run:
    """Lazy, fault-tolerant access to one run directory's files."""

    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir)
        if not self.dir.is_dir():
            raise AuglensError(f"run directory not found: {self.dir}")
        self._tables: dict[str, pd.DataFrame | None] = {}
        self._errors: dict[str, str] = {}

    def path(self, rel: str) -> Path:
        """Absolute path of ``rel``."""
        return self.dir / rel

    def reason(self, rel: str) -> str:
        """Why ``rel`` is unavailable: missing (and which command writes it) or unreadable."""
        if rel in self._errors:
            return f"{rel} could not be read ({self._errors[rel]})"
        stage = STAGE_OF.get(_longest(STAGE_OF, rel), "")
        why = self.skipped.get(stage)
        if why:
            return f"{rel} is missing: the {stage} stage was skipped ({why})"
        return f"{rel} is missing — written by {producer(rel)}"

    @cached_property
    def timings(self) -> dict[str, Any]:
        """stages/timings.json (stage → seconds, plus ``skipped``: stage → reason), or {}."""
        t = self.json("stages/timings.json")
        return t if isinstance(t, dict) else {}

    @property
    def skipped(self) -> dict[str, str]:
        """Stages the pipeline skipped → why."""
        s = self.timings.get("skipped")
        return {str(k): str(v) for k, v in s.items()} if isinstance(s, dict) else {}

    def table(self, rel: str) -> pd.DataFrame | None:
        """The Parquet table ``rel``, or None (see `reason`)."""
        if rel not in self._tables:
            p = self.path(rel)
            df = None
            if p.is_file():
                try:
                    df = pd.read_parquet(p)
                except Exception as e:  # noqa: BLE001 - any unreadable file is reported
                    self._errors[rel] = f"{type(e).__name__}: {e}"
            self._tables[rel] = df
        return self._tables[rel]

    def json(self, rel: str) -> Any:
        """Parsed JSON file ``rel``, or None (see `reason`)."""
        p = self.path(rel)
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError) as e:
            self._errors[rel] = f"{type(e).__name__}: {e}"
            return None

    @cached_property
    def experiment(self) -> dict[str, Any] | None:
        """experiment.json as a dict."""
        exp = self.json("experiment.json")
        return exp if isinstance(exp, dict) else None

    @cached_property
    def config(self) -> Any:
        """The validated `ExperimentConfig`, or None."""
        from ..config import ExperimentConfig

        if self.experiment is None:
            return None
        try:
            return ExperimentConfig.model_validate(self.experiment)
        except Exception as e:  # noqa: BLE001
            self._errors["experiment.json"] = f"invalid config: {e}"
            return None

    def train_setting(self, key: str, default: Any = None) -> Any:
        """A ``train`` setting of the experiment (e.g. ``monitor``), or ``default``."""
        return ((self.experiment or {}).get("train") or {}).get(key, default)

    @property
    def baseline(self) -> str:
        """The baseline variant's name."""
        return str((self.experiment or {}).get("baseline", "baseline"))

    @property
    def variants(self) -> list[str]:
        """Variants in experiment order (from experiment.json, else from the cells)."""
        if self.experiment and self.experiment.get("variants"):
            return list(self.experiment["variants"])
        return sorted({v for v, _ in self.records})

    @property
    def seeds(self) -> list[int]:
        """Seeds in experiment order."""
        if self.experiment and self.experiment.get("seeds"):
            return [int(s) for s in self.experiment["seeds"]]
        return sorted({s for _, s in self.records})

    @cached_property
    def records(self) -> dict[tuple[str, int], dict[str, Any]]:
        """``cells/<variant>/seed<k>/record.json`` of every finished cell."""
        out = {}
        for p in sorted(self.dir.glob("cells/*/seed*/record.json")):
            try:
                rec = json.loads(p.read_text())
                seed = int(p.parent.name.removeprefix("seed"))
            except (OSError, ValueError):
                continue
            out[(p.parent.parent.name, seed)] = rec
        return out

    @cached_property
    def stages(self) -> dict[str, dict[str, Any]]:
        """``stages/*.json`` manifests by name."""
        out = {}
        for p in sorted(self.dir.glob("stages/*.json")):
            if p.name == "timings.json":
                continue
            try:
                out[p.stem] = json.loads(p.read_text()) | {"_mtime": p.stat().st_mtime}
            except (OSError, ValueError):
                continue
        return out

    @cached_property
    def explained_methods(self) -> list[str]:
        """Methods with an explanations/<method>/ folder, gradcam first."""
        root = self.dir / "explanations"
        names = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        return sorted(names, key=lambda m: (m != "gradcam", m))

    def study_a_methods(self) -> list[str]:
        """Methods with Study A tables: gradcam (``tables/``) and ``tables/<method>/``."""
        out = ["gradcam"] if self.path("tables/summary_a.parquet").is_file() else []
        root = self.dir / "tables"
        if root.is_dir():
            out += sorted(p.name for p in root.iterdir()
                          if p.is_dir() and (p / "summary_a.parquet").is_file())
        return out


def method_dir(kind: str, method: str) -> str:
    """``tables``/``plots`` folder (relative) of a method's Study A outputs."""
    return kind if method == "gradcam" else f"{kind}/{method}"
