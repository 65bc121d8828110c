"""Vision Transformers: a small ViT for 32×32 inputs (trainable on a CPU) and the token ↔ grid
adapter through which layer-based explainers read transformer layers.

Token layout (this ViT and torchvision's ``VisionTransformer``): a layer outputs (B, N, D) with
N = prefix + h·w; the ``prefix`` leading tokens are not patches (one class token, first), then
the patch tokens in row-major order: token ``prefix + i·w + j`` is patch row i, column j (the
patch-embedding convolution's output flattened, as torchvision's ``_process_input``). A model
declares this layout with a `TokenGrid` in its ``cam_reshape`` attribute; explainers turn a token
layer's output into a feature grid (B, D, h, w) with it (`auglens.explain.base.feature_grid`).

Why the default CAM layer is the first LayerNorm of the last block (``norm1`` here, ``ln_1`` in
torchvision, as pytorch-grad-cam recommends): after the last block only the class token reaches
the logits, so the gradient at the last block's output is zero on every patch token and
Grad-CAM would be all zeros there. The last block's normalised input reaches the class token
through the block's self-attention, so its patch tokens get gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.fx
from torch import Tensor, nn

from ..errors import AuglensError


@dataclass(frozen=True)
class TokenGrid:
    """Adapter between a token layer's output (B, prefix + h·w, D) and a grid (B, D, h, w).

    ``prefix``: number of leading non-patch tokens (1: the class token). The grid is square,
    h = w = √(N − prefix); patch tokens are row-major (see the module docstring).
    """

    prefix: int = 1

    def grid_size(self, n_tokens: int) -> tuple[int, int]:
        """(h, w) of the patch grid of a sequence of ``n_tokens`` tokens (prefix included)."""
        t = n_tokens - self.prefix
        side = math.isqrt(max(t, 0))
        if t < 1 or side * side != t:
            raise AuglensError(
                f"a token layer output with {n_tokens} tokens ({self.prefix} prefix token(s) + "
                f"{t} patches) does not form a square patch grid"
            )
        return side, side

    def to_grid(self, tokens: Tensor) -> Tensor:
        """(B, N, D) → (B, D, h, w): drop the prefix tokens, patch token prefix + i·w + j → [i, j].
        Differentiable (a selection and a permutation)."""
        if tokens.ndim != 3:
            raise AuglensError(f"expected tokens (B, N, D), got {tuple(tokens.shape)}")
        b, n, d = tokens.shape
        h, w = self.grid_size(n)
        return tokens[:, self.prefix :].transpose(1, 2).reshape(b, d, h, w)

    def to_tokens(self, grid: Tensor, tokens: Tensor) -> Tensor:
        """Inverse of `to_grid`: ``tokens`` (B, N, D) with its patch tokens replaced by ``grid``
        (B, D, h, w); the prefix tokens are taken from ``tokens``."""
        b, d, h, w = grid.shape
        if tokens.shape != (b, self.prefix + h * w, d):
            raise AuglensError(
                f"grid {tuple(grid.shape)} does not match tokens {tuple(tokens.shape)}"
            )
        patches = grid.reshape(b, d, h * w).transpose(1, 2)
        return torch.cat([tokens[:, : self.prefix], patches], 1)


def token_grid(model: nn.Module) -> TokenGrid | None:
    """The `TokenGrid` a model declares in ``cam_reshape`` (None for a CNN)."""
    adapter = getattr(model, "cam_reshape", None)
    if adapter is not None and not isinstance(adapter, TokenGrid):
        raise AuglensError(
            f"{type(model).__name__}.cam_reshape must be a TokenGrid, got {type(adapter).__name__}"
        )
    return adapter


class TokenEmbedding(nn.Module):
    """Prepends a learned class token and adds learned position embeddings to patch tokens."""

    def __init__(self, n_patches: int, dim: int) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.empty(1, 1 + n_patches, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Truncated normal, std 0.02 (timm's / BERT's ViT convention)."""
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, patches: Tensor) -> Tensor:
        cls = self.cls_token.expand(patches.shape[0], -1, -1)
        return torch.cat([cls, patches], 1) + self.pos_embed


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)) (GELU, ``mlp_ratio``·D)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm1(x)
        x = x + self.drop(self.attn(y, y, y, need_weights=False)[0])
        return x + self.drop(self.mlp(self.norm2(x)))


