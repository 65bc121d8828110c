"""Reproducible training of one grid cell (SPEC §8).

For a given seed every augmentation gets identical initial weights and an identical batch order:
the model is initialised right after ``torch.manual_seed(derive_seed(seed, "init"))``, batch order
comes from a generator seeded by ``(seed, "order")``, and augmentation randomness from its own
generator seeded by ``(seed, "augment")``, so adding or changing an augmentation never shifts the
batch order. On CPU the same cell trained twice gives bit-identical weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..augment import build_augmentation, jsd_consistency_loss
from ..config import CellConfig, TrainConfig
from ..data import Dataset, ImageSet, load_dataset
from ..keys import cell_inputs, pinned_threads, task_threads
from ..models import build_model, init_from_data, save_weights, weights_fingerprint
from ..models.precision import autocast, memory_format, resolve_precision
from ..rundir import CellFiles, content_key
from ..utils import atomic_path, derive_seed, make_generator, resolve_device, software_versions
from ..utils import write_json as _write_json
from .feeding import BatchFeeder
from .metrics import classification_report
from .stopping import StoppingRule


@contextlib.contextmanager
def deterministic(threads: int) -> Iterator[None]:
    """Deterministic algorithms and a pinned thread count for the block; restored after."""
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with pinned_threads(threads):
            yield
    finally:
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)


def batch_order(n: int, batch_size: int, seed: int, epoch: int) -> list[Tensor]:
    """Index batches of one epoch (last partial batch dropped) — depends only on (seed, epoch)."""
    perm = torch.randperm(n, generator=make_generator(seed, "order", epoch))
    n_full = n // batch_size
    return list(perm[: n_full * batch_size].view(n_full, batch_size))


def soft_cross_entropy(logits: Tensor, targets: Tensor, smoothing: float = 0.0) -> Tensor:
    """Mean over the batch of −Σ_k t_k log softmax(z)_k; equals CE for one-hot t and
    λ·CE(y_a) + (1−λ)·CE(y_b) for CutMix targets."""
    if smoothing:
        targets = targets * (1 - smoothing) + smoothing / targets.shape[1]
    return -(targets * F.log_softmax(logits.float(), dim=1)).sum(1).mean()


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def lr_factor(cfg: TrainConfig, step: int, total: int, steps_per_epoch: int) -> float:
    """Multiplier of ``cfg.lr`` at optimiser step ``step`` (0-based) of ``total`` (the epoch cap's
    steps). ``plateau``: linear warm-up over ``warmup_epochs``, then 1 (the stopping rule's decay
    factor is applied by the caller); ``exponential``: the same warm-up, then ``decay_rate`` per
    epoch."""
    t = step / max(total, 1)
    schedule = cfg.resolved_schedule
    if schedule == "constant":
        return 1.0
    if schedule in ("plateau", "exponential"):
        warm = cfg.warmup_epochs * steps_per_epoch
        f = min(1.0, (step + 1) / warm) if warm > 0 else 1.0
        if schedule == "exponential":
            f *= cfg.decay_rate ** max(0.0, step / steps_per_epoch - cfg.warmup_epochs)
        return f
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "onecycle":  # linear warm-up over 15 %, then cosine down to 0
        w = 0.15
        return t / w if t < w else 0.5 * (1 + math.cos(math.pi * (t - w) / (1 - w)))
    epoch = step / steps_per_epoch
    return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)


@torch.no_grad()
def predict(
    model: nn.Module, images: Tensor, data: Dataset, batch_size: int, device: torch.device,
    precision: str = "fp32",
) -> Tensor:
    """Logits float32 (N, K) of uint8 images (N, 3, H, W), in eval mode."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for i in range(0, len(images), batch_size):
            x = data.normalize(images[i : i + batch_size].to(device).float() / 255)
            with autocast(device, precision):
                out.append(model(x.contiguous(memory_format=memory_format(model))).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def evaluate(
    model: nn.Module, split: ImageSet, data: Dataset, cfg: TrainConfig, device: torch.device,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Cross-entropy loss and classification report of ``model`` on ``split``."""
    logits = predict(model, split.images, data, cfg.eval_batch_size, device, precision)
    loss = F.cross_entropy(logits, split.labels).item()
    report = classification_report(logits.argmax(1), split.labels, data.num_classes)
    return {"loss": loss, **report}


@dataclass
class TrainResult:
    model: nn.Module
    record: dict[str, Any]
    weights_path: Path | None


def train_cell(
    cfg: CellConfig,
    out_dir: str | Path | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    keep_checkpoints: bool = False,
) -> TrainResult:
    """Train one (augmentation, seed) cell; write weights + record (+ augmentation log) to
    ``out_dir`` atomically (record.json last: its presence marks a finished cell).

    Trains until ``cfg.train``'s stopping rule (`StoppingRule`) ends it; the model returned and
    saved holds the weights of the best validation epoch (``record["best_epoch"]``), and
    ``record["converged"]`` / ``record["stop_reason"]`` say how training ended.
    ``keep_checkpoints``: also save the weights after every epoch (`CellFiles.checkpoint`), e.g. for
    the baseline's accuracy-matched comparisons.
    """
    tc = cfg.train
    device = resolve_device(tc.device)
    precision = resolve_precision(tc.precision, device)
    data = load_dataset(cfg)
    files = CellFiles(Path(out_dir)) if out_dir is not None else None
    t0 = time.perf_counter()
    inputs = cell_inputs(cfg)  # before training: what the record's key says it was made from
    with deterministic(task_threads(cfg)), contextlib.ExitStack() as cleanup:
        torch.manual_seed(derive_seed(cfg.seed, "init"))
        model = build_model(
            cfg.model.name,
            data.num_classes,
            cfg.model.input_size,
            cfg.model.checkpoint,
            **cfg.model.params(),
        )
        if cfg.model.checkpoint is None:  # data-dependent init (airbench's whitening), no RNG
            init_from_data(model, data.train.images, data.normalize)
        torch.manual_seed(derive_seed(cfg.seed, "dropout"))
        init_sha = weights_fingerprint(model)
        layout = memory_format(model)
        model = model.to(device).to(memory_format=layout)
        order_hash = hashlib.sha256()
        augment = build_augmentation(cfg.augment)
        augment.set_dataset_stats(data.mean, data.std)
        aug_gen = make_generator(cfg.seed, "augment")
        opt = make_optimizer(model, tc)
        base_lrs = [g["lr"] for g in opt.param_groups]
        train_images = data.train.images  # a LazyImages stays on disk, decoded per batch
        if isinstance(train_images, Tensor) and not tc.loader_workers:
            train_images = train_images.to(device)
        feeder = BatchFeeder(train_images, device, num_workers=tc.loader_workers,
                             prefetch_factor=tc.prefetch_factor, gpu_decode=tc.gpu_decode)
        cleanup.callback(feeder.close)  # worker processes end with the cell, also on errors
        forward = torch.compile(model) if tc.compile else model
        train_labels = data.train.labels.to(device)
        steps_per_epoch = len(data.train) // tc.batch_size
        total = steps_per_epoch * tc.epoch_cap
        rule = StoppingRule(tc.stop, tc.monitor, tc.patience, tc.min_delta, tc.epoch_cap,
                            decays=tc.lr_decays if tc.resolved_schedule == "plateau" else 0,
                            gamma=tc.gamma)
        history: list[dict[str, Any]] = []
        logs: list[dict[str, np.ndarray]] = []
        best_state: dict[str, Tensor] | None = None
        checkpoints: dict[int, str] = {}  # epoch -> weights sha256
        step, f = 0, 1.0
        for epoch in range(tc.epoch_cap):
            model.train()
            loss_sum, correct, seen = 0.0, 0.0, 0
            batches = batch_order(len(data.train), tc.batch_size, cfg.seed, epoch)
            for idx, xb in zip(batches, feeder.epoch(batches), strict=True):
                order_hash.update(idx.numpy().tobytes())
                idx_d = idx.to(device)
                x = xb.float().div_(255)
                y = F.one_hot(train_labels[idx_d], data.num_classes).float()
                extra: list[Tensor] = []
                if augment.consistency_views:  # AugMix + JSD: clean and augmented views
                    x, y, extra, log = augment.views(x, y, aug_gen)
                else:
                    x, y, log = augment(x, y, aug_gen)
                if log:
                    logs.append(_log_rows(log, idx, epoch, step))
                x = data.normalize(torch.cat([x, *extra]) if extra else x)
                x = x.contiguous(memory_format=layout)
                f = lr_factor(tc, step, total, steps_per_epoch) * rule.lr_factor
                for g, lr in zip(opt.param_groups, base_lrs, strict=True):
                    g["lr"] = lr * f
                with autocast(device, precision):
                    logits = forward(x)  # one forward over every view: BN sees all (authors)
                if extra:
                    logits, *views = logits.split(len(idx))
                loss = soft_cross_entropy(logits, y, tc.label_smoothing)
                if extra:
                    loss = loss + jsd_consistency_loss(logits, *views)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training loss is {loss.item()} at epoch {epoch}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                loss_sum += loss.item() * len(idx)
                correct += (logits.argmax(1) == y.argmax(1)).sum().item()
                seen += len(idx)
            val = evaluate(model, data.val, data, tc, device, precision)
            entry = {
                "epoch": epoch + 1,
                "lr": base_lrs[0] * f,
                "train_loss": loss_sum / max(seen, 1),
                "train_accuracy": correct / max(seen, 1),
                "val_loss": val["loss"],
                "val_accuracy": val["accuracy"],
                "seconds": time.perf_counter() - t0,
            }
            history.append(entry)
            if keep_checkpoints and files is not None:
                checkpoints[epoch + 1] = save_weights(model, files.checkpoint(epoch + 1))
            prev_best = rule.best_epoch
            stop = rule.update(entry[tc.monitor])
            if rule.best_epoch != prev_best:
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if progress:
                progress(entry | {"max_epochs": tc.epoch_cap})
            if stop:
                break
        if best_state is not None:
            model.load_state_dict(best_state)
        test = evaluate(model, data.test, data, tc, device, precision)
    model.eval()
    record = {
        "config": cfg.model_dump(mode="json"),
        "config_hash": cfg.content_hash(),
        "key": content_key(inputs),
        "key_inputs": inputs,
        "dataset": {"name": data.name, "info": data.info, "class_names": data.class_names},
        "device": str(device),
        "precision": precision,
        "feeding": feeder.describe(),
        "software": software_versions(),
        "history": history,
        "init_sha256": init_sha,
        "batch_order_sha256": order_hash.hexdigest(),
        **rule.summary(),
        "best_val_accuracy": history[rule.best_epoch - 1]["val_accuracy"],
        "checkpoint_sha256": {str(e): sha for e, sha in checkpoints.items()},
        "test": {k: v for k, v in test.items()},
        "train_seconds": time.perf_counter() - t0,
    }
    weights_path = None
    if files is not None:
        files.path.mkdir(parents=True, exist_ok=True)
        weights_path = files.weights
        record["weights_sha256"] = save_weights(model, weights_path)
        if logs:
            _write_logs(files.augment_log, logs)
        _write_json(files.record, record)
    return TrainResult(model, record, weights_path)


def _log_rows(log: dict[str, Tensor], idx: Tensor, epoch: int, step: int) -> dict[str, np.ndarray]:
    rows: dict[str, np.ndarray] = {
        "epoch": np.full(len(idx), epoch, dtype=np.int32),
        "step": np.full(len(idx), step, dtype=np.int64),
        "image_index": idx.numpy().astype(np.int64),
    }
    for k, v in log.items():
        v = v.detach().cpu()
        if v.ndim == 1:
            rows[k] = v.numpy()
        else:
            for j in range(v.shape[1]):
                rows[f"{k}_{j}"] = v[:, j].numpy()
    return rows


def _write_logs(path: Path, logs: list[dict[str, np.ndarray]]) -> None:
    import pandas as pd

    frame = pd.DataFrame({k: np.concatenate([r[k] for r in logs]) for k in logs[0]})
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
