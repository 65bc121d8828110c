"""Read what a run directory holds (tolerating anything missing) and say why a file is absent."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import AuglensError
from ..rundir import ROOT_METHOD, RunDir, stage_of

#: what writes the outputs of each stage (for "missing — written by …" messages)
COMMANDS = {
    "run": "`auglens run`",
    "train": "the train stage of `auglens run`",
    "explain": "`auglens explain RUN_DIR` or `auglens run`",
    "compare": "`auglens compare RUN_DIR` or `auglens run`",
    "evaluate": "`auglens evaluate RUN_DIR` or `auglens run`",
    "dissect": "`auglens dissect RUN_DIR` or `auglens run`",
    "sanity": "`auglens sanity RUN_DIR` or `auglens run`",
    "report": "`auglens report RUN_DIR` or `auglens run`",
}


def producer(rel: str) -> str:
    """The command that writes ``rel`` (a path relative to the run directory)."""
    stage = stage_of(rel)
    parts = rel.split("/")
    if stage == "compare" and len(parts) == 3:  # tables/<method>/x: another method's Study A
        return f"`auglens compare RUN_DIR --method {parts[1]}`"
    return COMMANDS[stage]


class Run:
    """Lazy, fault-tolerant access to one run directory's files."""

    def __init__(self, run_dir: str | Path) -> None:
        self.rundir = RunDir(run_dir)
        self.dir = self.rundir.root
        if not self.dir.is_dir():
            raise AuglensError(f"run directory not found: {self.dir}")
        self._tables: dict[str, pd.DataFrame | None] = {}
        self._errors: dict[str, str] = {}

    def path(self, rel: str) -> Path:
        """Absolute path of ``rel``."""
        return self.dir / rel

    def rel(self, path: Path) -> str:
        """``path`` relative to the run directory."""
        return self.rundir.relative(path)

    def t(self, name: str, method: str | None = None, ext: str = "parquet") -> str:
        """Relative path of table ``name`` (of ``method``'s Study A when given)."""
        return self.rel(self.rundir.tables(method) / f"{name}.{ext}")

    def p(self, name: str, method: str | None = None) -> str:
        """Relative path of plot ``name`` (of ``method``'s Study A when given)."""
        return self.rel(self.rundir.plot(name, method))

    def reason(self, rel: str) -> str:
        """Why ``rel`` is unavailable: missing (and which command writes it) or unreadable."""
        if rel in self._errors:
            return f"{rel} could not be read ({self._errors[rel]})"
        stage = stage_of(rel)
        why = self.skipped.get(stage)
        if why:
            return f"{rel} is missing: the {stage} stage was skipped ({why})"
        return f"{rel} is missing — written by {producer(rel)}"

    @cached_property
    def timings(self) -> dict[str, Any]:
        """stages/timings.json (stage → seconds, plus ``skipped``: stage → reason), or {}."""
        t = self.json(self.rel(self.rundir.timings))
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

    def required(self, sec: Any, name: str, reading: str) -> pd.DataFrame | None:
        """Table ``name`` for section ``sec``; when missing or empty, the section says why
        (`reason`) and gets ``reading``, and None is returned."""
        rel = self.t(name)
        table = self.table(rel)
        if table is None or table.empty:
            sec.miss(self.reason(rel))
            sec.reading = reading
            return None
        return table

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
        exp = self.json(self.rel(self.rundir.experiment))
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
            self._errors[self.rel(self.rundir.experiment)] = f"invalid config: {e}"
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
        for variant, seed in self.rundir.trained_cells():
            rec = self.rundir.record(variant, seed)
            if rec is not None:
                out[(variant, seed)] = dict(rec.raw)
        return out

    @cached_property
    def stages(self) -> dict[str, dict[str, Any]]:
        """``stages/*.json`` manifests by name."""
        out = {}
        for p in self.rundir.manifests():
            try:
                out[p.stem] = json.loads(p.read_text()) | {"_mtime": p.stat().st_mtime}
            except (OSError, ValueError):
                continue
        return out

    @cached_property
    def explained_methods(self) -> list[str]:
        """Methods with an explanations/<method>/ folder, gradcam first."""
        return sorted(self.rundir.explained_methods(), key=lambda m: (m != ROOT_METHOD, m))

    def study_a_methods(self) -> list[str]:
        """Methods with Study A tables: gradcam (``tables/``) and ``tables/<method>/``."""
        return self.rundir.study_a_methods()
