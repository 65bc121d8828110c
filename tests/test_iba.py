"""IBA explainer: a plain transcription of the reference's ``analyze``, batching, estimator,
capacity formula, units, model state, a sanity check on where the bits go, errors, file I/O."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import random_model
from torch import Tensor, nn

from auglens.errors import AuglensError
from auglens.explain import EXPLAINERS, Estimator, IBAEstimator, explain_images, fit_estimator
from auglens.explain.iba import (
    capacity_nats,
    gaussian_kernel,
    gaussian_kernel_size,
    model_fingerprint,
    smooth,
    split_head,
)
from auglens.models import get_module


def _model(seed: int = 0, **params) -> nn.Module:
    """small_resnet (width 8), random init with non-trivial BN statistics, eval mode."""
    return random_model("small_resnet", 10, seed, width=8, **params)


def _normalize(x: Tensor) -> Tensor:
    return (x - 0.5) / 0.25


def _images(n: int, seed: int = 1, size: int = 32) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def _x(n: int, seed: int = 2) -> Tensor:
    return _normalize(_images(n, seed).float() / 255)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return _model()


@pytest.fixture(scope="module")
def est(model: nn.Module) -> Estimator:
    return fit_estimator(model, _images(48), _normalize, batch_size=16)


def _assert_close(a: Tensor, b: Tensor, rel: float = 1e-4) -> None:
    assert a.shape == b.shape
    scale = b.abs().max().item()
    assert scale > 0
    err = (a - b).abs().max().item()
    assert err <= rel * scale, f"max abs diff {err:.3g} vs scale {scale:.3g}"


def _acts(model: nn.Module, layer: str, x: Tensor) -> Tensor:
    out = {}
    h = get_module(model, layer).register_forward_hook(lambda m, i, o: out.update(a=o.clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        h.remove()
    return out["a"]


# -------------------------------------------------------- reference transcription (one image)


def _reference_iba(model, layer, est, x1, target, seed=0, steps=10, beta=10.0, n=10):
    """``IBA.analyze`` of BioroboticsLab/IBA for one image, transcribed plainly: the input
    expanded to n copies, the layer's output replaced by Z in a full forward each step,
    ``_SpatialGaussianKernel`` (2-D kernel, reflection pad, depthwise conv) on λ, 1 − λ by
    subtraction, loss = mean CE + β·mean capacity, ``loss.backward()``, saliency = capacity of
    the last step summed over channels / ln 2. Noise: the same generator draws as auglens."""
    mean = est.mean
    std = torch.max(est.std, 0.01 * torch.ones_like(est.std))
    active = (est.nonzero.float() / est.n_samples > 0.01).float()
    c = mean.shape[0]
    ks = int(round(2 * 1.0)) * 2 + 1
    xs = torch.arange(ks, dtype=torch.float).repeat(ks).view(ks, ks)
    xy = torch.stack([xs, xs.t()], dim=-1)
    k2 = torch.exp(-torch.sum((xy - (ks - 1) / 2.0) ** 2.0, dim=-1) / 2.0) / (2 * math.pi)
    k2 = (k2 / k2.sum()).expand(c, 1, -1, -1)
    alpha = nn.Parameter(torch.full(mean.shape, 5.0))
    opt = torch.optim.Adam(lr=1.0, params=[alpha])
    gen = torch.Generator().manual_seed(seed)
    batch = x1.expand(n, -1, -1, -1)
    buf = {}

    def hook(mod, inp, x):
        lamb = torch.sigmoid(alpha).expand(x.shape[0], x.shape[1], -1, -1)
        lamb = F.conv2d(F.pad(lamb, (ks // 2,) * 4, mode="reflect"), k2, groups=c)
        r_norm = (x - mean) / std
        var_z = (1 - lamb) ** 2
        mu_z = r_norm * lamb
        buf["cap"] = -0.5 * (1 + torch.log(var_z) - mu_z**2 - var_z) * active
        eps = torch.randn((n, *mean.shape), generator=gen)
        z = lamb * x + (1 - lamb) * (std * eps + mean)
        return z * active

    h = get_module(model, layer).register_forward_hook(hook)
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for _ in range(steps):
            opt.zero_grad()
            model_loss = -torch.log_softmax(model(batch), 1)[:, target].mean()
            loss = model_loss + beta * buf["cap"].mean(0).mean()
            loss.backward()
            opt.step()
    finally:
        h.remove()
        for p in model.parameters():
            p.requires_grad_(True)
    return buf["cap"].mean(0).sum(0) / math.log(2)


def test_equals_reference_transcription(model, est):
    x = _x(2)
    exp = EXPLAINERS.get("iba")(model, estimator=est)(x)  # image 1 explained in a batch
    ref = _reference_iba(model, "layer3", est, x[1:2], int(exp.targets[1]))
    _assert_close(exp.maps[1], ref, 1e-4)


# ------------------------------------------------------------------------------ batching


@pytest.mark.parametrize("head_only", [True, False])
def test_batch_equals_one_image_at_a_time(model, est, head_only):
    n = 3 if head_only else 2
    x = _x(n)
    iba = EXPLAINERS.get("iba")(model, estimator=est, head_only=head_only)
    batch = iba(x)
    assert iba.last_mode == ("head" if head_only else "full")
    for i in range(n):
        one = iba(x[i : i + 1])
        _assert_close(batch.maps[i], one.maps[0], 1e-4)
        assert int(one.targets[0]) == int(batch.targets[i])


def test_head_split_and_full_forward_agree(model, est):
    x = _x(2)
    a = EXPLAINERS.get("iba")(model, estimator=est)(x)
    b = EXPLAINERS.get("iba")(model, estimator=est, head_only=False)(x)
    _assert_close(a.maps, b.maps, 1e-5)
    assert torch.equal(a.logits, b.logits)


def test_ground_truth_maps_equal_separate_call(model, est):
    x = _x(2)
    gt = torch.tensor([1, 3])
    iba = EXPLAINERS.get("iba")(model, estimator=est)
    both = iba(x, also_ground_truth=gt)
    alone = iba(x)
    sep = iba(x, target=gt)
    _assert_close(both.maps, alone.maps, 1e-4)
    _assert_close(both.maps_gt, sep.maps, 1e-4)
    assert torch.equal(both.targets_gt, gt)


def test_logits_are_clean_forward_and_targets_argmax(model, est):
    x = _x(3)
    exp = EXPLAINERS.get("iba")(model, estimator=est)(x)
    with torch.no_grad():
        ref = model(x)
    _assert_close(exp.logits, ref, 1e-5)
    assert torch.equal(exp.targets, exp.logits.argmax(1))


def test_explain_images_independent_of_batch_size(model, est):
    imgs = _images(4, seed=5)
    params = {"estimator": est}
    a = explain_images(model, imgs, _normalize, "iba", batch_size=4, method_params=params)
    b = explain_images(model, imgs, _normalize, "iba", batch_size=3, method_params=params)
    assert a.method == "iba" and a.layer == "layer3"
    _assert_close(a.maps, b.maps, 1e-4)


def test_seed_none_draws_fresh_noise(model, est):
    x = _x(2)
    a = EXPLAINERS.get("iba")(model, estimator=est, seed=None, steps=2)(x).maps
    b = EXPLAINERS.get("iba")(model, estimator=est, seed=None, steps=2)(x).maps
    assert not torch.equal(a, b) and bool((a >= 0).all())


# ----------------------------------------------------------------------------- estimator


def test_estimator_equals_torch_mean_std_over_stacked_activations(model):
    imgs = _images(12, seed=3)
    est = fit_estimator(model, imgs, _normalize, batch_size=7)  # uneven batches
    acts = torch.cat([_acts(model, "layer3", _normalize(im[None].float() / 255)) for im in imgs])
    assert est.n_samples == 12 and est.layer == "layer3"
    _assert_close(est.mean, acts.mean(0), 1e-5)
    _assert_close(est.std, acts.std(0), 1e-5)  # unbiased (n - 1), as torch.std
    assert torch.equal(est.nonzero, (acts != 0).sum(0))
    assert not any(t.is_inference() for t in (est.mean, est.std, est.nonzero))
    assert est.model_fingerprint == model_fingerprint(model)
    # min std: σ = max(std, 0.01), so ReLU units that never fire get σ = 0.01
    assert bool((est.std == 0).any())
    assert torch.equal(est.clamped_std(0.01), torch.clamp(est.std, min=0.01))
    assert est.clamped_std(0.01).min().item() == pytest.approx(0.01)
    half = fit_estimator(model, imgs, _normalize, n_images=5)
    _assert_close(half.mean, acts[:5].mean(0), 1e-5)


def test_running_estimator_merges_batches_exactly():
    g = torch.Generator().manual_seed(0)
    a = 100 + 3 * torch.randn(50, 2, 3, 3, generator=g, dtype=torch.float64)
    run = IBAEstimator("l")
    for chunk in a.split([1, 13, 2, 34]):
        run.update(chunk)
    e = run.compute()
    assert torch.allclose(e.mean.double(), a.mean(0), rtol=1e-6)
    assert torch.allclose(e.std.double(), a.std(0), rtol=1e-5)
    with pytest.raises(AuglensError, match="at least 2"):
        IBAEstimator().compute()


def test_estimator_save_load_round_trip(tmp_path, est):
    path = est.save(tmp_path / "est" / "layer3.safetensors", metadata={"weights": "abc"})
    back = Estimator.load(path)
    assert torch.equal(back.mean, est.mean) and torch.equal(back.std, est.std)
    assert torch.equal(back.nonzero, est.nonzero)
    assert (back.layer, back.n_samples, back.model_fingerprint) == (
        est.layer,
        est.n_samples,
        est.model_fingerprint,
    )
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["weights"] == "abc"
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a file")
    with pytest.raises(AuglensError, match="corrupt"):
        Estimator.load(bad)
    with pytest.raises(AuglensError, match="not found"):
        Estimator.load(tmp_path / "missing.safetensors")


def test_estimator_path_accepted(tmp_path, model, est):
    path = est.save(tmp_path / "e.safetensors")
    x = _x(1)
    a = EXPLAINERS.get("iba")(model, estimator=path)(x).maps
    b = EXPLAINERS.get("iba")(model, estimator=est)(x).maps
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------ formulas


def test_capacity_equals_per_element_transcription():
    g = torch.Generator().manual_seed(0)
    r = 2 * torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    lam = torch.rand(2, 3, 4, 4, generator=g, dtype=torch.float64) * 0.98 + 0.01
    got = capacity_nats(r, lam)
    got_om = capacity_nats(r, lam, 1 - lam)
    ref = torch.empty_like(r)
    for idx in np.ndindex(*r.shape):
        rv, lv = float(r[idx]), float(lam[idx])
        mu, var = rv * lv, (1 - lv) ** 2
        # KL(N(mu, var) || N(0, 1)) = ½(var + mu² − 1 − log var)
        ref[idx] = 0.5 * (var + mu * mu - 1 - math.log(var))
    assert torch.allclose(got, ref, rtol=1e-12, atol=1e-12)
    assert torch.allclose(got_om, ref, rtol=1e-12, atol=1e-12)
    assert bool((got >= 0).all())


def test_smoothing_equals_reference_kernel_and_padding():
    assert gaussian_kernel_size(1.0) == 5
    g = torch.Generator().manual_seed(0)
    t = torch.rand(2, 3, 8, 7, generator=g, dtype=torch.float64)
    k = gaussian_kernel(1.0, torch.float64)
    ref = F.conv2d(F.pad(t, (2, 2, 2, 2), mode="reflect"), k.expand(3, 1, 5, 5), groups=3)
    assert torch.allclose(smooth(t, 1.0), ref, rtol=1e-12, atol=1e-14)
    # maps smaller than the kernel: repeated reflection (numpy's "reflect")
    for n in (1, 2, 3):
        t = torch.rand(1, 1, n, n, generator=g, dtype=torch.float64)
        padded = torch.from_numpy(np.pad(t[0, 0].numpy(), 2, mode="reflect"))[None, None]
        ref = F.conv2d(padded, k[None, None])
        assert torch.allclose(smooth(t, 1.0), ref, rtol=1e-12, atol=1e-14)
    assert smooth(t, 0.0) is t


def test_maps_are_capacity_in_bits_at_feature_resolution(model, est):
    """With a negligible learning rate α stays at 5: the map must be Σ_c KL / ln 2 for
    λ = sigmoid(5) (smoothing a constant changes nothing)."""
    x = _x(2)
    exp = EXPLAINERS.get("iba")(model, estimator=est, lr=1e-30)(x)
    assert exp.maps.shape == (2, 8, 8) and exp.maps.dtype == torch.float32
    r = _acts(model, "layer3", x).double()
    r_norm = (r - est.mean.double()) / est.clamped_std(0.01).double()
    lam = torch.sigmoid(torch.tensor(5.0, dtype=torch.float64))
    nats = (0.5 * ((1 - lam) ** 2 + (r_norm * lam) ** 2 - 1 - torch.log((1 - lam) ** 2))).mul(
        est.active(0.01).double()
    )
    _assert_close(exp.maps.double(), nats.sum(1) / math.log(2), 1e-5)


def test_maps_non_negative_and_final_alpha_option(model, est):
    x = _x(2)
    last = EXPLAINERS.get("iba")(model, estimator=est)(x)
    final = EXPLAINERS.get("iba")(model, estimator=est, saliency_from="final")(x)
    assert bool((last.maps >= 0).all()) and bool((final.maps >= 0).all())
    assert last.maps.shape == (2, 8, 8)
    # the final Adam step keeps removing information: fewer bits in total
    assert bool((final.maps.sum((1, 2)) < last.maps.sum((1, 2))).all())


# ------------------------------------------------------------------------------ sanity


class _QuadrantNet(nn.Module):
    """Logit 0 = 300 × mean of the top-left quadrant of ``feat``'s output, logit 1 = its
    negative: only that quadrant carries evidence, and noise there flips confident predictions
    (with β = 10 a weak, unconfident head loses less by dropping everything)."""

    default_target_layer = "feat"

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.feat = nn.Conv2d(3, 4, 3, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        f = self.feat(x)
        q = f[:, :, : f.shape[2] // 2, : f.shape[3] // 2].mean((1, 2, 3))
        return torch.stack([300 * q, -300 * q], 1)


def test_bits_concentrate_where_the_evidence_is():
    net = _QuadrantNet().eval()
    est = fit_estimator(net, _images(64, seed=7, size=16), _normalize)
    exp = EXPLAINERS.get("iba")(net, estimator=est)(_x(4, seed=8)[:, :, :16, :16])
    maps = exp.maps  # (4, 8, 8)
    inside = maps[:, :4, :4].mean((1, 2))
    outside = (maps.sum((1, 2)) - maps[:, :4, :4].sum((1, 2))) / 48
    assert bool((inside > 5 * outside).all()), (inside, outside)
    peak = maps.flatten(1).argmax(1)
    assert bool(((peak // 8 < 4) & (peak % 8 < 4)).all())


# ---------------------------------------------------------------------------- model state


def _snapshot(m: nn.Module):
    return (
        [mod.training for mod in m.modules()],
        [p.requires_grad for p in m.parameters()],
        [
            (k, tuple(getattr(mod, k)))
            for mod in m.modules()
            for k in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks")
        ],
        [sorted(mod.__dict__) for mod in m.modules()],
    )


class _Boom(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        raise RuntimeError("head exploded")


def _mixed_state_model() -> nn.Module:
    m = _model().train()
    m.layer1.eval()
    for p in m.stem.parameters():
        p.requires_grad_(False)
    return m


@pytest.mark.parametrize("head_only", [True, False])
def test_state_restored(est, head_only):
    m = _mixed_state_model()
    seen = []
    user_hook = m.layer3.register_forward_hook(lambda *a: seen.append(1))
    before = _snapshot(m)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    exp = EXPLAINERS.get("iba")(m, estimator=est, head_only=head_only, steps=2)(
        _x(2), also_ground_truth=[1, 2]
    )
    assert exp.maps_gt is not None
    assert _snapshot(m) == before
    assert len(seen) >= 1
    assert all(p.grad is None for p in m.parameters())
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in state.items())
    user_hook.remove()
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())


@pytest.mark.parametrize("head_only", [True, False])
@pytest.mark.parametrize("when", ["clean pass", "optimisation"])
def test_state_restored_when_head_raises(est, head_only, when):
    m = _mixed_state_model()
    iba = EXPLAINERS.get("iba")(m, estimator=est, head_only=head_only, steps=2)
    if when == "clean pass":
        m.fc = _Boom()
    else:  # a user hook on fc that fails on the noisy batch (2 images × 10 copies)

        def boom(mod, inp, out):
            if out.shape[0] > 2:
                raise RuntimeError("head exploded")

        m.fc.register_forward_hook(boom)
    before = _snapshot(m)
    with pytest.raises(RuntimeError, match="head exploded"):
        iba(_x(2))
    assert _snapshot(m) == before
    assert m.training and not m.layer1.training
    assert all(p.grad is None for p in m.parameters())
    assert len(m.fc._forward_hooks) == (when == "optimisation")
    m.fc._forward_hooks.clear()
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())


def test_fit_estimator_leaves_state(est):
    m = _mixed_state_model()
    before = _snapshot(m)
    fit_estimator(m, _images(4), _normalize)
    assert _snapshot(m) == before


# ------------------------------------------------------------------- fallbacks and errors


def test_skip_connection_around_layer_uses_full_forward(model):
    layer = "layer3.0.conv2"  # the block's shortcut reads the block input after this layer
    assert split_head(model, layer) is None
    est = fit_estimator(model, _images(16), _normalize, layer=layer)
    iba = EXPLAINERS.get("iba")(model, estimator=est, steps=3)
    exp = iba(_x(2))
    assert iba.last_mode == "full" and exp.layer == layer and exp.maps.shape == (2, 8, 8)
    one = iba(_x(2)[1:])
    _assert_close(exp.maps[1], one.maps[0], 1e-4)


def test_untraceable_model_uses_full_forward():
    m = _model(input_size=32)  # InputResize: shape-dependent control flow, not fx-traceable
    est = fit_estimator(m, _images(16), _normalize)
    iba = EXPLAINERS.get("iba")(m, estimator=est, steps=2)
    exp = iba(_x(2))
    assert iba.last_mode == "full" and bool(torch.isfinite(exp.maps).all())


def test_missing_estimator_is_a_clear_error(model):
    with pytest.raises(AuglensError, match="fit_estimator.*un-augmented training images"):
        EXPLAINERS.get("iba")(model)


def test_estimator_of_another_model_or_layer_is_refused(model, est):
    other = _model(seed=1)
    with pytest.raises(AuglensError, match="different weights"):
        EXPLAINERS.get("iba")(other, estimator=est)
    EXPLAINERS.get("iba")(other, estimator=est, check_estimator=False)  # explicit opt-out
    with pytest.raises(AuglensError, match="fitted on layer 'layer3'"):
        EXPLAINERS.get("iba")(model, "layer2", estimator=est)


def test_image_size_mismatch_is_a_clear_error(model, est):
    with pytest.raises(AuglensError, match="same size"):
        EXPLAINERS.get("iba")(model, estimator=est)(torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize(
    "params, match",
    [
        ({"steps": 0}, "steps"),
        ({"batch_noise": 0}, "batch_noise"),
        ({"lr": 0.0}, "lr"),
        ({"min_std": 0.0}, "min_std"),
        ({"saliency_from": "best"}, "saliency_from"),
    ],
)
def test_bad_parameters(model, est, params, match):
    with pytest.raises(AuglensError, match=match):
        EXPLAINERS.get("iba")(model, estimator=est, **params)


def test_fit_estimator_bad_inputs(model):
    with pytest.raises(AuglensError, match="uint8"):
        fit_estimator(model, torch.rand(2, 3, 32, 32), _normalize)
    with pytest.raises(AuglensError, match="no module"):
        fit_estimator(model, _images(2), _normalize, layer="nope")
