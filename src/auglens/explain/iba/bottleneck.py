"""The bottleneck maths of the reference (BioroboticsLab/IBA): smoothing, the noise mix λ and
the per-location KL capacity."""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from ...utils import gaussian_taps

#: format version written into the safetensors metadata of an `Estimator`



def gaussian_kernel_size(sigma: float) -> int:
    """The reference's odd kernel size for smoothing σ: ``int(round(2σ))·2 + 1`` (5 for σ = 1)."""
    return int(round(2 * sigma)) * 2 + 1


def gaussian_kernel(sigma: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """2-D Gaussian (k, k), k = `gaussian_kernel_size`, normalised to sum 1 (as the reference's
    ``_SpatialGaussianKernel``)."""
    g = gaussian_taps(sigma, (gaussian_kernel_size(sigma) - 1) // 2)
    return torch.outer(g, g).to(dtype)  # exp(-(x²+y²)/2σ²) factorises; sums to 1


def _reflect_index(i: int, n: int) -> int:
    """Index of position ``i`` (may lie outside [0, n)) after reflection without repeating the
    edge (torch's / numpy's "reflect"), repeated as often as needed; 0 for n = 1."""
    if n == 1:
        return 0
    period = 2 * (n - 1)
    i = i % period
    return i if i < n else period - i


def smoothing_matrix(n: int, sigma: float, dtype: torch.dtype = torch.float64) -> Tensor:
    """A new (n, n) matrix S with (S v)_i = Σ_j g_j · v[reflect(i + j − p)] for the reference's 1-D
    Gaussian g (length k = `gaussian_kernel_size`, p = (k − 1)/2, normalised to sum 1)."""
    k = gaussian_kernel_size(sigma)
    p = (k - 1) // 2
    g = gaussian_taps(sigma, p).tolist()
    rows = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(k):
            rows[i][_reflect_index(i + j - p, n)] += g[j]
    return torch.tensor(rows, dtype=torch.float64).to(dtype)


@functools.lru_cache(maxsize=64)
def _smoothing_matrix_cached(n: int, sigma: float) -> Tensor:
    return smoothing_matrix(n, sigma)


def smooth(t: Tensor, sigma: float) -> Tensor:
    """Per-channel Gaussian smoothing of (B, C, h, w) with reflection padding: the reference's
    2-D kernel (`gaussian_kernel`, reflection-padded depthwise convolution) applied as the two
    1-D passes it factorises into, S_h · t · S_wᵀ (`smoothing_matrix`; equal up to float
    rounding, and defined for maps smaller than the kernel). σ ≤ 0 returns ``t``."""
    if sigma <= 0:
        return t
    sh = _smoothing_matrix_cached(t.shape[-2], float(sigma)).to(t.device, t.dtype)
    sw = _smoothing_matrix_cached(t.shape[-1], float(sigma)).to(t.device, t.dtype)
    return sh @ t @ sw.T


def capacity_nats(r_norm: Tensor, lam: Tensor, one_minus_lam: Tensor | None = None) -> Tensor:
    """Element-wise KL(N(λ·r, (1 − λ)²) ‖ N(0, 1)) in nats for normalised activations r:
    −½·(1 + log(1 − λ)² − (λr)² − (1 − λ)²). ``one_minus_lam`` (default 1 − λ) may be given
    more accurately than by the subtraction."""
    om = 1 - lam if one_minus_lam is None else one_minus_lam
    mu = r_norm * lam
    var = om * om
    return -0.5 * (1 + 2 * torch.log(om) - mu * mu - var)


def bottleneck_lambda(alpha: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
    """(λ, 1 − λ), both (B, C, h, w): smooth(sigmoid(α)) and smooth(sigmoid(−α))."""
    b = alpha.shape[0]
    both = smooth(torch.cat([torch.sigmoid(alpha), torch.sigmoid(-alpha)]), sigma)
    return both[:b], both[b:]


