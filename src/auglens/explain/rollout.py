"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers").

Per attention layer l (in forward order) with attention weights W_l (B, H, N, N) (rows = queries,
softmax over keys):

1. fuse the heads: mean over H (the paper; ``head_fusion="max"``/``"min"`` as
   ``jacobgil/vit-explain``);
2. optionally discard the smallest ``discard_ratio`` of the fused weights per image (set to 0;
   as vit-explain, the ⌊r·N²⌋ smallest entries, never entry (0, 0));
3. add the identity for the residual connection and renormalise each row to sum 1:
   Ã_l = (A_l + I) / rowsum(A_l + I) (= ½A_l + ½I when rows of A_l sum to 1, the paper's form);
4. roll out: R = Ã_L · … · Ã_2 · Ã_1.

The map is the class token's row of R over the patch tokens, R[0, prefix:], placed on the patch
grid (B, h, w) with the model's `TokenGrid` (default: one class token, row-major patches). Raw,
never normalised (vit-explain divides by the maximum; we do not, SPEC §2); values in [0, 1],
summing to 1 − R[0, :prefix] per image. The map is class-agnostic: ``targets`` (predicted or
given) are recorded, and ground-truth maps equal the maps.

Capture: every ``nn.MultiheadAttention`` under ``target_layer`` (None: the whole model) gets, for
one eval forward without autograd, a forward-pre-hook that asks for per-head weights
(``need_weights=True, average_attn_weights=False``) and a forward hook that keeps them; both are
removed afterwards, also on errors. Asking for weights makes torch take its explicit-softmax path
instead of the fused kernel, so the logits agree with a plain forward to float rounding only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..errors import AuglensError
from ..models.registry import get_module
from ..models.tap import LayerTap
from ..models.vit import TokenGrid, token_grid
from .base import Explainer, register_explainer, resolve_targets

HeadFusion = Literal["mean", "max", "min"]
_FUSIONS = ("mean", "max", "min")
# positions of need_weights / average_attn_weights in nn.MultiheadAttention.forward
_NEED_WEIGHTS_POS, _AVERAGE_POS = 4, 6


def fuse_heads(attn: Tensor, head_fusion: HeadFusion = "mean") -> Tensor:
    """Attention (B, H, N, N) → (B, N, N): mean, max or min over the heads."""
    if head_fusion == "mean":
        return attn.mean(1)
    if head_fusion == "max":
        return attn.amax(1)
    if head_fusion == "min":
        return attn.amin(1)
    raise AuglensError(f"head_fusion must be one of {', '.join(_FUSIONS)}, got {head_fusion!r}")


def discard_lowest(fused: Tensor, ratio: float) -> Tensor:
    """Copy of ``fused`` (B, N, N) with the ⌊ratio·N²⌋ smallest entries per image set to 0,
    except entry (0, 0) (the class token's attention to itself), as vit-explain."""
    b, n, _ = fused.shape
    k = int(n * n * ratio)
    out = fused.clone()
    if k == 0:
        return out
    flat = out.view(b, n * n)
    idx = flat.topk(k, dim=1, largest=False).indices
    keep0 = idx == 0
    vals = torch.where(keep0, flat.gather(1, idx), torch.zeros((), dtype=flat.dtype))
    flat.scatter_(1, idx, vals)
    return out


def rollout(
    attentions: Sequence[Tensor], head_fusion: HeadFusion = "mean", discard_ratio: float = 0.0
) -> Tensor:
    """Rolled-out attention R = Ã_L ⋯ Ã_1 (B, N, N), float64, from per-layer attention weights
    (B, H, N, N) in forward order (module docstring, steps 1–4)."""
    if not attentions:
        raise AuglensError("attention rollout needs at least one attention layer")
    if not 0.0 <= discard_ratio < 1.0:
        raise AuglensError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    result: Tensor | None = None
    for a in attentions:
        if a.ndim != 4 or a.shape[-1] != a.shape[-2]:
            raise AuglensError(f"attention weights must be (B, H, N, N), got {tuple(a.shape)}")
        fused = fuse_heads(a.double(), head_fusion)
        if discard_ratio > 0:
            fused = discard_lowest(fused, discard_ratio)
        fused = fused + torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
        fused = fused / fused.sum(-1, keepdim=True)
        if result is not None and result.shape != fused.shape:
            raise AuglensError(
                f"attention layers differ in shape: {tuple(result.shape)} vs {tuple(fused.shape)}"
            )
        result = fused if result is None else fused @ result
    assert result is not None
    return result


def rollout_maps(rolled: Tensor, grid: TokenGrid | None = None) -> Tensor:
    """Class-token row of rolled-out attention (B, N, N) over the patch tokens → (B, h, w)."""
    grid = grid or TokenGrid()
    row = rolled[:, :1, :].transpose(1, 2)  # (B, N, 1): tokens as the sequence, one "channel"
    return grid.to_grid(row)[:, 0]


def _attention_modules(model: nn.Module, root: str | None) -> list[tuple[str, nn.Module]]:
    base = model if root is None else get_module(model, root)
    prefix = "" if root is None else root + "."
    found = [
        (prefix + n if n else (root or ""), m)
        for n, m in base.named_modules()
        if isinstance(m, nn.MultiheadAttention)
    ]
    if not found:
        if root:
            raise AuglensError(
                f"attention rollout needs nn.MultiheadAttention layers; module '{root}' of "
                f"{type(model).__name__} has none (target_layer=None rolls out every attention "
                "layer of the model)"
            )
        raise AuglensError(
            f"attention rollout needs nn.MultiheadAttention layers; {type(model).__name__} has "
            "none (use a transformer, e.g. small_vit or vit_b_16)"
        )
    return found


def _common_parent(names: list[str]) -> str:
    parts = [n.split(".")[:-1] for n in names]
    common: list[str] = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)


