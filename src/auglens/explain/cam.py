"""Gradient-based class activation maps: Grad-CAM, Grad-CAM++, LayerCAM (SPEC §2).

All three share one pass: a forward with every parameter frozen (no autograd graph before the
target layer), the target layer's output A (B, C, h, w) turned into a leaf that requires grad,
and ``torch.autograd.grad`` of the summed target-class **logits** w.r.t. A only (no parameter
gradients). Only the head after the layer records a graph, so the cost is about one forward pass.
A transformer layer's tokens (B, 1 + h·w, D) are the leaf; A and G are both read as grids
(B, D, h, w) through the model's `TokenGrid` (`feature_grid`; a linear reshape, so G is the
gradient w.r.t. the grid). With G = dlogit/dA:

- Grad-CAM (Selvaraju et al.): w_c = mean_hw G_c; map = ReLU(Σ_c w_c A_c).
- Grad-CAM++ (Chattopadhay et al., eq. 19 with the exp-logit approximation, as
  pytorch-grad-cam's ``GradCAMPlusPlus``): α = G² / (2G² + (Σ_hw A_c)·G³ + 1e-6), α = 0 where
  G = 0; w_c = Σ_hw ReLU(G_c)·α_c; map = ReLU(Σ_c w_c A_c).
- LayerCAM (Jiang et al.): map = ReLU(Σ_c ReLU(G_c)·A_c).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import AuglensError
from ..models.tap import LayerTap
from .base import Explainer, feature_grid, register_explainer, resolve_targets

GRADCAM_PP_EPS = 1e-6


class GradientCAM(Explainer):
    """Base of the CAM family: one forward, gradients of target logits w.r.t. the layer output.

    Subclasses implement `combine(A, G) -> maps (B, h, w)`.
    """

    def combine(self, acts: Tensor, grads: Tensor) -> Tensor:
        """Maps (B, h, w) from activations A and logit gradients G, both (B, C, h, w)."""
        raise NotImplementedError

    def _explain(
        self, x: Tensor, target: Tensor | None, target_gt: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        store: dict[str, Tensor] = {}
        layer_name = self.layer_name

        def grid(t: Tensor) -> Tensor:
            return feature_grid(self.model, t, layer_name)

        def hook(module: nn.Module, inputs: object, output: object) -> Tensor:
            feature_grid(self.model, output, layer_name)  # validates the shape
            if "acts" in store:
                raise AuglensError(
                    f"target layer '{layer_name}' is called more than once per forward pass "
                    "(a shared module); choose a layer that runs once"
                )
            leaf = output.detach().requires_grad_()
            store["acts"] = leaf
            # a non-leaf copy goes on, so in-place ops after the layer (ReLU(inplace=True),
            # ``out += identity``) are allowed and A keeps the layer's own output
            return leaf.clone()

        with torch.inference_mode(False), torch.enable_grad():
            with LayerTap(self.layer, hook):
                logits = self.model(x)
            if "acts" not in store:
                raise AuglensError(
                    f"target layer '{self.layer_name}' was not called in the forward pass"
                )
            acts = store.pop("acts")
            if not isinstance(logits, Tensor):
                raise AuglensError(
                    f"model output must be a tensor of logits (B, K), got {type(logits).__name__}"
                )
            if not logits.requires_grad:
                raise AuglensError(
                    f"the model output does not depend on target layer '{self.layer_name}' "
                    "through differentiable ops"
                )
            targets = resolve_targets(logits, target)
            maps_gt = None
            if target_gt is not None:
                target_gt = resolve_targets(logits, target_gt, "ground-truth")
                (g,) = torch.autograd.grad(
                    logits.gather(1, target_gt[:, None]).sum(), acts, retain_graph=True
                )
                maps_gt = self.combine(grid(acts.detach()), grid(g))
            (g,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), acts)
            maps = self.combine(grid(acts.detach()), grid(g))
        return maps, logits.detach(), targets, maps_gt


def _weighted_sum(weights: Tensor, acts: Tensor) -> Tensor:
    """ReLU(Σ_c w_c A_c): weights (B, C), acts (B, C, h, w) → (B, h, w)."""
    return torch.relu((weights[:, :, None, None] * acts).sum(1))


@register_explainer("gradcam")
class GradCAM(GradientCAM):
    """Grad-CAM: ReLU(Σ_c mean_hw(dlogit/dA_c) · A_c); equals Captum ``LayerGradCam`` with
    ``relu_attributions=True``."""

    def combine(self, acts: Tensor, grads: Tensor) -> Tensor:
        return _weighted_sum(grads.mean((2, 3)), acts)


@register_explainer("gradcam++")
class GradCAMPlusPlus(GradientCAM):
    """Grad-CAM++ with pytorch-grad-cam's weights: Σ_hw ReLU(G)·G²/(2G² + Σ_hw A·G³ + 1e-6)."""

    def combine(self, acts: Tensor, grads: Tensor) -> Tensor:
        g2 = grads * grads
        g3 = g2 * grads
        sum_a = acts.sum((2, 3), keepdim=True)
        alpha = g2 / (2 * g2 + sum_a * g3 + GRADCAM_PP_EPS)
        alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
        weights = (torch.relu(grads) * alpha).sum((2, 3))
        return _weighted_sum(weights, acts)


@register_explainer("layercam")
class LayerCAM(GradientCAM):
    """LayerCAM: ReLU(Σ_c ReLU(dlogit/dA_c) · A_c), element-wise weights."""

    def combine(self, acts: Tensor, grads: Tensor) -> Tensor:
        return torch.relu((torch.relu(grads) * acts).sum(1))
