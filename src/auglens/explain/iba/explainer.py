"""The IBA explainer: a whole batch optimised at once (the reference handles one image per
call)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import AuglensError
from ...models.tap import LayerTap
from ...models.vit import token_grid
from ..base import (
    Explainer,
    feature_grid,
    register_explainer,
    resolve_targets,
)

#: format version written into the safetensors metadata of an `Estimator`
from .bottleneck import bottleneck_lambda, capacity_nats
from .estimator import LN2, Estimator, model_fingerprint
from .head import _TokenHead, split_head


@register_explainer("iba")
class IBA(Explainer):
    """Per-sample Information Bottleneck attribution (conventions: module docstring).

    ``IBA(model, target_layer=None, *, estimator=...)``; ``target_layer`` None: the estimator's
    layer. ``estimator``: an `Estimator` (or the path of one saved with `Estimator.save`) fitted
    with `fit_estimator` on un-augmented training images **of this model**; with
    ``check_estimator`` its model fingerprint must match the model's weights.
    Maps: (B, h, w) float32 capacity in bits (≥ 0) at the layer's resolution; logits from a
    clean eval forward; target = predicted class unless given; ground-truth maps come from a
    second optimisation (run in the same batch).
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: str | None = None,
        *,
        estimator: Estimator | str | Path | None = None,
        beta: float = 10.0,
        steps: int = 10,
        lr: float = 1.0,
        batch_noise: int = 10,
        init_alpha: float = 5.0,
        smooth_sigma: float = 1.0,
        min_std: float = 0.01,
        active_threshold: float | None = 0.01,
        seed: int | None = 0,
        saliency_from: Literal["last_step", "final"] = "last_step",
        head_only: bool = True,
        check_estimator: bool = True,
        channels_last: bool | None = None,
    ) -> None:
        if estimator is None:
            raise AuglensError(
                "IBA needs an estimator of the layer's activations for this model: fit one with "
                "auglens.explain.iba.fit_estimator(model, train_images_uint8, normalize) on "
                "un-augmented training images (cache it with Estimator.save next to the "
                "checkpoint) and pass estimator=..."
            )
        if isinstance(estimator, str | Path):
            estimator = Estimator.load(estimator)
        if not isinstance(estimator, Estimator):
            raise AuglensError(
                f"estimator must be an Estimator or a path, got {type(estimator).__name__}"
            )
        if target_layer is None:
            target_layer = estimator.layer or None
        super().__init__(model, target_layer, channels_last=channels_last)
        if estimator.layer and estimator.layer != self.layer_name:
            raise AuglensError(
                f"the IBA estimator was fitted on layer '{estimator.layer}', not on the target "
                f"layer '{self.layer_name}'; fit one for this layer with fit_estimator"
            )
        if check_estimator and estimator.model_fingerprint:
            if model_fingerprint(model) != estimator.model_fingerprint:
                raise AuglensError(
                    "the IBA estimator was fitted on a model with different weights (IBA's "
                    "statistics are per model); fit one for this model with fit_estimator, or "
                    "pass check_estimator=False"
                )
        checks = [
            (steps >= 1, f"steps must be >= 1, got {steps}"),
            (batch_noise >= 1, f"batch_noise must be >= 1, got {batch_noise}"),
            (lr > 0, f"lr must be > 0, got {lr}"),
            (beta >= 0, f"beta must be >= 0, got {beta}"),
            (min_std > 0, f"min_std must be > 0, got {min_std}"),
            (smooth_sigma >= 0, f"smooth_sigma must be >= 0, got {smooth_sigma}"),
            (
                saliency_from in ("last_step", "final"),
                f"saliency_from must be 'last_step' or 'final', got {saliency_from!r}",
            ),
        ]
        for ok, msg in checks:
            if not ok:
                raise AuglensError(msg)
        self.estimator = estimator
        self.beta = float(beta)
        self.steps = int(steps)
        self.lr = float(lr)
        self.batch_noise = int(batch_noise)
        self.init_alpha = float(init_alpha)
        self.smooth_sigma = float(smooth_sigma)
        self.min_std = float(min_std)
        self.active_threshold = active_threshold
        self.seed = seed
        self.saliency_from = saliency_from
        self.head_only = head_only
        #: how the last call ran the network after the layer: "head" (fx split) or "full"
        self.last_mode: str = ""
        self._tokens: Tensor | None = None  # a token layer's clean output (class token source)
        self._head_cache: tuple[tuple[tuple[str, int], ...], fx.GraphModule | None] | None = None

    def _explain(
        self, x: Tensor, target: Tensor | None, target_gt: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        with torch.inference_mode(False), torch.enable_grad():
            r, logits = self._clean_pass(x)
            targets = resolve_targets(logits, target)
            b = x.shape[0]
            tg = targets
            if target_gt is not None:
                target_gt = resolve_targets(logits, target_gt, "ground-truth")
                tg = torch.cat([targets, target_gt])
            run = self._runner(x, r, logits, tg.shape[0] // b)
            sal = self._optimise(r.repeat(tg.shape[0] // b, 1, 1, 1), tg, run)
        maps_gt = sal[b:] if target_gt is not None else None
        return sal[:b], logits, targets, maps_gt

    # ---- passes

    def _clean_pass(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """One eval forward: the layer's output R (B, C, h, w) (a token layer's as its grid,
        `feature_grid`; its tokens kept in ``self._tokens``) and the logits (B, K)."""
        store: dict[str, Tensor] = {}
        name = self.layer_name

        def hook(module: nn.Module, inputs: object, output: object) -> None:
            out = feature_grid(self.model, output, name)
            if "r" in store:
                raise AuglensError(
                    f"IBA layer '{name}' is called more than once per forward pass "
                    "(a shared module); choose a layer that runs once"
                )
            store["r"] = out.detach().clone()  # later in-place ops must not change R
            if out is not output:
                store["tokens"] = output.detach().clone()

        with torch.no_grad(), LayerTap(self.layer, hook):
            logits = self.model(x)
        if "r" not in store:
            raise AuglensError(f"IBA layer '{name}' was not called in the forward pass")
        if not isinstance(logits, Tensor) or logits.ndim != 2:
            desc = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise AuglensError(f"model output must be logits (B, K), got {desc}")
        r = store["r"]
        self._tokens = store.get("tokens")
        if tuple(r.shape[1:]) != self.estimator.shape:
            raise AuglensError(
                f"layer '{name}' outputs {tuple(r.shape[1:])} per image but the IBA estimator "
                f"holds {self.estimator.shape}: fit it on images of the same size"
            )
        return r, logits

    def _runner(
        self, x: Tensor, r: Tensor, logits: Tensor, reps: int
    ) -> Callable[[Tensor], Tensor]:
        """A function z (reps·B·n, C, h, w) → logits running the network after the layer."""
        if self.head_only:
            head = self._split_head()
            if head is not None and self._tokens is not None:
                grid = token_grid(self.model)
                assert grid is not None
                head = _TokenHead(head, grid, self._tokens, reps, self.batch_noise)
            if head is not None:
                with torch.no_grad():
                    check = head(r)
                scale = logits.abs().max().item()
                if (
                    isinstance(check, Tensor)
                    and check.shape == logits.shape
                    and (check - logits).abs().max().item() <= 1e-4 * scale + 1e-6
                ):
                    self.last_mode = "head"
                    return head
                warnings.warn(
                    f"the torch.fx split of {type(self.model).__name__} after "
                    f"'{self.layer_name}' does not reproduce the model's logits; IBA falls back "
                    "to full forward passes (same maps, slower)",
                    stacklevel=4,
                )
        self.last_mode = "full"
        x_rep = x.repeat(reps, 1, 1, 1).repeat_interleave(self.batch_noise, 0)
        cur: dict[str, Tensor] = {}

        def hook(module: nn.Module, inputs: object, output: object) -> Tensor:
            out = feature_grid(self.model, output, self.layer_name)
            z = cur["z"]
            if out.shape != z.shape:
                raise AuglensError(
                    f"IBA layer '{self.layer_name}' output {tuple(out.shape)} does not match "
                    f"the bottleneck {tuple(z.shape)}"
                )
            return z if out is output else token_grid(self.model).to_tokens(z, output)

        def run(z: Tensor) -> Tensor:
            cur["z"] = z
            try:
                with LayerTap(self.layer, hook):
                    return self.model(x_rep)
            finally:
                cur.clear()

        return run

    def _split_head(self) -> fx.GraphModule | None:
        """`split_head`, cached while the model's module tree is the same objects (the head
        shares them; a changed tree is traced again)."""
        key = tuple((n, id(m)) for n, m in self.model.named_modules())
        if self._head_cache is None or self._head_cache[0] != key:
            self._head_cache = (key, split_head(self.model, self.layer_name))
        return self._head_cache[1]

    # ---- optimisation

    def _optimise(self, r: Tensor, targets: Tensor, run: Callable[[Tensor], Tensor]) -> Tensor:
        """Saliency (B, h, w) in bits for activations r (B, C, h, w) and targets (B,)."""
        est = self.estimator
        dev, dt = r.device, r.dtype
        r = r.contiguous()
        mean = est.mean.to(dev, dt)
        std = est.clamped_std(self.min_std).to(dev, dt)
        if self.active_threshold is None:
            active = torch.ones_like(mean)
        else:
            active = est.active(self.active_threshold).to(dev, dt)
        r_norm = (r - mean) / std
        b, c, h, w = r.shape
        n = self.batch_noise
        t_rep = targets.repeat_interleave(n)
        gen = None if self.seed is None else torch.Generator().manual_seed(int(self.seed))
        alpha = torch.full_like(r, self.init_alpha).requires_grad_()
        opt = torch.optim.Adam([alpha], lr=self.lr)
        cap = None
        for _ in range(self.steps):
            opt.zero_grad(set_to_none=True)
            lam, om = bottleneck_lambda(alpha, self.smooth_sigma)
            cap = capacity_nats(r_norm, lam, om) * active
            if gen is not None:
                eps = torch.randn((1, n, c, h, w), generator=gen).to(dev, dt)
            else:
                eps = torch.randn((b, n, c, h, w), device=dev, dtype=dt)
            noise = eps * std + mean
            z = (lam[:, None] * r[:, None] + om[:, None] * noise) * active
            out = run(z.reshape(b * n, c, h, w))
            ce = F.cross_entropy(out, t_rep, reduction="none").view(b, n).mean(1)
            loss = (ce + self.beta * cap.flatten(1).mean(1)).sum()
            loss.backward(inputs=[alpha])
            opt.step()
        with torch.no_grad():
            if self.saliency_from == "final":
                lam, om = bottleneck_lambda(alpha, self.smooth_sigma)
                cap = capacity_nats(r_norm, lam, om) * active
            assert cap is not None
            return cap.detach().sum(1) / LN2
