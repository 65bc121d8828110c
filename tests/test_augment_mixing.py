"""Mixed-sample augmentations (Cutout, Mixup, CutMix, SaliencyMix): known answers, replayed
random draws, a numpy reference for the spectral-residual saliency, contract and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from auglens.augment import (
    AUGMENTATIONS,
    Augmentation,
    Compose,
    build_augmentation,
    spectral_residual_saliency,
)
from auglens.augment.mixing import cutmix_boxes, saliency_peaks, sample_beta
from auglens.augment.reference import reference_transform
from auglens.errors import ConfigError

MIXING = ["cutout", "mixup", "cutmix", "saliencymix"]
LABEL_MIXING = ["mixup", "cutmix", "saliencymix"]
MEAN = (0.49, 0.48, 0.45)
STD = (0.25, 0.24, 0.26)
K = 5


def batch(b: int = 12, h: int = 16, w: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 3, h, w, generator=g)
    targets = torch.nn.functional.one_hot(torch.arange(b) % K, K).float()
    return images, targets


def make(name: str, **params) -> Augmentation:
    aug = build_augmentation([{"name": name, **params}])
    aug.set_dataset_stats(MEAN, STD)
    return aug


def run(aug: Augmentation, images, targets, seed: int = 0):
    return aug(images, targets, torch.Generator().manual_seed(seed))


def region_of(box: torch.Tensor, h: int, w: int) -> torch.Tensor:
    x1, y1, x2, y2 = (int(v) for v in box)
    r = torch.zeros(h, w, dtype=torch.bool)
    r[y1:y2, x1:x2] = True
    return r


def saliency_numpy(img: np.ndarray, sigma: float = 2.5, floor: float = 1e-2) -> np.ndarray:
    """Slow per-image spectral residual (Hou & Zhang's MATLAB code) with numpy/scipy."""
    r, g, b = img.astype(np.float64)
    gray = 0.2989 * r + 0.587 * g + 0.114 * b
    f = np.fft.fft2(gray)
    eps = max(floor * math.sqrt(gray.size) * gray.std(), 1e-12)
    log_amp = np.log(np.maximum(np.abs(f), eps))
    residual = log_amp - ndimage.uniform_filter(log_amp, size=3, mode="nearest")
    sal = np.abs(np.fft.ifft2(np.exp(residual + 1j * np.angle(f)))) ** 2
    if sigma > 0:
        sal = ndimage.gaussian_filter(sal, sigma, mode="constant", truncate=4.0)
    return sal


def square_image(h: int, w: int, y0: int, x0: int, s: int, bg: float, fg: float):
    img = torch.full((3, h, w), bg)
    img[:, y0 : y0 + s, x0 : x0 + s] = fg
    return img


# ---------------------------------------------------------------- registry, contract


def test_registered_with_documented_defaults():
    assert set(MIXING) <= set(AUGMENTATIONS.names())
    params = {n: AUGMENTATIONS.describe(n)["params"] for n in MIXING}
    assert params["cutout"] == {"size_frac": 0.5, "fill": "mean", "label_mixing": False, "p": 1.0}
    assert params["mixup"] == {"alpha": 1.0, "label_mixing": True, "p": 1.0}
    assert params["cutmix"] == {"alpha": 1.0, "label_mixing": True, "p": 1.0}
    assert params["saliencymix"] == {
        "alpha": 1.0,
        "label_mixing": True,
        "saliency_sigma": 2.5,
        "p": 1.0,
    }
    assert all(AUGMENTATIONS.describe(n)["doc"] for n in MIXING)


@pytest.mark.parametrize("name", MIXING)
def test_contract_logs_and_no_inplace(name):
    images, targets = batch()
    before = images.clone()
    out, t, log = run(make(name), images, targets)
    assert out.shape == images.shape and out.dtype == images.dtype and t.shape == targets.shape
    assert torch.equal(images, before)
    assert out.min() >= 0 and out.max() <= 1
    assert set(log) == {"lam", "box", "partner", "applied"}
    assert log["lam"].dtype == torch.float32 and log["box"].shape == (12, 4)
    assert log["box"].dtype == log["partner"].dtype == torch.int64
    assert log["applied"].dtype == torch.bool and log["applied"].all()
    for v in log.values():
        assert v.shape[0] == 12 and v.device.type == "cpu"
    torch.testing.assert_close(t.sum(1), torch.ones(12))


@pytest.mark.parametrize("name", MIXING)
def test_p0_identity_and_unapplied_bit_identical(name):
    images, targets = batch(b=16)
    out, t, log = run(make(name, p=0.0), images, targets)
    assert torch.equal(out, images) and torch.equal(t, targets) and not log["applied"].any()
    assert (log["lam"] == 1).all() and (log["box"] == 0).all()
    assert torch.equal(log["partner"], torch.arange(16))
    out, t, log = run(make(name, p=0.5), images, targets, seed=3)
    a = log["applied"]
    assert 0 < a.sum() < 16
    assert torch.equal(out[~a], images[~a]) and torch.equal(t[~a], targets[~a])
    assert (log["lam"][~a] == 1).all() and (log["box"][~a] == 0).all()
    assert torch.equal(log["partner"][~a], torch.arange(16)[~a])
    assert not torch.equal(out[a], images[a])


@pytest.mark.parametrize("name", MIXING)
def test_deterministic_given_seed_and_global_rng_untouched(name):
    images, targets = batch()
    aug = make(name)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = run(aug, images, targets, seed=7)
    b = run(aug, images, targets, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert all(torch.equal(a[2][k], b[2][k]) for k in a[2])
    c = run(aug, images, targets, seed=8)
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize("name", MIXING)
def test_works_in_compose_and_stats_are_forwarded(name):
    images, targets = batch()
    comp = build_augmentation([{"name": "random_crop"}, {"name": name}])
    assert isinstance(comp, Compose)
    comp.set_dataset_stats(MEAN, STD)
    out, t, log = run(comp, images, targets, seed=5)
    g = torch.Generator().manual_seed(5)
    x, y, l1 = make("random_crop")(images, targets, g)
    x, y, l2 = make(name)(x, y, g)
    assert torch.equal(out, x) and torch.equal(t, y)
    assert set(log) == {f"random_crop.{k}" for k in l1} | {f"{name}.{k}" for k in l2}
    assert all(torch.equal(log[f"{name}.{k}"], l2[k]) for k in l2)
    assert comp.mixes_labels == (name != "cutout")


@pytest.mark.parametrize("name", LABEL_MIXING)
def test_without_label_mixing_target_of_larger_share(name):
    images, targets = batch(b=32)
    out_mix, t_mix, log_mix = run(make(name), images, targets, seed=12)
    out, t, log = run(make(name, label_mixing=False), images, targets, seed=12)
    assert torch.equal(out, out_mix) and all(torch.equal(log[k], log_mix[k]) for k in log)
    lam, partner = log["lam"], log["partner"]
    keeper = torch.where(lam >= 0.5, torch.arange(32), partner)
    assert torch.equal(t, targets[keeper])
    assert ((t == 0) | (t == 1)).all()  # one-hot stays one-hot
    assert (lam < 0.5).any() and (lam >= 0.5).any() and (keeper != torch.arange(32)).any()
    expected = lam[:, None] * targets + (1 - lam[:, None]) * targets[partner]
    torch.testing.assert_close(t_mix, expected)


# ---------------------------------------------------------------- cutout


def test_cutout_box_area_fill_and_untouched_rest():
    images, targets = batch(b=32, h=32, w=32)
    aug = make("cutout")  # size_frac 0.5 -> 16 px at 32×32
    out, t, log = run(aug, images, targets, seed=4)
    assert torch.equal(t, targets)
    fill = torch.tensor(MEAN).view(3, 1)
    box = log["box"]
    # Replay the documented draws: apply mask, then centre x, then centre y.
    g = torch.Generator().manual_seed(4)
    torch.rand(32, generator=g)
    cx = torch.randint(0, 32, (32,), generator=g)
    cy = torch.randint(0, 32, (32,), generator=g)
    expected = torch.stack([cx - 8, cy - 8, cx + 8, cy + 8], dim=1).clamp(0, 32)
    assert torch.equal(box, expected)
    for i in range(32):
        region = region_of(box[i], 32, 32)
        assert torch.equal(out[i][:, region], fill.expand(3, int(region.sum())))
        assert torch.equal(out[i][:, ~region], images[i][:, ~region])
        assert math.isclose(float(log["lam"][i]), 1 - region.float().mean().item(), abs_tol=1e-6)
    width, height = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    inner = (cx >= 8) & (cx <= 24) & (cy >= 8) & (cy <= 24)
    assert inner.any() and (~inner).any()
    assert (width[inner] == 16).all() and (height[inner] == 16).all()  # full square inside
    clipped = (width < 16) | (height < 16)
    assert torch.equal(clipped, ~inner)  # clipped exactly when the square crosses a border
    touches = (box[:, 0] == 0) | (box[:, 1] == 0) | (box[:, 2] == 32) | (box[:, 3] == 32)
    assert touches[clipped].all()
    assert box.unique(dim=0).shape[0] >= 28  # boxes differ across the batch
    assert torch.equal(log["partner"], torch.arange(32))


def test_cutout_sizes_and_explicit_fill():
    images, targets = batch(b=64, h=20, w=30)
    out, _, log = run(make("cutout", size_frac=0.25, fill=[0.0, 0.5, 1.0]), images, targets)
    box = log["box"]
    side = 5  # floor(0.25 * min(20, 30)); odd side: [c - 2, c + 3)
    width, height = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    assert width.max() == side and height.max() == side and (width * height).min() < side**2
    assert (box[:, 2] <= 30).all() and (box[:, 3] <= 20).all()
    for i in range(64):
        region = region_of(box[i], 20, 30)
        expected = torch.tensor([0.0, 0.5, 1.0])[:, None].expand(3, int(region.sum()))
        assert torch.equal(out[i][:, region], expected)
        assert torch.equal(out[i][:, ~region], images[i][:, ~region])
    out, _, log = run(make("cutout", size_frac=0.0), images, targets)
    assert torch.equal(out, images) and (log["lam"] == 1).all()
    out, _, log = run(make("cutout", size_frac=1.0), images, targets)
    assert (log["lam"] < 1).all()


def test_cutout_label_mixing_flag_changes_nothing():
    images, targets = batch(b=8)
    a = run(make("cutout", label_mixing=True), images, targets, seed=2)
    b = run(make("cutout", label_mixing=False), images, targets, seed=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], targets) and torch.equal(b[1], targets)


def test_cutout_mean_fill_needs_dataset_stats():
    images, targets = batch(b=4)
    aug = build_augmentation([{"name": "cutout"}])
    with pytest.raises(RuntimeError, match="set_dataset_stats"):
        run(aug, images, targets)
    with pytest.raises(ValueError, match="three numbers"):
        aug.set_dataset_stats((0.5, 0.5), STD)
    with pytest.raises(ValueError, match="three numbers"):
        aug.set_dataset_stats((0.5, 0.5, 1.5), STD)
    aug.set_dataset_stats([0.1, 0.2, 0.3], STD)
    out, _, log = run(aug, images, targets)
    region = region_of(log["box"][0], 16, 16)
    assert torch.equal(out[0][:, region][:, 0], torch.tensor([0.1, 0.2, 0.3]))
    # Other augmentations accept the hook and ignore it.
    make("affine").set_dataset_stats(MEAN, STD)


# ---------------------------------------------------------------- mixup


def test_mixup_convex_combination_and_targets():
    images, targets = batch(b=32)
    out, t, log = run(make("mixup"), images, targets, seed=9)
    lam, partner = log["lam"], log["partner"]
    assert sorted(partner.tolist()) == list(range(32))  # a permutation
    assert lam.unique().numel() == 32 and (lam > 0).all() and (lam < 1).all()
    lam4 = lam.view(32, 1, 1, 1)
    torch.testing.assert_close(out, lam4 * images + (1 - lam4) * images[partner], atol=1e-6, rtol=0)
    assert (log["box"] == 0).all()
    self_paired = partner == torch.arange(32)
    assert torch.equal(out[self_paired], images[self_paired])
    expected = lam[:, None] * targets + (1 - lam[:, None]) * targets[partner]
    torch.testing.assert_close(t, expected)
    torch.testing.assert_close(t.sum(1), torch.ones(32))
    # Replay: apply mask, permutation, then λ ~ Beta(α, α) from the same generator.
    g = torch.Generator().manual_seed(9)
    torch.rand(32, generator=g)
    assert torch.equal(partner, torch.randperm(32, generator=g))
    torch.testing.assert_close(lam, sample_beta(32, 1.0, 1.0, g).float())


def test_mixup_alpha_shapes_lambda():
    images, targets = batch(b=512, h=4, w=4)
    _, _, log = run(make("mixup", alpha=0.2), images, targets)
    lam = log["lam"].double()
    assert ((lam < 0.1) | (lam > 0.9)).double().mean() > 0.5  # U-shaped Beta(0.2, 0.2)
    assert abs(lam.var().item() - 0.25 / 1.4) < 0.03  # αβ / ((α+β)²(α+β+1))


# ---------------------------------------------------------------- spectral-residual saliency


def test_spectral_residual_equals_numpy_reference():
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.avg_pool2d(torch.rand(2, 3, 36, 36, generator=g), 5, 1)
    cases = [
        (torch.rand(3, 3, 32, 32, generator=g), 2.5),
        (smooth, 2.5),
        (torch.rand(2, 3, 24, 40, generator=g), 1.0),  # non-square
        (torch.rand(2, 3, 16, 16, generator=g), 0.0),  # no smoothing
        (square_image(32, 32, 5, 20, 6, 0.3, 0.9)[None], 2.5),  # exact spectral zeros
    ]
    for images, sigma in cases:
        ours = spectral_residual_saliency(images, sigma=sigma)
        assert ours.dtype == torch.float64 and ours.shape == (images.shape[0], *images.shape[2:])
        assert torch.isfinite(ours).all()
        for i in range(images.shape[0]):
            ref = saliency_numpy(images[i].numpy(), sigma)
            np.testing.assert_allclose(ours[i].numpy(), ref, rtol=1e-9, atol=1e-12 * ref.max())
    flat = torch.full((1, 3, 8, 8), 0.4)
    assert torch.isfinite(spectral_residual_saliency(flat)).all()


def test_saliency_peak_on_a_bright_square():
    cases = [
        (32, 32, y0, x0, s)
        for s in (3, 4, 6, 8)
        for y0, x0 in ((0, 0), (5, 20), (13, 9), (32 - s, 32 - s), (24, 2))
    ] + [(48, 40, 10, 25, 7), (48, 40, 40, 0, 8)]
    for fg, bg in ((0.9, 0.3), (0.1, 0.8)):  # bright on dark, dark on bright
        for size in ((32, 32), (48, 40)):
            group = [c for c in cases if c[:2] == size]
            imgs = torch.stack([square_image(*c, bg, fg) for c in group])
            px, py = saliency_peaks(spectral_residual_saliency(imgs))
            for (_, _, y0, x0, s), x, y in zip(group, px.tolist(), py.tolist(), strict=True):
                assert x0 - 1 <= x <= x0 + s and y0 - 1 <= y <= y0 + s, (size, y0, x0, s, x, y)


def test_saliency_peaks_first_maximum_row_major():
    sal = torch.zeros(2, 4, 5, dtype=torch.float64)
    sal[0, 2, 3] = sal[0, 1, 4] = 1.0  # tie: row 1 comes first
    sal[1, 3, 0] = 2.0
    px, py = saliency_peaks(sal)
    assert px.tolist() == [4, 0] and py.tolist() == [1, 3]


# ---------------------------------------------------------------- saliencymix


def test_saliencymix_box_on_source_peak_exact_lambda_and_paste():
    b, h, w = 24, 16, 16
    images, targets = batch(b=b, h=h, w=w, seed=1)
    out, t, log = run(make("saliencymix"), images, targets, seed=6)
    lam, box, partner = log["lam"], log["box"], log["partner"]
    # Replay: apply mask, permutation, raw λ; the box centre is the source's saliency peak.
    g = torch.Generator().manual_seed(6)
    torch.rand(b, generator=g)
    assert torch.equal(partner, torch.randperm(b, generator=g))
    lam_raw = sample_beta(b, 1.0, 1.0, g)
    for i in range(b):
        j = int(partner[i])
        sal = saliency_numpy(images[j].numpy())  # independent numpy saliency of the source
        py, px = np.unravel_index(np.argmax(sal), sal.shape)
        cut_w = math.floor(w * math.sqrt(1 - float(lam_raw[i])))
        cut_h = math.floor(h * math.sqrt(1 - float(lam_raw[i])))
        expected = [
            max(px - cut_w // 2, 0),
            max(py - cut_h // 2, 0),
            min(px + cut_w // 2, w),
            min(py + cut_h // 2, h),
        ]
        assert box[i].tolist() == expected, i
        region = region_of(box[i], h, w)
        assert math.isclose(float(lam[i]), 1 - region.float().mean().item(), abs_tol=1e-6)
        assert torch.equal(out[i][:, region], images[j][:, region])  # same location in source
        assert torch.equal(out[i][:, ~region], images[i][:, ~region])
        if j != i and region.any():
            kept = (out[i] == images[i]).all(0)  # random images: equal only where not pasted
            assert torch.equal(kept, ~region)
        torch.testing.assert_close(t[i], lam[i] * targets[i] + (1 - lam[i]) * targets[j])
    assert box.unique(dim=0).shape[0] > 12
    # Boxes agree with cutmix_boxes at the batched peaks.
    px, py = saliency_peaks(spectral_residual_saliency(images[partner]))
    boxes, lam_exact = cutmix_boxes(lam_raw, px, py, h, w)
    assert torch.equal(box, boxes)
    torch.testing.assert_close(lam, lam_exact.float())


def test_saliencymix_centres_box_on_salient_object():
    # Sources are flat with one bright square: every box must cover (part of) the square.
    b = 8
    squares = [(2 + 3 * i, 20 - 2 * i) for i in range(b)]
    images = torch.stack([square_image(32, 32, y0, x0, 4, 0.2, 0.9) for y0, x0 in squares])
    targets = torch.nn.functional.one_hot(torch.arange(b) % K, K).float()
    out, _, log = run(make("saliencymix"), images, targets, seed=1)
    for i in range(b):
        j = int(log["partner"][i])
        x1, y1, x2, y2 = log["box"][i].tolist()
        y0, x0 = squares[j]
        if x2 > x1 and y2 > y1:
            assert x1 < x0 + 4 and x0 < x2 and y1 < y0 + 4 and y0 < y2, i


# ---------------------------------------------------------------- errors, reference


@pytest.mark.parametrize(
    "item, field",
    [
        ({"name": "cutout", "size_frac": 1.5}, "size_frac"),
        ({"name": "cutout", "size_frac": "half"}, "size_frac"),
        ({"name": "cutout", "fill": "zero"}, "fill"),
        ({"name": "cutout", "fill": [0.0, 0.0, 2.0]}, "fill"),
        ({"name": "cutout", "fill": [0.0, 0.0]}, "fill"),
        ({"name": "cutout", "label_mixing": "no"}, "label_mixing"),
        ({"name": "mixup", "alpha": 0}, "alpha"),
        ({"name": "mixup", "alpha": -1.0}, "alpha"),
        ({"name": "mixup", "p": 2}, "p"),
        ({"name": "saliencymix", "saliency_sigma": -1}, "saliency_sigma"),
        ({"name": "saliencymix", "label_mixing": 1}, "label_mixing"),
        ({"name": "cutmix", "alpha": float("nan")}, "alpha"),
    ],
)
def test_invalid_param_value_names_field(item, field):
    with pytest.raises(ConfigError) as e:
        build_augmentation([item])
    msg = str(e.value)
    assert f"'{item['name']}'" in msg and f"'{field}'" in msg and "valid parameters" in msg


def test_unknown_param_suggests_valid_one():
    with pytest.raises(ConfigError, match="did you mean 'size_frac'"):
        build_augmentation([{"name": "cutout", "size": 0.5}])


def test_reference_transforms():
    images, targets = batch(b=4, h=32, w=32)
    out, t = reference_transform("mixup")(images, targets)
    assert out.shape == images.shape and torch.allclose(t.sum(1), torch.ones(4))
    for name, params in (("mixup", {"label_mixing": False}), ("cutout", {}), ("saliencymix", {})):
        with pytest.raises(ConfigError):
            reference_transform(name, **params)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", MIXING)
def test_cuda_matches_cpu(name):
    images, targets = batch()
    aug = make(name)
    cpu = run(aug, images, targets, seed=5)
    gpu = run(aug, images.cuda(), targets.cuda(), seed=5)
    assert gpu[0].device.type == "cuda"
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(gpu[1].cpu(), cpu[1])
    assert all(torch.equal(gpu[2][k], cpu[2][k]) for k in cpu[2])
