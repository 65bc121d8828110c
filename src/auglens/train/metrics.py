"""Classification performance: accuracy, macro precision/recall/F1, per-class accuracy."""

from __future__ import annotations

import torch
from torch import Tensor


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """int64 (K, K) with rows = true class, columns = predicted class."""
    idx = target.long() * num_classes + pred.long()
    return torch.bincount(idx, minlength=num_classes**2).view(num_classes, num_classes).cpu()


def classification_report(pred: Tensor, target: Tensor, num_classes: int) -> dict:
    """Accuracy and macro-averaged precision/recall/F1 (a class with no predictions has
    precision 0, as scikit-learn's ``zero_division=0``), per-class accuracy (= recall)."""
    cm = confusion_matrix(pred, target, num_classes).double()
    tp = cm.diag()
    support = cm.sum(1)
    predicted = cm.sum(0)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(
        denom > 0, 2 * precision * recall / denom.clamp(min=1e-300), torch.zeros_like(tp)
    )
    return {
        "accuracy": float(tp.sum() / cm.sum()),
        "precision": float(precision.mean()),
        "recall": float(recall.mean()),
        "f1": float(f1.mean()),
        "per_class_accuracy": [float(v) for v in recall],
        "confusion_matrix": cm.long().tolist(),
    }
