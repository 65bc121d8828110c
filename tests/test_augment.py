"""Batched augmentations: loop references against torchvision, known answers, errors."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from auglens.augment import (
    AUGMENTATIONS,
    JITTER_ORDER,
    Augmentation,
    Compose,
    build_augmentation,
)
from auglens.augment.mixing import sample_beta
from auglens.augment.reference import reference_transform
from auglens.errors import AuglensError, ConfigError

ALL = AUGMENTATIONS.names()
EXPECTED = {
    "none", "affine", "cutmix", "color_jitter", "elastic", "equalize", "gaussian_blur",
    "random_crop", "cutout", "mixup", "saliencymix", "random_resized_crop", "hflip",
    "randaugment", "trivialaugment", "autoaugment", "augmix", "random_erasing", "gridmask",
    "resizemix", "fmix", "label_smoothing",
}
LABEL_ONLY = {"label_smoothing"}  # images unchanged: compare targets instead
NO_REFERENCE = {"cutout", "saliencymix", "mixup", "resizemix", "fmix", "gridmask",
                "label_smoothing"}
BILINEAR = TF.InterpolationMode.BILINEAR
B, K = 12, 5


def batch(b: int = B, h: int = 16, w: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 3, h, w, generator=g)
    targets = torch.nn.functional.one_hot(torch.arange(b) % K, K).float()
    return images, targets


def run(aug: Augmentation, images: torch.Tensor, targets: torch.Tensor, seed: int = 0):
    return aug(images, targets, torch.Generator().manual_seed(seed))


def make(name: str, **params) -> Augmentation:
    if name in ("equalize", "random_erasing", "gridmask"):
        params.setdefault("p", 1.0)
    aug = build_augmentation([{"name": name, **params}])
    aug.set_dataset_stats((0.5,) * 3, (0.25,) * 3)
    return aug


# ---------------------------------------------------------------- registry, contract, errors


def test_registered_names_and_describe():
    assert set(ALL) == EXPECTED
    for name in ALL:
        d = AUGMENTATIONS.describe(name)
        assert "p" in d["params"] and d["doc"]
        signature = inspect.signature(AUGMENTATIONS.get(name).__init__).parameters.values()
        assert all(q.default is not q.empty for q in signature if q.name != "self"), name
    assert AUGMENTATIONS.describe("affine")["params"] == {
        "degrees": 15.0, "translate": 0.1, "scale": (0.9, 1.1), "shear": 0.0, "p": 1.0,
    }
    assert AUGMENTATIONS.describe("equalize")["params"]["p"] == 0.5


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shapes_logs_no_inplace(name):
    images, targets = batch()
    before = images.clone()
    out, t, log = run(make(name), images, targets)
    assert out.shape == images.shape and out.dtype == images.dtype
    assert t.shape == targets.shape
    assert torch.equal(images, before)  # input untouched
    assert log["applied"].dtype == torch.bool
    for key, v in log.items():
        assert v.shape[0] == B, key
    if name != "none":
        assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_p0_is_identity(name):
    images, targets = batch()
    out, t, log = run(make(name, p=0.0), images, targets)
    assert torch.equal(out, images) and torch.equal(t, targets)
    assert not log["applied"].any()


@pytest.mark.parametrize("name", sorted(EXPECTED - {"none"}))
def test_unapplied_samples_bit_identical(name):
    images, targets = batch(b=16)
    out, t, log = run(make(name, p=0.5), images, targets, seed=3)
    applied = log["applied"]
    assert 0 < applied.sum() < 16
    assert torch.equal(out[~applied], images[~applied])
    assert torch.equal(t[~applied], targets[~applied])
    changed = t if name in LABEL_ONLY else out
    assert not torch.equal(changed[applied], (targets if name in LABEL_ONLY else images)[applied])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_deterministic_given_seed(name):
    images, targets = batch()
    aug = make(name)
    a = run(aug, images, targets, seed=7)
    b = run(aug, images, targets, seed=7)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[2].keys() == b[2].keys() and all(torch.equal(a[2][k], b[2][k]) for k in a[2])
    if name not in {"none", "equalize"} | LABEL_ONLY:
        c = run(aug, images, targets, seed=8)
        assert not torch.equal(a[0], c[0])


def test_global_rng_untouched():
    images, targets = batch()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    for name in ALL:
        run(make(name), images, targets)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize(
    "name", ["affine", "cutmix", "color_jitter", "elastic", "gaussian_blur", "random_crop"]
)
def test_per_sample_parameters_differ(name):
    # The same image repeated: every output must differ from every other (per-sample randomness).
    images, targets = batch(b=8)
    images = images[:1].expand(8, -1, -1, -1).contiguous()
    if name == "cutmix":
        images = batch(b=8)[0]
    params = {"padding": 4} if name == "random_crop" else {}
    out, _, log = run(make(name, **params), images, targets)
    flat = out.flatten(1)
    dist = torch.cdist(flat, flat)
    assert (dist + torch.eye(8) > 1e-4).all(), name
    for key in ("angle", "sigma", "brightness", "hue"):
        if key in log:
            assert log[key].unique().numel() == 8
    if name == "cutmix":
        assert log["box"].unique(dim=0).shape[0] == 8
    if name == "random_crop":
        offsets = torch.stack([log["top"], log["left"]], 1)
        assert offsets.unique(dim=0).shape[0] >= 6


def test_unknown_name_lists_valid_names():
    with pytest.raises(AuglensError) as e:
        build_augmentation([{"name": "cutmixx"}])
    msg = str(e.value)
    assert "cutmixx" in msg and "did you mean 'cutmix'" in msg
    assert all(n in msg for n in EXPECTED)


def test_unknown_param_names_augmentation_field_and_valid():
    with pytest.raises(ConfigError) as e:
        build_augmentation([{"name": "none"}, {"name": "affine", "degree": 10}])
    msg = str(e.value)
    assert "augmentation[1] 'affine'" in msg and "'degree'" in msg
    assert "did you mean 'degrees'" in msg and "translate=0.1" in msg and "shear=0.0" in msg


@pytest.mark.parametrize(
    "item, field",
    [
        ({"name": "affine", "degrees": -1}, "degrees"),
        ({"name": "affine", "scale": [1.2, 0.8]}, "scale"),
        ({"name": "gaussian_blur", "kernel_size": 4}, "kernel_size"),
        ({"name": "gaussian_blur", "sigma": [0.0, 1.0]}, "sigma"),
        ({"name": "cutmix", "label_mixing": "no"}, "label_mixing"),
        ({"name": "cutmix", "alpha": 0}, "alpha"),
        ({"name": "color_jitter", "hue": 0.7}, "hue"),
        ({"name": "color_jitter", "brightness": "x"}, "brightness"),
        ({"name": "random_crop", "padding": 1.5}, "padding"),
        ({"name": "elastic", "p": 2}, "p"),
    ],
)
def test_invalid_param_value(item, field):
    with pytest.raises(ConfigError) as e:
        build_augmentation([item])
    msg = str(e.value)
    assert f"'{item['name']}'" in msg and f"'{field}'" in msg and "valid parameters" in msg


def test_bad_spec_shape():
    with pytest.raises(ConfigError):
        build_augmentation([{"degrees": 3}])
    with pytest.raises(ConfigError):
        build_augmentation([42])


def test_build_identity_single_and_compose():
    for spec in ([], None, [{"name": "none"}]):
        aug = build_augmentation(spec)
        images, targets = batch()
        out, t, _ = run(aug, images, targets)
        assert out is images and t is targets
    assert type(build_augmentation([{"name": "affine", "degrees": 5}])).__name__ == "Affine"
    assert build_augmentation([{"name": "gaussian_blur", "sigma": [0.5, 1.0]}]).sigma == (0.5, 1.0)
    assert isinstance(build_augmentation(["affine", "cutmix"]), Compose)


# ---------------------------------------------------------------- compose


def test_compose_sequential_same_generator_and_prefixed_logs():
    images, targets = batch()
    comp = build_augmentation(
        [{"name": "random_crop"}, {"name": "cutmix"}, {"name": "random_crop", "padding": 2}]
    )
    assert comp.mixes_labels
    out, t, log = run(comp, images, targets, seed=5)
    g = torch.Generator().manual_seed(5)
    x, y, l1 = make("random_crop")(images, targets, g)
    x, y, l2 = make("cutmix")(x, y, g)
    x, y, l3 = make("random_crop", padding=2)(x, y, g)
    assert torch.equal(out, x) and torch.equal(t, y)
    assert torch.equal(log["random_crop.top"], l1["top"])
    assert torch.equal(log["cutmix.lam"], l2["lam"])
    assert torch.equal(log["random_crop#2.left"], l3["left"])
    assert set(log) == {f"random_crop.{k}" for k in l1} | {f"cutmix.{k}" for k in l2} | {
        f"random_crop#2.{k}" for k in l3
    }


# ---------------------------------------------------------------- zero strength


def test_zero_strength_identity():
    images, targets = batch()
    cases = [
        ("affine", dict(degrees=0.0, translate=0.0, scale=(1.0, 1.0), shear=0.0), 1e-6),
        ("elastic", dict(alpha=0.0), 1e-6),
        ("color_jitter", dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0), 0.0),
        ("gaussian_blur", dict(sigma=(1e-3, 1e-3)), 0.0),
        ("random_crop", dict(padding=0), 0.0),
    ]
    for name, params, atol in cases:
        out, _, log = run(make(name, **params), images, targets)
        assert log["applied"].all()
        assert (out - images).abs().max() <= atol, name


# ---------------------------------------------------------------- affine


def test_affine_equals_per_sample_torchvision():
    images, targets = batch()
    aug = make("affine", degrees=40.0, translate=0.2, scale=(0.7, 1.3), shear=15.0)
    out, _, log = run(aug, images, targets, seed=1)
    assert log["tx"].abs().max() <= round(0.2 * 20) and log["ty"].abs().max() <= round(0.2 * 16)
    assert (log["angle"].abs() <= 40).all() and ((log["scale"] - 1).abs() <= 0.3).all()
    for i in range(B):
        ref = TF.affine(
            images[i],
            angle=float(log["angle"][i]),
            translate=[int(log["tx"][i]), int(log["ty"][i])],
            scale=float(log["scale"][i]),
            shear=[float(log["shear"][i]), 0.0],
            interpolation=BILINEAR,
        )
        torch.testing.assert_close(out[i], ref, atol=2e-5, rtol=0)


def test_affine_theta_known_answers():
    # torchvision F.affine convention: positive angle = clockwise on screen, translate in pixels.
    from auglens.augment.geometric import affine_theta

    img = torch.zeros(1, 1, 5, 5)
    img[0, 0, 0, 4] = 1.0  # top-right corner

    def warp(angle, tx, ty, scale=1.0):
        v = [torch.tensor([float(a)], dtype=torch.float64) for a in (angle, tx, ty, scale, 0)]
        grid = torch.nn.functional.affine_grid(
            affine_theta(*v, 5, 5).float(), [1, 1, 5, 5], align_corners=False
        )
        return torch.nn.functional.grid_sample(img, grid, align_corners=False)[0, 0]

    expect = torch.zeros(5, 5)
    expect[4, 4] = 1.0  # clockwise quarter turn: top-right -> bottom-right
    torch.testing.assert_close(warp(90, 0, 0), expect, atol=1e-6, rtol=0)
    expect = torch.zeros(5, 5)
    expect[1, 2] = 1.0  # shift left 2, down 1
    torch.testing.assert_close(warp(0, -2, 1), expect, atol=1e-6, rtol=0)
    expect = torch.zeros(5, 5)
    expect[1, 3] = 1.0  # scale 1/2 about the centre: offset (+2, -2) -> (+1, -1)
    torch.testing.assert_close(warp(0, 0, 0, 0.5), expect, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- elastic


def test_elastic_equals_torchvision_with_same_displacement():
    images, targets = batch(h=24, w=28)
    aug = make("elastic", alpha=30.0, sigma=3.0)
    g = torch.Generator().manual_seed(4)
    aug.draw_apply_mask(B, g)
    noise = torch.rand(B, 2, 24, 28, generator=g) * 2 - 1
    g = torch.Generator().manual_seed(4)
    aug.draw_apply_mask(B, g)
    disp = aug.draw_displacement(B, 24, 28, g)
    out, _, _ = run(aug, images, targets, seed=4)
    k = int(8 * 3.0 + 1) | 1
    for i in range(B):
        # torchvision ElasticTransform.make_params with this noise
        dx = TF.gaussian_blur(noise[i : i + 1, 0:1], [k, k], [3.0, 3.0]) * 30.0 / 28
        dy = TF.gaussian_blur(noise[i : i + 1, 1:2], [k, k], [3.0, 3.0]) * 30.0 / 24
        ref_disp = torch.cat([dx, dy], 1).permute(0, 2, 3, 1)
        torch.testing.assert_close(disp[i : i + 1], ref_disp, atol=1e-6, rtol=0)
        ref = TF.elastic(images[i], ref_disp, interpolation=BILINEAR)
        torch.testing.assert_close(out[i], ref, atol=2e-5, rtol=0)
    assert disp.abs().max() > 0.01  # a real displacement


# ---------------------------------------------------------------- colour jitter


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.5},
        {"brightness": (0.2, 2.0), "contrast": 0.9, "saturation": (0.0, 3.0), "hue": 0.0},
    ],
)
def test_color_jitter_equals_per_sample_torchvision(params):
    images, targets = batch(b=16)
    images[0] = 0.5  # grey: hue undefined
    images[1, :, :4] = images[1, 0:1, :4]  # grey patch
    images[2, 1] = images[2, 0]  # R == G ties
    images[3, :, 0, 0] = 1.0
    out, _, log = run(make("color_jitter", **params), images, targets, seed=2)
    assert JITTER_ORDER == ("brightness", "contrast", "saturation", "hue")
    for i in range(16):
        ref = images[i]
        ref = TF.adjust_brightness(ref, float(log["brightness"][i]))
        ref = TF.adjust_contrast(ref, float(log["contrast"][i]))
        ref = TF.adjust_saturation(ref, float(log["saturation"][i]))
        ref = TF.adjust_hue(ref, float(log["hue"][i]))
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=0)


def test_color_jitter_factor_ranges():
    images, targets = batch(b=64, h=4, w=4)
    _, _, log = run(make("color_jitter"), images, targets)
    for key in ("brightness", "contrast", "saturation"):
        assert log[key].min() >= 0.6 and log[key].max() <= 1.4
    assert log["hue"].abs().max() <= 0.1 and log["hue"].std() > 0.03


# ---------------------------------------------------------------- equalize


def test_equalize_equals_per_image_torchvision_and_flattens_histogram():
    g = torch.Generator().manual_seed(0)
    # Low-contrast images: uint8 levels 102..153 (values 0.4..0.6), plus exactly 16 pixels per
    # channel at the maximum level 154, so that PIL's step = (N - n_max) // 255 = 4080 // 255 = 16
    # is exact (with other sizes PIL/torchvision's floored step saturates the top of the range).
    levels = torch.randint(102, 154, (8, 3, 64 * 64), generator=g)
    levels[..., :16] = 154
    low = (levels.float() / 255).view(8, 3, 64, 64)
    out, _, log = run(make("equalize"), low, torch.ones(8, 1))
    assert log["applied"].all()
    for i in range(8):
        assert torch.equal(out[i], TF.equalize(low[i]))
    q = (out * 255).round()
    torch.testing.assert_close(q / 255, out, atol=1e-6, rtol=0)  # uint8 levels
    assert out.amin() == 0.0 and (out.amax(dim=(2, 3)) == 1.0).all()  # full range
    # The CDF of the equalised values is close to the uniform CDF on [0, 1]; the input's is not.
    grid = torch.linspace(0, 1, 21)

    def cdf_gap(v: torch.Tensor) -> float:
        return ((v.flatten()[None, :] <= grid[:, None]).float().mean(1) - grid).abs().max().item()

    assert max(cdf_gap(out[i, c]) for i in range(8) for c in range(3)) < 0.04
    assert cdf_gap(low[0, 0]) > 0.35


# ---------------------------------------------------------------- gaussian blur


@pytest.mark.parametrize("kernel_size", [3, 5, 7])
def test_gaussian_blur_equals_per_sample_torchvision(kernel_size):
    images, targets = batch()
    out, _, log = run(make("gaussian_blur", kernel_size=kernel_size), images, targets, seed=6)
    assert (log["sigma"] >= 0.1).all() and (log["sigma"] <= 2.0).all()
    for i in range(B):
        s = float(log["sigma"][i])
        ref = TF.gaussian_blur(images[i], [kernel_size, kernel_size], [s, s])
        torch.testing.assert_close(out[i], ref, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- random crop


def test_random_crop_equals_loop_reference():
    images, targets = batch()
    pad = 3
    out, _, log = run(make("random_crop", padding=pad), images, targets, seed=9)
    top, left = log["top"], log["left"]
    assert top.min() >= 0 and top.max() <= 2 * pad and left.min() >= 0 and left.max() <= 2 * pad
    for i in range(B):
        padded = torch.zeros(3, 16 + 2 * pad, 20 + 2 * pad)
        padded[:, pad : pad + 16, pad : pad + 20] = images[i]
        t, l_ = int(top[i]), int(left[i])
        assert torch.equal(out[i], padded[:, t : t + 16, l_ : l_ + 20])
        tv = TF.crop(TF.pad(images[i], [pad]), t, l_, 16, 20)
        assert torch.equal(out[i], tv)


# ---------------------------------------------------------------- cutmix


def test_cutmix_lambda_is_exact_unpasted_fraction_and_targets():
    images, targets = batch(b=16, h=16, w=16)
    out, t, log = run(make("cutmix"), images, targets, seed=11)
    lam, box, partner = log["lam"], log["box"], log["partner"]
    assert log["applied"].all()
    assert sorted(partner.tolist()) == list(range(16))  # a permutation
    x1, y1, x2, y2 = box.unbind(1)
    assert (x1 >= 0).all() and (x2 <= 16).all() and (x1 <= x2).all() and (y1 <= y2).all()
    area = ((x2 - x1) * (y2 - y1)).float() / 256
    torch.testing.assert_close(lam, 1 - area)
    for i in range(16):
        j = int(partner[i])
        kept = (out[i] == images[i]).all(0)  # random images: equal only where not pasted
        if j != i:
            assert math.isclose(kept.float().mean().item(), float(lam[i]), abs_tol=1e-6)
        region = torch.zeros(16, 16, dtype=torch.bool)
        region[y1[i] : y2[i], x1[i] : x2[i]] = True
        assert torch.equal(out[i][:, region], images[j][:, region])
        assert torch.equal(out[i][:, ~region], images[i][:, ~region])
        expected = lam[i] * targets[i] + (1 - lam[i]) * targets[j]
        torch.testing.assert_close(t[i], expected)
    torch.testing.assert_close(t.sum(1), torch.ones(16))
    assert box.unique(dim=0).shape[0] > 12 and lam.unique().numel() > 8
    # Soft-label CE equals lam*CE(y_a) + (1 - lam)*CE(y_b) for any logits.
    logits = torch.randn(16, K, generator=torch.Generator().manual_seed(0))
    ce_soft = -(t * logits.log_softmax(1)).sum(1)
    ya, yb = targets.argmax(1), targets[partner].argmax(1)
    ce = torch.nn.functional.cross_entropy
    mixed = lam * ce(logits, ya, reduction="none") + (1 - lam) * ce(logits, yb, reduction="none")
    torch.testing.assert_close(ce_soft, mixed)


def test_cutmix_box_follows_clovaai_rand_bbox():
    from auglens.augment.mixing import cutmix_boxes

    lam = torch.tensor([0.75, 0.0, 1.0, 0.5], dtype=torch.float64)
    cx, cy = torch.tensor([8, 8, 3, 0]), torch.tensor([8, 2, 3, 0])
    boxes, lam_exact = cutmix_boxes(lam, cx, cy, 16, 16)
    # cut = int(16 * sqrt(1 - lam)) = 8, 16, 0, 11; half sides cut // 2 = 4, 8, 0, 5
    assert boxes.tolist() == [[4, 4, 12, 12], [0, 0, 16, 10], [3, 3, 3, 3], [0, 0, 5, 5]]
    torch.testing.assert_close(
        lam_exact, torch.tensor([0.75, 1 - 160 / 256, 1.0, 1 - 25 / 256], dtype=torch.float64)
    )


def test_cutmix_without_label_mixing_uses_larger_area_label():
    images, targets = batch(b=16, h=16, w=16)
    out_mix, _, log_mix = run(make("cutmix"), images, targets, seed=12)
    out, t, log = run(make("cutmix", label_mixing=False), images, targets, seed=12)
    assert torch.equal(out, out_mix) and torch.equal(log["lam"], log_mix["lam"])
    for i in range(16):
        keeper = i if log["lam"][i] >= 0.5 else int(log["partner"][i])
        assert torch.equal(t[i], targets[keeper])
    assert (log["lam"] < 0.5).any() and (log["lam"] >= 0.5).any()


def test_beta_sampler_moments():
    g = torch.Generator().manual_seed(0)
    x = sample_beta(20000, 2.0, 2.0, g)
    assert abs(x.mean().item() - 0.5) < 0.01
    assert abs(x.var().item() - 1 / 20) < 0.003  # a*b / ((a+b)^2 (a+b+1))
    u = sample_beta(20000, 1.0, 1.0, g)
    assert abs(u.var().item() - 1 / 12) < 0.003


# ---------------------------------------------------------------- reference transforms


@pytest.mark.parametrize("name", sorted(EXPECTED - NO_REFERENCE))
def test_reference_transforms_run(name):
    images, targets = batch(b=4, h=32, w=32)
    ref = reference_transform(name, **({"p": 1.0} if name == "equalize" else {}))
    if name == "cutmix":
        out, t = ref(images, targets)
        assert out.shape == images.shape and torch.allclose(t.sum(1), torch.ones(4))
    else:
        assert ref(images[0]).shape == images[0].shape
    with pytest.raises(AuglensError):
        reference_transform(name, bogus=1)


def test_reference_zero_strength_matches():
    images, _ = batch(b=2, h=32, w=32)
    ref = reference_transform("random_crop", padding=0)
    assert torch.equal(ref(images[0]), images[0])
    with pytest.raises(ConfigError):
        reference_transform("cutmix", label_mixing=False)


# ---------------------------------------------------------------- device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_cuda_matches_cpu(name):
    images, targets = batch()
    aug = make(name)
    cpu = run(aug, images, targets, seed=5)
    gpu = run(aug, images.cuda(), targets.cuda(), seed=5)
    assert gpu[0].device.type == "cuda"
    if name in ("randaugment", "trivialaugment", "autoaugment", "fmix"):
        # nearest-neighbour sampling / mask ranks: a float-rounding tie may pick another pixel
        assert ((gpu[0].cpu() - cpu[0]).abs() > 1e-4).float().mean() < 0.01
    else:
        torch.testing.assert_close(gpu[0].cpu(), cpu[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(gpu[1].cpu(), cpu[1])
