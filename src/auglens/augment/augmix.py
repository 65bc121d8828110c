"""AugMix (Hendrycks et al. 2020) with per-sample chains, and its Jensen–Shannon consistency loss.

The image operation follows torchvision v2 ``AugMix``; the optional consistency training follows
the authors' code (``google-research/augmix``, ``cifar.py``): the model sees the clean image and
two independent AugMix views, the loss is CE(clean) + 12 · JS(p_clean, p_aug1, p_aug2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.special import gammaincinv
from torch import Tensor

from ._util import apply_masked, as_bool, as_float, as_int
from .base import AUGMENTATIONS, AugLog, Augmentation, ParameterError
from .mixing import sample_beta
from .policies import as_interpolation, check_rgb
from .policy_ops import IDENTITY, SPACES, apply_ops


def sample_dirichlet(n: int, alpha: float, k: int, generator: torch.Generator) -> Tensor:
    """float64 (n, k) ~ Dirichlet(alpha, …, alpha) on CPU: Gamma(alpha, 1) draws by the inverse
    CDF of U[0, 1) draws from ``generator`` (scipy ``gammaincinv``), normalised per row."""
    u = torch.rand(n, k, generator=generator, dtype=torch.float64)
    g = torch.from_numpy(gammaincinv(alpha, u.numpy()))
    return g / g.sum(dim=1, keepdim=True).clamp_min(1e-300)


def jsd_consistency_loss(
    logits_clean: Tensor, logits_aug1: Tensor, logits_aug2: Tensor, weight: float = 12.0
) -> Tensor:
    """AugMix's Jensen–Shannon consistency term (authors' ``cifar.py``), a scalar:

    ``weight · (KL(p_c ‖ M) + KL(p_1 ‖ M) + KL(p_2 ‖ M)) / 3`` with p = softmax of each (B, K)
    logits (computed in float32 or wider), M = clamp((p_c + p_1 + p_2) / 3, 1e-7, 1), each KL
    summed over classes and averaged over the batch (``F.kl_div(log M, p, reduction="batchmean")``),
    in nats. Add it to the cross-entropy of the **clean** logits only.
    """
    if not logits_clean.shape == logits_aug1.shape == logits_aug2.shape or logits_clean.ndim != 2:
        raise ValueError(
            "jsd_consistency_loss: three (B, K) logits of equal shape needed, got "
            f"{tuple(logits_clean.shape)}, {tuple(logits_aug1.shape)}, {tuple(logits_aug2.shape)}"
        )
    dtype = torch.promote_types(logits_clean.dtype, torch.float32)
    p = [z.to(dtype).softmax(dim=1) for z in (logits_clean, logits_aug1, logits_aug2)]
    log_m = ((p[0] + p[1] + p[2]) / 3.0).clamp(1e-7, 1.0).log()
    kl = sum(F.kl_div(log_m, q, reduction="batchmean") for q in p)
    return weight * kl / 3.0


@AUGMENTATIONS.register("augmix")
class AugMix(Augmentation):
    """AugMix as torchvision v2 ``AugMix``, with per-sample chains and weights.

    Per sample: weight of the original m ~ Beta(alpha, alpha) (torchvision: first component of
    Dirichlet(alpha, alpha)); chain weights w ~ Dirichlet(alpha·1) · (1 - m); ``mixture_width``
    chains, each of depth ``chain_depth`` (or, if ``chain_depth`` <= 0, uniform in {1, 2, 3} per
    chain and sample) of operations drawn uniformly from torchvision's AugMix space (ShearX/Y,
    TranslateX/Y (±W/3), Rotate (±30°), Posterize (4…0 bits), Solarize, AutoContrast, Equalize,
    plus Brightness, Color, Contrast, Sharpness if ``all_ops``) with a magnitude bin uniform in
    [0, ``severity`` - 1] of 10 (sign flipped with probability 1/2 for signed ops); geometric ops
    with ``interpolation`` (torchvision default "bilinear") and fill 0. Image = m·x + Σ_k w_k ·
    chain_k(x). Defaults are torchvision's (3, 3, -1, 1.0, True).

    ``jsd=True``: Jensen–Shannon consistency training (authors' code). Then
    ``consistency_views == 2`` and the trainer must call :meth:`views` instead of the
    augmentation (calling it raises) and add :func:`jsd_consistency_loss`; see ``views``.

    Log: ``orig_weight`` (B,), ``weights`` (B, mixture_width), ``depth`` (B, mixture_width),
    ``op`` and ``magnitude`` (B, mixture_width · max depth; chain-major, Identity/0 past a chain's
    depth), ``applied``; not applied: weight 1, zeros, Identity.
    """

    name = "augmix"

    def __init__(
        self,
        severity: int = 3,
        mixture_width: int = 3,
        chain_depth: int = -1,
        alpha: float = 1.0,
        all_ops: bool = True,
        jsd: bool = False,
        interpolation: str = "bilinear",
        p: float = 1.0,
    ) -> None:
        super().__init__(p)
        self.severity = as_int("severity", severity, 1)
        if self.severity > 10:
            raise ParameterError("severity", f"severity must be in [1, 10], got {severity}")
        self.mixture_width = as_int("mixture_width", mixture_width, 1)
        if isinstance(chain_depth, bool) or not isinstance(chain_depth, int):
            raise ParameterError(
                "chain_depth", f"chain_depth must be an integer (<= 0: random 1-3), got "
                f"{chain_depth!r}"
            )
        self.chain_depth = chain_depth
        self.alpha = as_float("alpha", alpha, 1e-6)
        self.all_ops = as_bool("all_ops", all_ops)
        self.jsd = as_bool("jsd", jsd)
        self.interpolation = as_interpolation(interpolation)
        self.consistency_views = 2 if self.jsd else 0

    @property
    def max_depth(self) -> int:
        return self.chain_depth if self.chain_depth > 0 else 3

    def draw(self, batch: int, height: int, width: int, generator: torch.Generator) -> AugLog:
        """Per-sample parameters of one AugMix view, drawn in this order: orig_weight,
        chain weights, (depths if random), op choices, magnitude bins, signs. Values as logged."""
        space = SPACES["augmix" if self.all_ops else "augmix_partial"]
        k, d = self.mixture_width, self.max_depth
        m0 = sample_beta(batch, self.alpha, self.alpha, generator)
        weights = sample_dirichlet(batch, self.alpha, k, generator) * (1.0 - m0)[:, None]
        if self.chain_depth > 0:
            depth = torch.full((batch, k), self.chain_depth, dtype=torch.long)
        else:
            depth = torch.randint(1, 4, (batch, k), generator=generator)
        local = torch.randint(0, len(space.ops), (batch, k, d), generator=generator)
        bins = torch.randint(0, self.severity, (batch, k, d), generator=generator)
        sign_u = torch.rand(batch, k, d, generator=generator, dtype=torch.float64)
        op, mag = space.draw(local, bins, sign_u, 10, height, width)
        unused = torch.arange(d) >= depth[..., None]
        op = torch.where(unused, IDENTITY, op)
        mag = torch.where(unused, 0.0, mag)
        return {"orig_weight": m0, "weights": weights, "depth": depth, "op": op, "magnitude": mag}

    def mix(self, images: Tensor, params: AugLog) -> Tensor:
        """AugMix images (n, 3, H, W) with parameters of those n samples (``draw`` layout): all
        chains of all samples run together, one ``apply_ops`` per depth level."""
        n = images.shape[0]
        k, d = self.mixture_width, self.max_depth
        x = images.repeat(k, 1, 1, 1)  # chain-major: row c·n + s = chain c of sample s
        op = params["op"].permute(1, 0, 2).reshape(k * n, d)
        mag = params["magnitude"].permute(1, 0, 2).reshape(k * n, d)
        for j in range(d):
            x = apply_ops(x, op[:, j], mag[:, j], self.interpolation, inplace=True)
        chains = x.view(k, *images.shape)
        dev, dt = images.device, images.dtype
        out = images * params["orig_weight"].to(device=dev, dtype=dt).view(n, 1, 1, 1)
        w = params["weights"].to(device=dev, dtype=dt)
        for c in range(k):
            out = out + w[:, c].view(n, 1, 1, 1) * chains[c]
        return out

    def _view(
        self, images: Tensor, mask: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, AugLog]:
        b, _, h, w = images.shape
        params = self.draw(b, h, w, generator)

        def fn(x: Tensor, idx: Tensor) -> Tensor:
            return self.mix(x, {key: v[idx] for key, v in params.items()})

        out = apply_masked(images, mask, fn)
        m = mask.view(b, *([1] * (params["op"].ndim - 1)))
        log = {
            "orig_weight": torch.where(mask, params["orig_weight"], 1.0).float(),
            "weights": torch.where(mask[:, None], params["weights"], 0.0).float(),
            "depth": torch.where(mask[:, None], params["depth"], 0),
            "op": torch.where(m, params["op"], IDENTITY).flatten(1),
            "magnitude": torch.where(m, params["magnitude"], 0.0).float().flatten(1),
        }
        return out, log

    def apply(
        self, images: Tensor, targets: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, AugLog]:
        if self.jsd:
            raise RuntimeError(
                "augmix with jsd=true makes two consistency views: the trainer must call "
                "views() and add jsd_consistency_loss (see AugMix.views)"
            )
        check_rgb(self.name, images)
        mask = self.draw_apply_mask(images.shape[0], generator)
        out, log = self._view(images, mask, generator)
        return out, targets, {**log, "applied": mask}

    def views(
        self, images: Tensor, targets: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, list[Tensor], AugLog]:
        """The inputs of JSD consistency training: ``(clean, targets, [aug1, aug2], log)``.

        ``clean`` is ``images`` itself and ``targets`` are unchanged; ``aug1`` and ``aug2`` are two
        independent AugMix views. Generator draws, in this order: the apply mask (``p``; shared —
        a sample not applied has aug1 = aug2 = clean), then every parameter of view 1
        (``draw``), then of view 2. Log: ``applied`` and ``view1.<key>``, ``view2.<key>`` as in
        the single-view log. The trainer then (authors' ``cifar.py``): logits = model(cat(clean,
        aug1, aug2)) in ONE forward (batch-norm statistics over all three), split in three,
        loss = CE(logits_clean, targets) + jsd_consistency_loss(logits_clean, logits_aug1,
        logits_aug2).
        """
        check_rgb(self.name, images)
        mask = self.draw_apply_mask(images.shape[0], generator)
        v1, log1 = self._view(images, mask, generator)
        v2, log2 = self._view(images, mask, generator)
        log = {
            "applied": mask,
            **{f"view1.{k}": v for k, v in log1.items()},
            **{f"view2.{k}": v for k, v in log2.items()},
        }
        return images, targets, [v1, v2], log