def _check_input(x: Tensor, size: int) -> None:
    if x.ndim != 4 or x.shape[-2:] != (size, size):
        raise AuglensError(
            f"small_vit was built for {size}×{size} inputs (image_size={size}), got "
            f"{tuple(x.shape)}; set the model's image_size or input_size"
        )


torch.fx.wrap("_check_input")  # a leaf in torch.fx traces (IBA's head split traces the model)


class ConvStem(nn.Sequential):
    """Convolutional patch embedding (Xiao et al. 2021, "Early Convolutions Help Transformers See
    Better"): log2(patch) 3×3 stride-2 convs (BN, ReLU; channels doubling up to ``width``), then a
    1×1 conv to ``width``. Same token grid as the ``patch``×``patch`` linear patch embedding."""

    def __init__(self, patch: int, width: int) -> None:
        n = patch.bit_length() - 1
        layers: list[nn.Module] = []
        c = 3
        for i in range(n):
            out = max(width >> (n - 1 - i), 8)
            layers += [nn.Conv2d(c, out, 3, 2, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            c = out
        layers.append(nn.Conv2d(c, width, 1))
        super().__init__(*layers)


class SmallViT(nn.Module):
    """ViT for small square inputs: patch embedding → class token + learned position embeddings
    → ``depth`` pre-norm blocks (``heads`` heads, width ``width``) → LayerNorm → linear head on
    the class token. Patch embedding: ``stem="conv"`` (default) a `ConvStem` (``patch`` a power of
    2); ``"patch"`` a ``patch``×``patch`` conv with stride ``patch`` (the original ViT's linear
    patch projection). On the built-in shapes data (10 000 training images, 32×32, AdamW lr 2e-3,
    15 epochs) the conv stem reaches ≈ 0.9 test accuracy, the linear projection 0.54.

    At 32×32 with patch 4: 8×8 = 64 patch tokens + 1 class token. Module names: ``patch_embed``,
    ``tokens``, ``blocks.<i>.{norm1, attn, norm2, mlp}``, ``norm``, ``head``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        image_size: int = 32,
        patch: int = 4,
        width: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        stem: str = "conv",
    ) -> None:
        super().__init__()
        checks = [
            (image_size >= 1 and patch >= 1, f"image_size {image_size}, patch {patch} >= 1"),
            (image_size % patch == 0, f"image_size {image_size} not a multiple of patch {patch}"),
            (depth >= 1, f"depth must be >= 1, got {depth}"),
            (heads >= 1 and width % heads == 0, f"width {width} not a multiple of heads {heads}"),
            (mlp_ratio > 0, f"mlp_ratio must be > 0, got {mlp_ratio}"),
            (stem in ("patch", "conv"), f"stem must be 'patch' or 'conv', got {stem!r}"),
            (stem == "patch" or patch & (patch - 1) == 0, "stem 'conv' needs a power-of-2 patch"),
        ]
        for ok, msg in checks:
            if not ok:
                raise AuglensError(f"small_vit: {msg}")
        self.image_size = image_size
        self.patch = patch
        side = image_size // patch
        self.patch_embed = (
            nn.Conv2d(3, width, patch, patch) if stem == "patch" else ConvStem(patch, width)
        )
        self.tokens = TokenEmbedding(side * side, width)
        self.blocks = nn.Sequential(
            *[Block(width, heads, mlp_ratio, dropout) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, self.image_size)
        p = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, h·w, D), row-major patches
        z = self.norm(self.blocks(self.tokens(p)))
        return self.head(z[:, 0])
