"""The picklable unit of work of each per-cell stage, run by an executor in a worker process.

A task is a frozen record naming everything it needs (the cell's config as a dict, the run
directory, the cell, the method, the settings); `execute` runs it. Every task writes its own file
into the run directory atomically and returns ``(label, cached)`` — or, for training, the record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import CellConfig


def _put(events: Any, *event: Any) -> None:
    """Send a progress event; best effort (a display problem never fails a task)."""
    if events is not None:
        try:
            events.put(event)
        except Exception:  # noqa: BLE001
            pass


def cell_name(variant: str, seed: int, epoch: int | None = None) -> str:
    return f"{variant}/seed{seed}" + ("" if epoch is None else f"@epoch{epoch}")


@dataclass(frozen=True)
class CellTask:
    """Fields every per-cell task has: the cell config (as JSON-able dict), the run directory,
    variant, seed and (for baseline checkpoints) the epoch."""

    cell: dict[str, Any] = field(repr=False)
    root: str
    variant: str
    seed: int
    epoch: int | None = None

    @property
    def config(self) -> CellConfig:
        return CellConfig.model_validate(self.cell)

    @property
    def label(self) -> str:
        return cell_name(self.variant, self.seed, self.epoch)


@dataclass(frozen=True)
class TrainTask(CellTask):
    """Train one cell (``keep_checkpoints``: one checkpoint per epoch, for the baseline)."""

    keep_checkpoints: bool = False

    def run(self, events: Any = None) -> dict[str, Any]:
        from ..rundir import RunDir
        from ..train import train_cell

        cfg = self.config
        total = cfg.train.epoch_cap

        def progress(entry: dict[str, Any]) -> None:
            _put(events, "epoch", self.label, entry["epoch"], total,
                 f"val acc {entry['val_accuracy']:.3f}")

        _put(events, "epoch", self.label, 0, total, "")
        try:
            out = RunDir(self.root).cell(self.variant, self.seed)
            return train_cell(cfg, out, progress=progress,
                              keep_checkpoints=self.keep_checkpoints).record
        finally:
            _put(events, "end", self.label)


@dataclass(frozen=True)
class ExplainTask(CellTask):
    """Explain the cell's test images with ``method``."""

    method: str = "gradcam"
    n_images: int | None = None
    params: dict[str, Any] | None = None
    estimator_images: int = 1000
    batch_size: int = 500
    force: bool = False

    @property
    def label(self) -> str:
        return f"{super().label} {self.method}"

    def run(self, events: Any = None) -> tuple[str, bool]:
        from ..explain.store import explain_cell

        def on_batch(done: int, total: int) -> None:
            _put(events, "images", self.label, done, total, "")

        try:
            _, cached = explain_cell(self.config, self.root, self.variant, self.seed,
                                     self.method, self.n_images, batch_size=self.batch_size,
                                     force=self.force, params=self.params,
                                     estimator_images=self.estimator_images,
                                     on_batch=on_batch, epoch=self.epoch)
        finally:
            _put(events, "end", self.label)
        return self.label, cached


@dataclass(frozen=True)
class EvaluateTask(CellTask):
    """Study B alignment and faithfulness of the cell's stored ``method`` maps."""

    method: str = "gradcam"
    evaluate: dict[str, Any] = field(default_factory=dict, repr=False)
    force: bool = False

    @property
    def label(self) -> str:
        return f"{super().label} {self.method}"

    def run(self, events: Any = None) -> tuple[str, bool]:
        from ..config import EvaluateConfig
        from ..metrics.store import evaluate_cell

        _, cached = evaluate_cell(self.config, self.root, self.variant, self.seed, self.method,
                                  EvaluateConfig.model_validate(self.evaluate), force=self.force,
                                  epoch=self.epoch)
        return self.label, cached


@dataclass(frozen=True)
class DissectTask(CellTask):
    """Network Dissection of the cell's target layer."""

    dissect: dict[str, Any] = field(default_factory=dict, repr=False)
    force: bool = False

    def run(self, events: Any = None) -> tuple[str, bool]:
        from ..config import DissectConfig
        from ..metrics.store import dissect_cell

        _, cached = dissect_cell(self.config, self.root, self.variant, self.seed,
                                 DissectConfig.model_validate(self.dissect), force=self.force)
        return self.label, cached


@dataclass(frozen=True)
class SanityTask(CellTask):
    """Cascading randomisation and random-logit test of the cell's ``method`` (SPEC §11)."""

    method: str = "gradcam"
    sanity: dict[str, Any] = field(default_factory=dict, repr=False)
    params: dict[str, Any] | None = None
    estimator_images: int = 1000
    force: bool = False

    @property
    def label(self) -> str:
        return f"{super().label} {self.method}"

    def run(self, events: Any = None) -> tuple[str, bool]:
        from ..analysis.controls import sanity_cell
        from ..config import SanityConfig
        from ..rundir import RunDir

        _, cached = sanity_cell(self.config, RunDir(self.root), self.variant, self.seed,
                                self.method, SanityConfig.model_validate(self.sanity),
                                self.params, self.estimator_images, force=self.force)
        return self.label, cached


def execute(task: CellTask, events: Any = None) -> Any:
    """Run ``task`` (the function executors call in a worker). Python warnings raised by the
    task (e.g. a corrupt image skipped by the loader) travel to the run's log as events."""
    import warnings

    if events is None:
        return task.run(events)
    previous = warnings.showwarning

    def forward(message: Any, category: Any, filename: str, lineno: int, *_: Any) -> None:
        _put(events, "warning", task.label, 0, 0, f"{category.__name__}: {message}")

    warnings.showwarning = forward
    try:
        return task.run(events)
    finally:
        warnings.showwarning = previous
