"""Reproducible training of the augmentation × seed grid."""

from .metrics import classification_report, confusion_matrix
from .trainer import RECORD, WEIGHTS, TrainResult, batch_order, load_dataset, train_cell

__all__ = [
    "RECORD",
    "WEIGHTS",
    "TrainResult",
    "batch_order",
    "classification_report",
    "confusion_matrix",
    "load_dataset",
    "train_cell",
]
