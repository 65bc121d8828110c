"""random_erasing, gridmask, resizemix, fmix, label_smoothing: per-sample slow twins (torchvision
functional ops, literal transcriptions of the authors' code), exact λ, targets, zero strength."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import stats
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from auglens.augment import build_augmentation, label_entropy, smoothing_for_entropy
from auglens.augment.erasing import erasing_boxes, gridmask_keep
from auglens.augment.mixing_more import fmix_freqs, fmix_low_freq, resize_weights
from auglens.errors import ConfigError

MEAN = (0.49, 0.48, 0.45)
STD = (0.25, 0.24, 0.26)
K = 5


def batch(b: int = 16, h: int = 20, w: int = 28, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 3, h, w, generator=g)
    targets = F.one_hot(torch.arange(b) % K, K).float()
    return images, targets


def make(name: str, **params):
    aug = build_augmentation([{"name": name, **params}])
    aug.set_dataset_stats(MEAN, STD)
    return aug


def run(aug, images, targets, seed: int = 0):
    return aug(images, targets, torch.Generator().manual_seed(seed))


def mean_image(h: int, w: int) -> torch.Tensor:
    return torch.tensor(MEAN).view(3, 1, 1).expand(3, h, w)


def check_targets(t, targets, lam, partner, label_mixing: bool) -> None:
    for i in range(len(t)):
        j = int(partner[i])
        if label_mixing:
            expect = lam[i] * targets[i] + (1 - lam[i]) * targets[j]
        else:
            expect = targets[i] if lam[i] >= 0.5 else targets[j]
        torch.testing.assert_close(t[i], expect)


# ---------------------------------------------------------------- random erasing


def test_random_erasing_boxes_follow_torchvision_make_params_literally():
    b, h, w, scale, ratio = 300, 20, 28, (0.3, 0.9), (2.0, 6.0)
    boxes = erasing_boxes(b, h, w, scale, ratio, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)  # replay the same uniforms, in the same order
    u_area = torch.rand(b * 10, generator=g, dtype=torch.float64).view(b, 10)
    u_ratio = torch.rand(b * 10, generator=g, dtype=torch.float64).view(b, 10)
    u_top = torch.rand(b, generator=g, dtype=torch.float64)
    u_left = torch.rand(b, generator=g, dtype=torch.float64)
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    misses = 0
    for i in range(b):  # torchvision RandomErasing.make_params, loop for loop
        for a in range(10):
            erase_area = h * w * (scale[0] + (scale[1] - scale[0]) * float(u_area[i, a]))
            aspect_ratio = math.exp(lo + (hi - lo) * float(u_ratio[i, a]))
            eh = int(round(math.sqrt(erase_area * aspect_ratio)))
            ew = int(round(math.sqrt(erase_area / aspect_ratio)))
            if not (eh < h and ew < w):
                continue
            top = math.floor(float(u_top[i]) * (h - eh + 1))
            left = math.floor(float(u_left[i]) * (w - ew + 1))
            expect = [left, top, left + ew, top + eh]
            break
        else:
            expect, misses = [0, 0, 0, 0], misses + 1
        assert boxes[i].tolist() == expect
    assert 0 < misses < b


def test_random_erasing_box_distribution_matches_torchvision():
    h, w = 24, 32
    ours = erasing_boxes(3000, h, w, (0.02, 0.33), (0.3, 3.3), torch.Generator().manual_seed(0))
    t = v2.RandomErasing(p=1.0)
    torch.manual_seed(0)
    ref = [t.make_params([torch.zeros(3, h, w)]) for _ in range(3000)]
    for f_ours, f_ref in [
        ((ours[:, 2] - ours[:, 0]) * (ours[:, 3] - ours[:, 1]), [r["h"] * r["w"] for r in ref]),
        (ours[:, 3] - ours[:, 1], [r["h"] for r in ref]),
        (ours[:, 0], [r["j"] for r in ref]),
    ]:
        assert stats.ks_2samp(f_ours.numpy(), np.array(f_ref)).pvalue > 1e-3


@pytest.mark.parametrize("value", ["mean", (0.1, 0.9, 0.3), "random"])
def test_random_erasing_equals_torchvision_erase_per_sample(value):
    images, targets = batch(b=24)
    aug = make("random_erasing", p=0.7, value=value)
    out, t, log = run(aug, images, targets, seed=2)
    assert torch.equal(t, targets)
    g = torch.Generator().manual_seed(2)  # replay: mask, boxes, then the normals
    aug.draw_apply_mask(24, g)
    erasing_boxes(24, 20, 28, aug.scale, aug.ratio, g)
    box, applied = log["box"], log["applied"]
    area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
    z = torch.randn(int(area.sum()) * 3, generator=g)
    pos = 0
    for i in range(24):
        x1, y1, x2, y2 = (int(v) for v in box[i])
        n = 3 * (x2 - x1) * (y2 - y1)
        if value == "random":
            v = torch.tensor(MEAN).view(3, 1, 1) + torch.tensor(STD).view(3, 1, 1) * z[
                pos : pos + n].view(3, y2 - y1, x2 - x1)
        else:
            v = torch.tensor(MEAN if value == "mean" else value).view(3, 1, 1)
        pos += n
        ref = TF.erase(images[i], y1, x1, y2 - y1, x2 - x1, v) if n else images[i]
        torch.testing.assert_close(out[i], ref, atol=1e-6, rtol=0)
        if not applied[i]:
            assert n == 0 and torch.equal(out[i], images[i])
    torch.testing.assert_close(log["lam"], 1 - area.float() / (20 * 28))
    if value == "random":  # not clipped to [0, 1], as the reference (N(0, 1) after Normalize)
        assert out.min() < 0 or out.max() > 1


def test_random_erasing_zero_strength_and_errors():
    images, targets = batch()
    for params in ({"p": 0.0}, {"scale": (0.0, 0.0), "p": 1.0}):
        out, _, log = run(make("random_erasing", **params), images, targets)
        assert torch.equal(out, images) and (log["box"] == 0).all()
    with pytest.raises(RuntimeError, match="set_dataset_stats"):
        run(build_augmentation([{"name": "random_erasing", "p": 1.0}]), images, targets)
    for bad in ({"value": 0}, {"value": "black"}, {"scale": (0.5, 1.5)}, {"ratio": (3, 1)}):
        with pytest.raises(ConfigError):
            build_augmentation([{"name": "random_erasing", **bad}])


# ---------------------------------------------------------------- gridmask


def grid_authors(h, w, d, st_h, st_w, r, ratio, mode):
    """dvlab-research/GridMask ``Grid.__call__`` (imagenet_grid/utils/grid.py) with its random
    draws (d, st_h, st_w, r) given, otherwise line for line; returns the (h, w) 0/1 mask."""
    hh = int(1.5 * h)
    ww = int(1.5 * w)
    length = int(d * ratio + 0.5)
    mask = np.ones((hh, ww), np.float32)
    for i in range(-1, hh // d + 1):
        s = d * i + st_h
        t = s + length
        s = max(min(s, hh), 0)
        t = max(min(t, hh), 0)
        mask[s:t, :] *= 0
    for i in range(-1, ww // d + 1):
        s = d * i + st_w
        t = s + length
        s = max(min(s, ww), 0)
        t = max(min(t, ww), 0)
        mask[:, s:t] *= 0
    mask = Image.fromarray(np.uint8(mask))
    mask = mask.rotate(r)
    mask = np.asarray(mask)
    mask = mask[(hh - h) // 2 : (hh - h) // 2 + h, (ww - w) // 2 : (ww - w) // 2 + w]
    mask = torch.from_numpy(mask.copy()).float()
    if mode == 1:
        mask = 1 - mask
    return mask


@pytest.mark.parametrize("size", [(32, 32), (24, 40), (21, 17)])
@pytest.mark.parametrize("mode", [0, 1])
def test_gridmask_keep_equals_authors_code_at_every_angle_kind(size, mode):
    h, w = size
    angles = [0, 90, 180, 270, 1, 45, 89, 91, 137, 359]
    n = len(angles)
    g = torch.Generator().manual_seed(mode)
    d = torch.randint(3, min(h, w), (n,), generator=g)
    st_h = (torch.rand(n, generator=g) * d).long()
    st_w = (torch.rand(n, generator=g) * d).long()
    length = torch.floor(d.double() * 0.6 + 0.5).long()
    keep = gridmask_keep(d, length, st_h, st_w, torch.tensor(angles), mode, h, w,
                         torch.device("cpu"))
    for i, r in enumerate(angles):
        ref = grid_authors(h, w, int(d[i]), int(st_h[i]), int(st_w[i]), r, 0.6, mode)
        assert torch.equal(keep[i].float(), ref), (size, r)


def test_gridmask_augmentation_equals_authors_code_per_sample():
    images, targets = batch(b=20, h=32, w=32)
    aug = make("gridmask", p=0.6)
    out, t, log = run(aug, images, targets, seed=3)
    assert torch.equal(t, targets) and aug.unit_range(32, 32) == (14, 32)
    applied = log["applied"]
    assert 0 < applied.sum() < 20
    for i in range(20):
        if not applied[i]:
            assert torch.equal(out[i], images[i]) and log["lam"][i] == 1
            continue
        d, l_ = int(log["d"][i]), int(log["l"][i])
        assert 14 <= d < 32 and l_ == int(d * 0.6 + 0.5) and 0 <= log["st_h"][i] < d
        m = grid_authors(32, 32, d, int(log["st_h"][i]), int(log["st_w"][i]),
                         int(log["angle"][i]), 0.6, 1)
        # authors: normalised image * mask, i.e. dropped pixels become the mean
        ref = torch.where(m.bool(), images[i], mean_image(32, 32))
        assert torch.equal(out[i], ref)
        assert math.isclose(float(log["lam"][i]), m.mean().item(), rel_tol=1e-6)
    assert log["angle"][applied].unique().numel() > 5


def test_gridmask_zero_strength():
    images, targets = batch()
    for params in ({"p": 0.0}, {"ratio": 1.0, "mode": 1, "p": 1.0},
                   {"ratio": 0.0, "mode": 0, "rotate": 1, "p": 1.0}):
        out, _, log = run(make("gridmask", **params), images, targets)
        assert torch.equal(out, images), params
    for bad in ({"mode": 2}, {"d": (0.5, 1.5)}, {"rotate": 0}, {"ratio": -0.1}):
        with pytest.raises(ConfigError):
            build_augmentation([{"name": "gridmask", **bad}])
    with pytest.raises(ValueError, match="empty unit range"):
        run(make("gridmask", d=(0.5, 0.5), p=1.0), images, targets)


# ---------------------------------------------------------------- resizemix


@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("size", [(32, 32), (20, 28)])
def test_resizemix_equals_interpolate_and_paste_per_sample(antialias, size):
    h, w = size
    images, targets = batch(b=16, h=h, w=w)
    aug = make("resizemix", antialias=antialias)
    out, t, log = run(aug, images, targets, seed=4)
    lam, box, partner = log["lam"], log["box"], log["partner"]
    assert sorted(partner.tolist()) == list(range(16))
    for i in range(16):
        x1, y1, x2, y2 = (int(v) for v in box[i])
        ph, pw = y2 - y1, x2 - x1
        assert 0 <= x1 and x2 <= w and 0 <= y1 and y2 <= h  # never clipped
        assert math.floor(0.1 * h) <= ph <= math.floor(0.8 * h)
        assert abs(ph / h - pw / w) < 1.0 / min(h, w) + 1e-9  # one scale for both sides
        ref = images[i].clone()
        patch = F.interpolate(images[int(partner[i])][None], size=(ph, pw), mode="bilinear",
                              align_corners=False, antialias=antialias)[0]
        ref[:, y1:y2, x1:x2] = patch
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=0)
        assert math.isclose(float(lam[i]), 1 - ph * pw / (h * w), rel_tol=1e-6)
    check_targets(t, targets, lam, partner, True)
    assert box.unique(dim=0).shape[0] > 12


def test_resizemix_label_mixing_false_and_weights():
    images, targets = batch(b=32)
    a = run(make("resizemix"), images, targets, seed=5)
    b = run(make("resizemix", label_mixing=False), images, targets, seed=5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[2]["lam"], b[2]["lam"])
    check_targets(b[1], targets, b[2]["lam"], b[2]["partner"], False)
    assert (b[2]["lam"] < 0.5).any() and (b[2]["lam"] >= 0.5).any()
    # full size: the resize matrix is the identity
    eye = resize_weights(torch.tensor([0]), torch.tensor([7]), 7, True)
    torch.testing.assert_close(eye[0], torch.eye(7, dtype=torch.float64))
    out, _, _ = run(make("resizemix", scale=(1.0, 1.0)), images, targets, seed=1)
    log = run(make("resizemix", scale=(1.0, 1.0)), images, targets, seed=1)[2]
    torch.testing.assert_close(out, images[log["partner"]], atol=1e-6, rtol=0)


# ---------------------------------------------------------------- fmix


def fftfreqnd_authors(h, w):
    fy = np.fft.fftfreq(h)
    fy = np.expand_dims(fy, -1)
    if w % 2 == 1:
        fx = np.fft.fftfreq(w)[: w // 2 + 2]
    else:
        fx = np.fft.fftfreq(w)[: w // 2 + 1]
    return np.sqrt(fx * fx + fy * fy)


def fmix_mask_authors(h, w, decay, param, lam, coin, paper=False):
    """ecs-vlc/FMix fmix.py sample_mask (make_low_freq_image + binarise_mask, max_soft 0) with its
    random draws given (param = np.random.randn(1, h, w', 2), lam, random.random()); ``paper``
    swaps in the intended spectrum[..., 0] + 1j * spectrum[..., 1]."""
    freqs = fftfreqnd_authors(h, w)
    scale = np.ones(1) / (np.maximum(freqs, np.array([1.0 / max(w, h, 0)])) ** decay)
    scale = np.expand_dims(scale, -1)[None, :]
    spectrum = scale * param
    if paper:
        spectrum = spectrum[..., 0] + 1j * spectrum[..., 1]
    else:
        spectrum = spectrum[:, 0] + 1j * spectrum[:, 1]
    # axes=None with s meant the last len(s) axes in the NumPy the authors used (deprecated now)
    mask = np.real(np.fft.irfftn(spectrum, (h, w), axes=(-2, -1)))
    mask = mask[:1, :h, :w]
    mask = mask - mask.min()
    mask = mask / mask.max()
    idx = mask.reshape(-1).argsort()[::-1]
    mask = mask.reshape(-1)
    num = math.ceil(lam * mask.size) if coin > 0.5 else math.floor(lam * mask.size)
    mask[idx[:num]] = 1
    mask[idx[num:]] = 0
    return mask.reshape((h, w))


@pytest.mark.parametrize("spectrum", ["code", "paper"])
@pytest.mark.parametrize("size", [(32, 32), (20, 27)])
def test_fmix_masks_equal_authors_code_per_sample(spectrum, size):
    h, w = size
    images, targets = batch(b=12, h=h, w=w)
    aug = make("fmix", spectrum=spectrum, alpha=0.7)
    out, t, log = run(aug, images, targets, seed=6)
    g = torch.Generator().manual_seed(6)
    aug.draw_apply_mask(12, g)
    prm = aug.draw(12, h, w, g)
    keep = aug.keep_masks(prm["param"], prm["count"], h, w)
    rng = np.random.default_rng(0)
    wf = fmix_freqs(h, w).shape[1]
    for i in range(12):
        full = rng.standard_normal((1, h, wf, 2))  # rows the "code" variant never reads
        if spectrum == "paper":
            full[0] = prm["param"][i].numpy()
        else:
            full[0, :2] = prm["param"][i].numpy()
        ref = fmix_mask_authors(h, w, 3.0, full, float(prm["lam"][i]), float(prm["coin"][i]),
                                paper=spectrum == "paper")
        assert torch.equal(keep[i], torch.from_numpy(ref).bool()), i
        j = int(log["partner"][i])
        expect = torch.where(keep[i], images[i], images[j])
        assert torch.equal(out[i], expect)
        # λ = the exact kept share
        assert math.isclose(float(log["lam"][i]), ref.mean(), rel_tol=1e-6)
    check_targets(t, targets, log["lam"], log["partner"], True)


def test_fmix_label_mixing_false_lambda_distribution_and_spectrum():
    images, targets = batch(b=400, h=8, w=8)
    a = run(make("fmix"), images, targets, seed=7)
    b = run(make("fmix", label_mixing=False), images, targets, seed=7)
    assert torch.equal(a[0], b[0])
    check_targets(b[1], targets, b[2]["lam"], b[2]["partner"], False)
    lam = a[2]["lam"].double()
    assert stats.kstest(lam.numpy(), "uniform").pvalue > 1e-3  # alpha 1: Beta(1, 1)
    assert torch.equal(lam * 64, (lam * 64).round())  # n / N
    # the released code's spectrum only has horizontal frequencies 0 and 1
    aug = make("fmix")
    g = torch.Generator().manual_seed(0)
    prm = aug.draw(4, 16, 16, g)
    low = fmix_low_freq(prm["param"], 3.0, 16, 16, "code")
    spec = torch.fft.rfft2(low).abs()  # (B, ky, kx)
    assert spec[:, :, 2:].max() < 1e-9 and spec[:, :, 1].max() > 1e-3
    with pytest.raises(ConfigError):
        build_augmentation([{"name": "fmix", "spectrum": "both"}])


def test_mixers_p0_is_identity():
    images, targets = batch(b=8)
    for name in ("resizemix", "fmix"):
        out, t, log = run(make(name, p=0.0), images, targets)
        assert torch.equal(out, images) and torch.equal(t, targets)
        assert (log["lam"] == 1).all() and torch.equal(log["partner"], torch.arange(8))


# ---------------------------------------------------------------- label smoothing


def test_label_smoothing_equals_cross_entropy_smoothing():
    images, targets = batch(b=16)
    aug = make("label_smoothing", epsilon=0.2)
    out, t, log = run(aug, images, targets)
    assert out is images
    torch.testing.assert_close(t, targets * 0.8 + 0.2 / K)
    logits = torch.randn(16, K, generator=torch.Generator().manual_seed(0))
    soft = -(t * logits.log_softmax(1)).sum(1).mean()
    ref = F.cross_entropy(logits, targets.argmax(1), label_smoothing=0.2)
    torch.testing.assert_close(soft, ref)
    assert (log["epsilon"] == 0.2).all() and log["applied"].all()
    assert make("label_smoothing").epsilon == 0.1


@pytest.mark.parametrize("k", [2, 10, 1000])
def test_label_smoothing_to_a_target_entropy(k):
    for target in (0.0, 0.05, 0.5 * math.log(k), 0.999 * math.log(k), math.log(k)):
        eps = smoothing_for_entropy(target, k)
        # slow twin: bisection on the definition, with plain floats
        lo, hi = 0.0, 1.0
        for _ in range(200):
            mid = (lo + hi) / 2
            q = [1 - mid + mid / k] + [mid / k] * (k - 1)
            ent = -sum(v * math.log(v) for v in q if v > 0)
            lo, hi = (mid, hi) if ent < target else (lo, mid)
        assert abs(eps - (lo + hi) / 2) < 1e-7  # the entropy is flat at ε = 1 (its maximum)
        q = [1 - eps + eps / k] + [eps / k] * (k - 1)
        assert abs(-sum(v * math.log(v) for v in q if v > 0) - target) < 1e-12
        t = F.one_hot(torch.tensor([0, k - 1]), k).float()
        aug = build_augmentation([{"name": "label_smoothing", "entropy": target}])
        _, out, _ = run(aug, torch.zeros(2, 3, 2, 2), t)
        torch.testing.assert_close(label_entropy(out), torch.full((2,), target,
                                                                   dtype=torch.float64),
                                   atol=1e-5, rtol=0)  # float32 targets
    with pytest.raises(ValueError, match="outside"):
        run(build_augmentation([{"name": "label_smoothing", "entropy": math.log(k) + 0.01}]),
            torch.zeros(2, 3, 2, 2), F.one_hot(torch.tensor([0, 1]), k).float())


def test_label_smoothing_matches_mixup_entropy_and_errors():
    images, targets = batch(b=64)
    _, mixed, _ = run(make("mixup"), images, targets, seed=1)
    h = float(label_entropy(mixed).mean())
    aug = build_augmentation([{"name": "label_smoothing", "entropy": h}])
    _, smoothed, log = run(aug, images, targets)
    assert abs(float(label_entropy(smoothed).mean()) - h) < 1e-5
    assert log["epsilon"].unique().numel() == 1
    for params in ({"epsilon": 0.0}, {"p": 0.0}):
        out, t, _ = run(make("label_smoothing", **params), images, targets)
        assert torch.equal(t, targets) and out is images
    for bad in ({"epsilon": 0.1, "entropy": 0.3}, {"epsilon": 1.5}, {"entropy": -1}):
        with pytest.raises(ConfigError):
            build_augmentation([{"name": "label_smoothing", **bad}])
