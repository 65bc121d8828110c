"""The airbench-style network: shapes, the patch-whitening init (vs numpy), determinism."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from auglens.errors import AuglensError
from auglens.explain import explain_images
from auglens.models import MODELS, build_model, get_module, init_from_data, init_whitening
from auglens.models.airbench import Whitening, airbench_lr, airbench_weight_decay

MEAN, STD = (0.45, 0.5, 0.55), (0.2, 0.25, 0.3)


def normalize(x: torch.Tensor) -> torch.Tensor:
    m = torch.tensor(MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def smooth_images(n: int = 12, size: int = 16, seed: int = 0) -> torch.Tensor:
    """uint8 images with correlated neighbouring pixels and channels (non-trivial covariance)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 1, size // 4, size // 4, generator=g)
    x = F.interpolate(base, size=size, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    x = x * torch.tensor([1.0, 0.8, 0.6]).view(1, 3, 1, 1) + 0.15 * torch.rand(
        n, 3, size, size, generator=g
    )
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def numpy_patches(images: torch.Tensor) -> np.ndarray:
    """Every valid 2×2 patch as a (c, row, col)-ordered 12-vector, by explicit loops."""
    x = images.numpy().astype(np.float64) / 255
    x = (x - np.array(MEAN).reshape(1, 3, 1, 1)) / np.array(STD).reshape(1, 3, 1, 1)
    n, _, h, w = x.shape
    rows = []
    for i in range(n):
        for r in range(h - 1):
            for c in range(w - 1):
                rows.append(x[i, :, r : r + 2, c : c + 2].reshape(-1))
    return np.stack(rows)


def test_registered_and_shapes_at_32() -> None:
    assert "airbench" in MODELS.names()
    torch.manual_seed(0)
    model = build_model("airbench", 10, width=0.25).eval()
    assert model.widths == (16, 64, 64)
    assert model.default_target_layer == "block2"
    x = torch.randn(2, 3, 32, 32)
    feats = {}
    for name in ("whiten", "block1", "block2", "block3"):
        get_module(model, name).register_forward_hook(
            lambda m, i, o, name=name: feats.__setitem__(name, o.shape)
        )
    assert model(x).shape == (2, 10)
    assert feats["whiten"] == (2, 24, 32, 32)
    assert feats["block1"] == (2, 16, 16, 16)
    assert feats["block2"] == (2, 64, 8, 8)  # the Grad-CAM layer: 8×8 at 32 px
    assert feats["block3"] == (2, 64, 4, 4)
    full = build_model("airbench", 10)
    assert full.widths == (64, 256, 256)
    exp = explain_images(model, torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8),
                         normalize)
    assert exp.maps.shape == (3, 8, 8)


def test_bad_parameters() -> None:
    with pytest.raises(AuglensError, match="width"):
        build_model("airbench", 10, width=0)
    with pytest.raises(AuglensError, match="valid parameters"):
        build_model("airbench", 10, depth=3)
    with pytest.raises(AuglensError, match="no whitening layer"):
        init_whitening(build_model("small_resnet", 10), smooth_images(), normalize)
    assert init_from_data(build_model("small_resnet", 10), smooth_images(), normalize) is False


def test_whitening_matches_numpy_eigendecomposition() -> None:
    images = smooth_images()
    torch.manual_seed(0)
    model = build_model("airbench", 10, width=0.25)
    layer = model.whiten
    assert not layer.fitted and not layer.weight.requires_grad
    lam = init_whitening(model, images, normalize)
    assert layer.fitted

    p = numpy_patches(images)
    mu = p.mean(0)
    cov = (p - mu).T @ (p - mu) / len(p)
    lam_np = np.linalg.eigh(cov)[0][::-1]
    np.testing.assert_allclose(lam.numpy(), lam_np, rtol=1e-8, atol=1e-12)

    w = layer.weight.detach().double().view(24, 12).numpy()
    b = layer.bias.detach().double().numpy()
    np.testing.assert_array_equal(w[12:], -w[:12])
    np.testing.assert_array_equal(b[12:], -b[:12])
    # sign-free check of the filters: Σ_k w_k w_kᵀ = (C + eps I)^-1
    np.testing.assert_allclose(w[:12].T @ w[:12], np.linalg.inv(cov + layer.eps * np.eye(12)),
                               rtol=1e-4, atol=1e-4)
    # whitened fitted patches: mean 0, covariance diag(λ/(λ+eps)) ≈ I
    z = p @ w[:12].T + b[:12]
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)
    zcov = z.T @ z / len(z)
    np.testing.assert_allclose(zcov, np.diag(lam_np / (lam_np + layer.eps)), atol=1e-4)
    assert np.abs(zcov - np.eye(12)).max() < 0.1  # ≈ identity (eps shrinks the tiniest λ)

    # the layer itself computes those patches (positions away from the padded edge)
    x = normalize(images.double() / 255).float()
    out = layer(x).detach()[:, :12, :-1, :-1].permute(0, 2, 3, 1).reshape(-1, 12).double().numpy()
    np.testing.assert_allclose(out, z, rtol=1e-3, atol=1e-3)


def test_whitening_deterministic_and_input_forms() -> None:
    images = smooth_images(seed=3)

    def fitted(imgs, **kw):
        torch.manual_seed(1)
        m = build_model("airbench", 10, width=0.25)
        init_whitening(m, imgs, normalize, **kw)
        return m

    a, b = fitted(images), fitted(images)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    c = fitted(images.float() / 255)  # float in [0, 1]: the same fit up to float32 input rounding
    torch.testing.assert_close(c.whiten.weight, a.whiten.weight, rtol=1e-5, atol=1e-5)
    # the largest entry of each eigenvector is positive (platform-independent signs)
    w = a.whiten.weight.view(24, 12)[:12]
    assert (w.gather(1, w.abs().argmax(1, keepdim=True)) > 0).all()
    d = fitted(images, max_images=5)  # only the first 5 images are used
    e = fitted(images[:5])
    assert torch.equal(d.whiten.weight, e.whiten.weight)
    x = torch.randn(4, 3, 32, 32)
    a.eval(), b.eval()
    assert torch.equal(a(x), b(x))


def test_whitening_stays_frozen_in_training() -> None:
    images = smooth_images(n=8, size=32)
    torch.manual_seed(0)
    model = build_model("airbench", 10, width=0.25)
    init_from_data(model, images, normalize)
    before = model.whiten.weight.clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.85, nesterov=True,
                          weight_decay=5e-3)
    x = normalize(images.float() / 255)
    loss = F.cross_entropy(model(x), torch.arange(8))
    loss.backward()
    opt.step()
    assert torch.equal(model.whiten.weight, before)
    assert model.whiten.bias.grad is not None  # the bias trains (as in airbench)
    assert isinstance(model.whiten, Whitening)


def test_recipe_helpers() -> None:
    assert airbench_lr(1024) == pytest.approx(11.5 / (1024 * (1 + 1 / 0.15)) * 1024)
    lr = airbench_lr(512)
    # decay per step = lr · wd = airbench's 0.0153 · B / kilostep_scale
    assert lr * airbench_weight_decay(512, lr) == pytest.approx(0.0153 * 512 / (1024 / 0.15 + 1024))
