"""Explainer base: the `Explanation` record, input checks, the model-state guard, batch streaming.

Conventions (SPEC §2):
- maps are raw, float32, (B, h, w) at the target layer's feature resolution; never normalised.
  `upsample` brings them to input resolution (bilinear, ``align_corners=False``) when a metric
  needs it.
- the target class defaults to the model's own prediction (argmax of the logits of the same
  forward pass, first index on ties); explicit class ids and ground-truth maps are options.
- a transformer layer's token output (B, 1 + h·w, D) is read as a feature grid (B, D, h, w)
  through the `TokenGrid` the model declares in ``cam_reshape`` (`feature_grid`): the class token
  is dropped, patch tokens are placed row-major. Every layer-based method goes through it.
- explaining never changes the model: it runs in eval mode, and the `training` flags,
  ``requires_grad`` flags, ``.grad`` tensors and hooks are restored exactly, also on errors.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from ..errors import AuglensError
from ..models.registry import default_target_layer, get_module
from ..models.tap import (  # noqa: F401 - feature_grid, preserved_state re-exported
    feature_grid,
    model_device,
    model_dtype,
    preserved_state,
)
from ..registry import Registry
from ..utils import upsample  # noqa: F401 - re-exported: maps → input size

#: name -> Explainer subclass; ``EXPLAINERS.get(name)(model, target_layer)`` builds one.
EXPLAINERS: Registry = Registry("explainer")

Target = Literal["predicted"] | int | Sequence[int] | Tensor

@dataclass
class Explanation:
    """Attribution maps of one batch (or of a whole image set, see `explain_images`).

    maps:       float32 (B, h, w), raw at the target layer's resolution (never normalised).
    logits:     float32 (B, K) from the same forward pass, eval mode.
    targets:    int64 (B,), the explained class of each map.
    layer:      dotted name of the target layer.
    method:     registered explainer name (e.g. ``"gradcam"``).
    maps_gt:    float32 (B, h, w) for ``targets_gt`` from the same forward pass, or None.
    targets_gt: int64 (B,) ground-truth classes, or None.
    """

    maps: Tensor
    logits: Tensor
    targets: Tensor
    layer: str
    method: str
    maps_gt: Tensor | None = None
    targets_gt: Tensor | None = None

    def __len__(self) -> int:
        return self.maps.shape[0]

    def to(self, device: torch.device | str) -> Explanation:
        """A copy with every tensor on ``device``."""
        return replace(
            self,
            **{
                f.name: getattr(self, f.name).to(device)
                for f in fields(self)
                if isinstance(getattr(self, f.name), Tensor)
            },
        )

    @staticmethod
    def cat(parts: Sequence[Explanation]) -> Explanation:
        """Concatenate explanations of consecutive batches (same layer and method)."""
        if not parts:
            raise AuglensError("cannot concatenate zero explanations")
        first = parts[0]
        out: dict[str, Any] = {"layer": first.layer, "method": first.method}
        for f in fields(Explanation):
            if f.name in out:
                continue
            vals = [getattr(p, f.name) for p in parts]
            out[f.name] = None if vals[0] is None else torch.cat(vals)
        return Explanation(**out)


class Explainer:
    """One attribution method on one model and target layer.

    ``Explainer(model, target_layer=None)`` (None: the model's registered default layer);
    ``explainer(x, target="predicted", also_ground_truth=None) -> Explanation`` with x float
    (B, C, H, W) already normalised. Subclasses implement `_explain`; the base validates inputs,
    moves them to the model's device, guards the model state and checks the maps for NaN.

    ``channels_last`` (None: True on CPU, False elsewhere) feeds the input in channels-last
    memory format, which oneDNN runs 10-30 % faster on CPU (ResNet-18, EfficientNet-B0; see
    benchmarks/results/explain.md); the weights are not touched. Logits then agree with a plain
    ``model(x)`` to float rounding (~1e-6 relative), bit-exactly with ``channels_last=False``.
    A model whose ``.view`` needs contiguous strides is retried once in the contiguous format.

    Not thread-safe for concurrent use of the same model: parameters' ``requires_grad`` flags
    are switched off for the duration of a call (and restored).
    """

    #: registered name, set by `register_explainer`
    name: ClassVar[str] = ""
    #: set parameters to requires_grad=False during the call (no graph before the target layer)
    freeze_params: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        target_layer: str | None = None,
        *,
        channels_last: bool | None = None,
    ) -> None:
        self.model = model
        self.layer_name = default_target_layer(model) if target_layer is None else target_layer
        self.layer = get_module(model, self.layer_name)
        self.channels_last = channels_last

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__}, layer='{self.layer_name}')"

    def __call__(
        self,
        x: Tensor,
        target: Target = "predicted",
        also_ground_truth: Tensor | Sequence[int] | None = None,
    ) -> Explanation:
        """Explain ``x`` (B, C, H, W) for ``target`` ("predicted", one class id, or (B,) ids);
        with ``also_ground_truth`` (B,) ids, also the maps of those classes from the same pass."""
        if not isinstance(x, Tensor) or x.ndim != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise AuglensError(f"explainer input must be a 4-D tensor (B, C, H, W), got {shape}")
        if not x.is_floating_point():
            raise AuglensError(
                f"explainer input must be float (normalised images), got {x.dtype}; "
                "use explain_images for uint8 images"
            )
        b = x.shape[0]
        if b == 0:
            raise AuglensError("explainer input is an empty batch")
        device = model_device(self.model)
        x = x.detach().to(device=device, dtype=model_dtype(self.model))
        if x.is_inference():
            with torch.inference_mode(False):
                x = x.clone()
        tgt = None if _is_predicted(target) else _class_ids(target, b, "target", device)
        gt = None
        if also_ground_truth is not None:
            gt = _class_ids(also_ground_truth, b, "also_ground_truth", device)
        use_cl = device.type == "cpu" if self.channels_last is None else self.channels_last
        xin = x.contiguous(memory_format=torch.channels_last) if use_cl else x
        with preserved_state(self.model, freeze_params=self.freeze_params):
            try:
                maps, logits, targets, maps_gt = self._explain(xin, tgt, gt)
            except RuntimeError as e:
                if xin is x or "view size is not compatible" not in str(e):
                    raise
                maps, logits, targets, maps_gt = self._explain(x, tgt, gt)
        maps = maps.detach().float()
        logits = logits.detach().float()
        _check_finite(maps, "maps")
        if maps_gt is not None:
            maps_gt = maps_gt.detach().float()
            _check_finite(maps_gt, "ground-truth maps")
        return Explanation(
            maps=maps,
            logits=logits,
            targets=targets.long(),
            layer=self.layer_name,
            method=self.name or type(self).__name__,
            maps_gt=maps_gt,
            targets_gt=None if gt is None else gt.long(),
        )

    def _explain(
        self, x: Tensor, target: Tensor | None, target_gt: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Return (maps (B, h, w), logits (B, K), targets (B,), maps_gt or None).

        ``target`` None means the predicted class of this forward pass; use `resolve_targets`.
        Called inside `preserved_state`, with x on the model's device.
        """
        raise NotImplementedError


def register_explainer(name: str) -> Callable[[type[Explainer]], type[Explainer]]:
    """Class decorator: register an `Explainer` subclass in `EXPLAINERS` under ``name``."""

    def deco(cls: type[Explainer]) -> type[Explainer]:
        cls.name = name
        return EXPLAINERS.register(name)(cls)

    return deco


def resolve_targets(logits: Tensor, target: Tensor | None, what: str = "target") -> Tensor:
    """Class ids (B,) int64: argmax of ``logits`` if ``target`` is None, else ``target`` checked
    against the number of classes K = logits.shape[1]."""
    if logits.ndim != 2:
        raise AuglensError(f"model output must be logits (B, K), got {tuple(logits.shape)}")
    if target is None:
        return logits.detach().argmax(1)
    k = logits.shape[1]
    bad = target >= k
    if bool(bad.any()):
        raise AuglensError(
            f"{what} class ids must be in [0, {k - 1}] for a model with {k} classes; "
            f"got {target[bad][:5].tolist()} ({int(bad.sum())} out of range)"
        )
    return target


def _is_predicted(target: object) -> bool:
    if isinstance(target, str):
        if target != "predicted":
            raise AuglensError(
                f"target must be 'predicted', a class id or a (B,) tensor of ids; got '{target}'"
            )
        return True
    return False


def _class_ids(ids: object, b: int, what: str, device: torch.device) -> Tensor:
    if isinstance(ids, bool):
        raise AuglensError(f"{what} must be class ids, got a bool")
    if isinstance(ids, int):
        t = torch.full((b,), ids, dtype=torch.long)
    else:
        t = ids if isinstance(ids, Tensor) else torch.as_tensor(ids)
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise AuglensError(f"{what} must hold integer class ids, got dtype {t.dtype}")
        if t.shape != (b,):
            raise AuglensError(
                f"{what} must have shape ({b},) to match the batch, got {tuple(t.shape)}"
            )
    if bool((t < 0).any()):
        raise AuglensError(f"{what} class ids must be >= 0, got {t[t < 0][:5].tolist()}")
    return t.to(device=device, dtype=torch.long)


def _check_finite(maps: Tensor, what: str) -> None:
    bad = ~torch.isfinite(maps).flatten(1).all(1)
    n = int(bad.sum())
    if n:
        idx = bad.nonzero().flatten()[:5].tolist()
        raise AuglensError(
            f"{n} of {maps.shape[0]} {what} contain NaN or inf (batch indices {idx}...); "
            "check the inputs and the model's weights"
        )


def explain_images(
    model: nn.Module,
    images: Tensor,
    normalize: Callable[[Tensor], Tensor],
    method: str = "gradcam",
    target_layer: str | None = None,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    ground_truth: Tensor | None = None,
    *,
    target: Target = "predicted",
    method_params: Mapping[str, Any] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> Explanation:
    """Explain uint8 images (N, 3, H, W) batch by batch: ``normalize(images / 255)`` → model.

    ``images``: a tensor or a lazy container indexable like one (`auglens.data.images.LazyImages`:
    only one batch is decoded at a time).

    ``device`` None: the model's device; a different device runs on a copy of the model (the
    caller's model is never moved). ``ground_truth`` (N,) adds ``maps_gt`` from the same passes.
    Returns one `Explanation` on the CPU, maps float32 (storage precision is the caller's choice).
    ``on_batch(done, total)`` is called after each batch (images done, images in all).
    """
    if getattr(images, "ndim", None) != 4 or getattr(images, "dtype", None) != torch.uint8:
        desc = (
            f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images)
        )
        raise AuglensError(f"explain_images expects uint8 images (N, 3, H, W), got {desc}")
    n = images.shape[0]
    if n == 0:
        raise AuglensError("explain_images got no images")
    if batch_size < 1:
        raise AuglensError(f"batch_size must be >= 1, got {batch_size}")
    cls = EXPLAINERS.get(method)
    dev = model_device(model) if device is None else torch.device(device)
    net = model
    if dev != model_device(model):
        net = copy.deepcopy(model).to(dev)
    explainer = cls(net, target_layer, **dict(method_params or {}))
    per_image = not _is_predicted(target) and not isinstance(target, int)
    tgt_all = _class_ids(target, n, "target", torch.device("cpu")) if per_image else target
    gt_all = None
    if ground_truth is not None:
        gt_all = _class_ids(ground_truth, n, "ground_truth", torch.device("cpu"))
    parts = []
    for start in range(0, n, batch_size):
        sl = slice(start, min(start + batch_size, n))
        xb = normalize(images[sl].to(dev, non_blocking=True).float().div_(255))
        tb = tgt_all[sl] if per_image else tgt_all
        gb = None if gt_all is None else gt_all[sl]
        parts.append(explainer(xb, tb, gb).to("cpu"))
        if on_batch:
            on_batch(sl.stop, n)
    return Explanation.cat(parts)
