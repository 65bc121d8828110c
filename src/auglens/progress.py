"""Progress of a run: the plain `Reporter` (lines, or nothing), the rich progress bars
(elapsed / remaining time) and the run log file."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class Reporter:
    """Progress callbacks; the default prints plain lines (``quiet`` prints nothing)."""

    def __init__(self, quiet: bool = False, log: Callable[[str], None] | None = None) -> None:
        self.quiet = quiet
        self._log = log

    def message(self, text: str) -> None:
        if self._log:
            self._log(text)
        if not self.quiet:
            print(text, flush=True)

    def stage(self, name: str, total: int, cached: int) -> None:
        self.message(f"[{name}] {total} tasks, {cached} cached")

    def advance(self, name: str, text: str) -> None:
        self.message(f"[{name}] {text}")

    def done(self, name: str) -> None:
        """Called when a stage finishes."""

    def task_progress(self, kind: str, name: str, done: int = 0, total: int = 0,
                      note: str = "") -> None:
        """Progress inside one running task (``kind`` "epoch" or "images"; "end" = finished;
        "warning" = a warning the task raised, shown and logged)."""
        if kind == "warning":
            self.message(f"warning ({name}): {note}")
        elif kind == "epoch" and done and self._log:
            self._log(f"[train] {name} epoch {done}/{total} {note}".rstrip())

    @contextmanager
    def warnings_logged(self) -> Iterator[None]:
        """Python warnings raised in this process during the block are shown and logged."""
        import warnings

        previous = warnings.showwarning

        def show(message: Any, category: Any, filename: str, lineno: int, *_: Any) -> None:
            self.message(f"warning: {category.__name__}: {message}")

        warnings.showwarning = show
        try:
            yield
        finally:
            warnings.showwarning = previous

    @contextmanager
    def listen(self, events: Any) -> Iterator[None]:
        """While the block runs, forward events that tasks put on ``events`` (see
        `Executor.events`) to `task_progress`, from a background thread."""
        if events is None:
            yield
            return
        stop = threading.Event()

        def pump() -> None:
            import queue as queue_mod

            while True:
                try:
                    event = events.get(timeout=0.2)
                except queue_mod.Empty:
                    if stop.is_set():
                        return
                    continue
                except (EOFError, OSError):  # the manager went away
                    return
                try:
                    self.task_progress(*event)
                except Exception:  # a display problem never stops the run
                    pass

        thread = threading.Thread(target=pump, daemon=True, name="auglens-progress")
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)


class LogFile:
    """Appends time-stamped lines to ``RUN/run.log`` (opened per line: safe across crashes)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, text: str) -> None:
        with open(self.path, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")


class RichReporter(Reporter):
    """One progress bar per stage; messages printed above the bars and written to the log."""

    def __init__(self, log: LogFile, console: Console | None = None) -> None:
        super().__init__(quiet=False, log=log)
        self.console = console or Console(stderr=False)
        self.progress = Progress(
            TextColumn("[bold]{task.description:<8}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            TextColumn("{task.fields[note]}"), console=self.console, transient=False,
        )
        self.tasks: dict[str, Any] = {}
        self.running: dict[str, Any] = {}

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def message(self, text: str) -> None:
        self._log(text)
        self.progress.console.print(text)

    def stage(self, name: str, total: int, cached: int) -> None:
        self._log(f"[{name}] {total} tasks, {cached} cached")
        self.tasks[name] = self.progress.add_task(name, total=total, completed=cached, note="")

    def advance(self, name: str, text: str) -> None:
        self._log(f"[{name}] {text}")
        if name in self.tasks:
            self.progress.update(self.tasks[name], advance=1, note=text[:60])
        else:
            self.progress.console.print(f"[{name}] {text}")

    def task_progress(self, kind: str, name: str, done: int = 0, total: int = 0,
                      note: str = "") -> None:
        """One indented bar per running task (epochs of a cell, images of an explanation),
        removed when the task ends."""
        super().task_progress(kind, name, done, total, note)
        if kind == "warning":
            return
        if kind == "end":
            task = self.running.pop(name, None)
            if task is not None:
                self.progress.remove_task(task)
            return
        label = f"  {name} ({'epochs' if kind == 'epoch' else 'images'})"
        if name not in self.running:
            self.running[name] = self.progress.add_task(label, total=total or None, note="")
        self.progress.update(self.running[name], completed=done, total=total or None, note=note)

    def done(self, name: str) -> None:
        if name in self.tasks:
            t = self.tasks[name]
            total = next(task.total for task in self.progress.tasks if task.id == t)
            self.progress.update(t, completed=total, note="done")