def _ask_for_weights(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple:
    args = list(args)
    for pos, key, value in (
        (_NEED_WEIGHTS_POS, "need_weights", True),
        (_AVERAGE_POS, "average_attn_weights", False),
    ):
        if len(args) > pos:
            args[pos] = value
        else:
            kwargs[key] = value
    return tuple(args), kwargs


@register_explainer("rollout")
class AttentionRollout(Explainer):
    """Attention rollout over every ``nn.MultiheadAttention`` under ``target_layer`` (None: the
    whole model); conventions in the module docstring. ``head_fusion``: "mean" (default, the
    paper), "max" or "min"; ``discard_ratio`` in [0, 1) (default 0: nothing discarded).
    ``Explanation.layer`` records ``target_layer``, or the common parent of the attention layers
    (e.g. "blocks", "encoder.layers")."""

    def __init__(
        self,
        model: nn.Module,
        target_layer: str | None = None,
        *,
        head_fusion: HeadFusion = "mean",
        discard_ratio: float = 0.0,
        channels_last: bool | None = None,
    ) -> None:
        if head_fusion not in _FUSIONS:
            raise AuglensError(
                f"head_fusion must be one of {', '.join(_FUSIONS)}, got {head_fusion!r}"
            )
        if not 0.0 <= discard_ratio < 1.0:
            raise AuglensError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
        self.model = model
        self.attention = _attention_modules(model, target_layer)
        names = [n for n, _ in self.attention]
        self.layer_name = target_layer if target_layer is not None else _common_parent(names)
        self.layer = model if not self.layer_name else get_module(model, self.layer_name)
        self.channels_last = channels_last
        self.head_fusion: HeadFusion = head_fusion
        self.discard_ratio = float(discard_ratio)

    def attention_weights(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """(per-layer attention weights (B, H, N, N) in call order, logits) of one forward pass
        without autograd. Call inside `preserved_state` (eval mode); hooks are removed on exit."""
        captured: list[Tensor] = []
        calls: dict[int, int] = {}

        def keep(module: nn.Module, args: object, output: object) -> None:
            calls[id(module)] = calls.get(id(module), 0) + 1
            weights = output[1] if isinstance(output, tuple) and len(output) == 2 else None
            if not isinstance(weights, Tensor) or weights.ndim != 4:
                raise AuglensError(
                    "an attention layer did not return per-head weights (B, H, N, N); "
                    "rollout supports torch's nn.MultiheadAttention"
                )
            captured.append(weights.detach())

        mods = [m for _, m in self.attention]
        with LayerTap(mods, _ask_for_weights, kind="pre", with_kwargs=True), LayerTap(mods, keep):
            with torch.no_grad():
                logits = self.model(x)
        twice = [n for n, m in self.attention if calls.get(id(m), 0) > 1]
        missing = [n for n, m in self.attention if id(m) not in calls]
        if twice or missing:
            raise AuglensError(
                "attention rollout needs every attention layer called exactly once per forward; "
                f"called more than once: {twice or 'none'}; not called: {missing or 'none'}"
            )
        return captured, logits

    def _explain(
        self, x: Tensor, target: Tensor | None, target_gt: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        attentions, logits = self.attention_weights(x)
        if not isinstance(logits, Tensor):
            raise AuglensError(
                f"model output must be a tensor of logits (B, K), got {type(logits).__name__}"
            )
        targets = resolve_targets(logits, target)
        rolled = rollout(attentions, self.head_fusion, self.discard_ratio)
        maps = rollout_maps(rolled, token_grid(self.model)).float()
        maps_gt = None
        if target_gt is not None:
            resolve_targets(logits, target_gt, "ground-truth")
            maps_gt = maps.clone()
        return maps, logits, targets, maps_gt
