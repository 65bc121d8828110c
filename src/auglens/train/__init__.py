"""Reproducible training of one (augmentation, seed) cell, stopping rules, convergence."""

from .metrics import classification_report, confusion_matrix
from .trainer import TrainResult, batch_order, train_cell

__all__ = [
    "TrainResult",
    "batch_order",
    "classification_report",
    "confusion_matrix",
    "train_cell",
]
