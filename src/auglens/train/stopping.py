"""When to stop training, and whether a cell converged (SPEC §10).

*Converged*: the monitored validation quantity has not improved by more than ``min_delta`` over
the last ``patience`` epochs. A cell that reaches its epoch cap first is *not converged*. With the
``plateau`` learning-rate schedule a plateau first divides the learning rate by ``1/gamma``
(``decays`` times), and only a plateau at the lowest learning rate stops training, so that every
cell ends at a plateau of an annealed model; each variant trains as long as it needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

Monitor = Literal["val_accuracy", "val_loss"]


def improvement(monitor: Monitor, new: float, best: float) -> float:
    """How much ``new`` improves on ``best`` (> 0 = better): higher accuracy, lower loss."""
    if math.isnan(best):
        return math.inf
    return new - best if monitor == "val_accuracy" else best - new


def converged_at_end(values: list[float], monitor: Monitor, patience: int,
                     min_delta: float) -> bool:
    """True if the last ``patience`` values did not improve on the best value before them by
    more than ``min_delta`` (needs more than ``patience`` values)."""
    if len(values) <= patience:
        return False
    head, tail = values[:-patience], values[-patience:]
    best = max(head) if monitor == "val_accuracy" else min(head)
    return all(improvement(monitor, v, best) <= min_delta for v in tail)


@dataclass
class StoppingRule:
    """Per-epoch bookkeeping of the stopping rule.

    ``mode`` ``fixed``: train ``max_epochs`` epochs; ``converged`` is then judged on the curve.
    ``mode`` ``converged``: stop at the first plateau once ``decays`` learning-rate decays are
    used up (``decays`` 0: at the first plateau). ``lr_factor`` is the plateau decay factor
    (``gamma ** decays_done``); the caller multiplies it into its schedule.
    """

    mode: Literal["fixed", "converged"]
    monitor: Monitor
    patience: int
    min_delta: float
    max_epochs: int
    decays: int = 0
    gamma: float = 0.1
    values: list[float] = field(default_factory=list)
    best: float = math.nan
    best_epoch: int = 0
    wait: int = 0
    decays_done: int = 0
    stopped: bool = False
    decay_epochs: list[int] = field(default_factory=list)

    @property
    def lr_factor(self) -> float:
        return self.gamma ** self.decays_done

    def update(self, value: float) -> bool:
        """Record the epoch's monitored value; returns True when training should stop."""
        self.values.append(value)
        epoch = len(self.values)
        if improvement(self.monitor, value, self.best) > 0:
            if improvement(self.monitor, value, self.best) > self.min_delta:
                self.wait = 0
            else:
                self.wait += 1
            self.best, self.best_epoch = value, epoch
        else:
            self.wait += 1
        if self.mode == "converged" and self.wait >= self.patience:
            if self.decays_done < self.decays:
                self.decays_done += 1
                self.decay_epochs.append(epoch)
                self.wait = 0
            else:
                self.stopped = True
        return self.stopped or epoch >= self.max_epochs

    def summary(self) -> dict[str, Any]:
        """``converged``, ``stop_reason``, ``best_epoch`` (1-based) and the settings, for
        record.json."""
        n = len(self.values)
        if self.mode == "converged":
            converged = self.stopped
        else:
            converged = converged_at_end(self.values, self.monitor, self.patience,
                                         self.min_delta)
        if self.stopped:
            reason = (f"{self.monitor} did not improve by more than {self.min_delta} for "
                      f"{self.patience} epochs at the lowest learning rate (epoch {n})")
        elif converged:
            reason = (f"fixed {n} epochs; {self.monitor} did not improve by more than "
                      f"{self.min_delta} over the last {self.patience}")
        else:
            reason = (f"reached the cap of {n} epochs while {self.monitor} was still improving "
                      f"(by more than {self.min_delta} within the last {self.patience} epochs)")
        return {"converged": bool(converged), "stop_reason": reason,
                "best_epoch": self.best_epoch, "epochs_trained": n,
                "lr_decay_epochs": list(self.decay_epochs),
                "stopping": {"mode": self.mode, "monitor": self.monitor,
                             "patience": self.patience, "min_delta": self.min_delta,
                             "max_epochs": self.max_epochs, "decays": self.decays,
                             "gamma": self.gamma}}
