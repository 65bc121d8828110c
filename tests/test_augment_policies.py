"""RandAugment, TrivialAugmentWide, AutoAugment, AugMix (+ JSD loss): every operation and every
logged per-sample draw replayed through torchvision v2's own dispatch, image by image."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms import v2

from auglens.augment import (
    Augmentation,
    Compose,
    build_augmentation,
    jsd_consistency_loss,
)
from auglens.augment.policies import AUTOAUGMENT_POLICIES
from auglens.augment.policy_ops import IDENTITY, OP_ID, OPS, SPACES, apply_ops
from auglens.errors import ConfigError

POLICIES = ["randaugment", "trivialaugment", "autoaugment", "augmix"]
K = 5
_TV = v2.RandAugment()  # its _apply_image_or_video_transform is shared by all four policies


def tv_op(img: torch.Tensor, name: str, magnitude: float, interpolation: str) -> torch.Tensor:
    """torchvision v2's AutoAugment-family dispatch for one op on one image (the reference)."""
    return _TV._apply_image_or_video_transform(
        img, name, float(magnitude), interpolation=v2.InterpolationMode(interpolation),
        fill=_TV._fill,
    )


def batch(b: int = 24, h: int = 20, w: int = 28, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 3, h, w, generator=g)
    images[0] = 0.5  # flat grey: autocontrast / equalize corner cases
    images[1, :, :, : w // 2] = 1.0  # exact white: solarize at threshold 1.0
    targets = torch.nn.functional.one_hot(torch.arange(b) % K, K).float()
    return images, targets


def run(aug: Augmentation, images, targets, seed: int = 0):
    return aug(images, targets, torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- tables and single operations


TV_CLASSES = {
    "randaugment": v2.RandAugment,
    "trivialaugment": v2.TrivialAugmentWide,
    "autoaugment": v2.AutoAugment,
    "augmix": v2.AugMix,
}


@pytest.mark.parametrize("space", ["randaugment", "trivialaugment", "autoaugment", "augmix",
                                   "augmix_partial"])
@pytest.mark.parametrize("bins, size", [(31, (32, 32)), (10, (24, 40)), (5, (7, 3))])
def test_magnitude_tables_equal_torchvision(space, bins, size):
    cls = TV_CLASSES[space.replace("_partial", "")]
    ref = cls._PARTIAL_AUGMENTATION_SPACE if space == "augmix_partial" else cls._AUGMENTATION_SPACE
    ours = SPACES[space]
    assert ours.ops == tuple(ref)  # same ops, same order
    ids, table, signed = ours.magnitudes(bins, *size)
    for i, (name, (fn, sgn)) in enumerate(ref.items()):
        assert OPS[int(ids[i])] == name and bool(signed[i]) == sgn
        m = fn(bins, *size)
        expect = torch.zeros(bins, dtype=torch.float64) if m is None else m.double()
        assert torch.equal(table[i], expect), (space, name)


@pytest.mark.parametrize("policy", ["imagenet", "cifar10", "svhn"])
def test_autoaugment_policies_equal_torchvision(policy):
    ref = v2.AutoAugment(v2.AutoAugmentPolicy(policy))._policies
    assert [tuple(p) for p in AUTOAUGMENT_POLICIES[policy]] == [tuple(p) for p in ref]


def _magnitudes(name: str, n: int) -> torch.Tensor:
    if name in ("TranslateX", "TranslateY"):
        return torch.linspace(-20.7, 20.7, n, dtype=torch.float64)
    if name == "Rotate":  # incl. torchvision's exact 0 / 90 / 180 / 270 shortcuts
        special = torch.tensor([0.0, 90.0, -90.0, 180.0, 270.0, 360.0, 45.0, -135.0])
        return torch.cat([special, torch.linspace(-135, 135, n - 8)]).double()
    if name == "Posterize":
        return (torch.arange(n) % 9).double()
    if name == "Solarize":
        return torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    return torch.linspace(-0.99, 0.99, n, dtype=torch.float64)


@pytest.mark.parametrize(
    "interpolation, size", [("nearest", (16, 16)), ("nearest", (12, 20)), ("bilinear", (12, 20))]
)
def test_every_operation_equals_torchvision_per_sample(interpolation, size):
    n = 12
    x = torch.rand(n, 3, *size, generator=torch.Generator().manual_seed(1))
    x[0] = 0.25
    for k, name in enumerate(OPS):
        mags = _magnitudes(name, n)
        out = apply_ops(x, torch.full((n,), k), mags, interpolation)
        for i in range(n):
            ref = tv_op(x[i], name, float(mags[i]), interpolation)
            if interpolation == "nearest" or name not in ("ShearX", "ShearY", "Rotate"):
                torch.testing.assert_close(out[i], ref, atol=1e-6, rtol=0, msg=name)
            else:  # bilinear rotations: float noise of the 90°-multiples shortcut
                torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=0, msg=name)


def test_mixed_operations_in_one_call_and_identity_untouched():
    x, _ = batch(b=30)
    op = torch.arange(30) % len(OPS)
    mag = torch.linspace(-0.5, 0.5, 30, dtype=torch.float64)
    mag = torch.where(op == OP_ID["Posterize"], 5.0, mag)
    out = apply_ops(x, op, mag, "nearest")
    for i in range(30):
        ref = tv_op(x[i], OPS[int(op[i])], float(mag[i]), "nearest")
        torch.testing.assert_close(out[i], ref, atol=1e-6, rtol=0)
    ident = op == IDENTITY
    assert torch.equal(out[ident], x[ident])
    assert apply_ops(x, torch.zeros(30, dtype=torch.long), mag, "nearest") is x


# ---------------------------------------------------------------- whole policies, replayed


def _replay(img: torch.Tensor, ops, mags, interpolation: str) -> torch.Tensor:
    for o, m in zip(ops, mags, strict=True):
        img = tv_op(img, OPS[int(o)], float(m), interpolation)
    return img


@pytest.mark.parametrize(
    "name, params",
    [
        ("randaugment", {}),
        ("randaugment", {"num_ops": 3, "magnitude": 30, "interpolation": "bilinear"}),
        ("trivialaugment", {}),
        ("autoaugment", {}),
        ("autoaugment", {"policy": "cifar10"}),
        ("autoaugment", {"policy": "svhn", "p": 0.6}),
    ],
)
def test_policy_equals_torchvision_replayed_per_sample(name, params):
    images, targets = batch(b=24, h=12, w=20)
    aug = build_augmentation([{"name": name, **params}])
    out, t, log = run(aug, images, targets, seed=3)
    assert torch.equal(t, targets)
    interp = params.get("interpolation", "nearest")
    for i in range(24):
        ref = _replay(images[i], log["op"][i], log["magnitude"][i].double(), interp)
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=0)
    assert len(log["op"].unique()) > 5


def test_randaugment_draws_follow_torchvision_distribution():
    images, targets = batch(b=2800, h=4, w=4)
    _, _, log = run(build_augmentation(["randaugment"]), images, targets, seed=1)
    ops = log["op"].flatten()
    space = SPACES["randaugment"]
    counts = torch.bincount(ops, minlength=len(OPS))
    expect = ops.numel() / len(space.ops)  # uniform over torchvision's 14 ops
    for name in space.ops:
        assert abs(counts[OP_ID[name]] - expect) < 5 * math.sqrt(expect), name
    assert counts[OP_ID["Invert"]] == 0
    table = space.magnitudes(31, 4, 4)[1]
    rot = log["magnitude"].flatten()[ops == OP_ID["Rotate"]]
    assert set(rot.abs().tolist()) == {float(table[space.ops.index("Rotate"), 9])}
    assert abs((rot < 0).double().mean() - 0.5) < 0.1


def test_autoaugment_applies_each_op_with_its_probability():
    images, targets = batch(b=4000, h=4, w=4)
    aug = build_augmentation([{"name": "autoaugment", "policy": "cifar10"}])
    _, _, log = run(aug, images, targets, seed=2)
    sub = log["subpolicy"]
    pol = AUTOAUGMENT_POLICIES["cifar10"]
    for slot in (0, 1):
        prob = torch.tensor([pol[s][slot][1] for s in sub.tolist()], dtype=torch.float64)
        named = torch.tensor([OP_ID[pol[s][slot][0]] for s in sub.tolist()])
        applied = log["op"][:, slot] != IDENTITY
        assert torch.equal(log["op"][applied, slot], named[applied])
        assert abs(applied.double().mean() - prob.mean()) < 0.03
    assert torch.bincount(sub, minlength=25).min() > 100


def test_trivialaugment_bins_uniform():
    images, targets = batch(b=3000, h=4, w=4)
    _, _, log = run(build_augmentation(["trivialaugment"]), images, targets, seed=4)
    rot = log["magnitude"][:, 0][log["op"][:, 0] == OP_ID["Rotate"]].double()
    assert rot.abs().max() <= 135 and len(rot.abs().unique()) > 25  # 31 bins, 0 .. 135


# ---------------------------------------------------------------- augmix


def _augmix_reference(img, log, i, width, interp="bilinear"):
    """torchvision AugMix.forward for one image with the logged per-sample draws."""
    mix = log["orig_weight"][i].double().float() * img
    ops = log["op"][i].view(width, -1)
    mags = log["magnitude"][i].view(width, -1)
    for c in range(width):
        aug = _replay(img, ops[c], mags[c].double(), interp)
        mix = mix + log["weights"][i, c] * aug
    return mix


@pytest.mark.parametrize(
    "params",
    [{}, {"severity": 10, "mixture_width": 2, "chain_depth": 2, "all_ops": False},
     {"alpha": 0.3, "p": 0.5}],
)
def test_augmix_equals_torchvision_replayed_per_sample(params):
    images, targets = batch(b=12, h=12, w=20)
    aug = build_augmentation([{"name": "augmix", **params}])
    out, t, log = run(aug, images, targets, seed=5)
    width = params.get("mixture_width", 3)
    assert torch.equal(t, targets)
    applied = log["applied"]
    for i in range(12):
        if not applied[i]:
            assert torch.equal(out[i], images[i])
            continue
        torch.testing.assert_close(out[i], _augmix_reference(images[i], log, i, width),
                                   atol=2e-5, rtol=0)
    w = log["weights"][applied].double().sum(1) + log["orig_weight"][applied].double()
    torch.testing.assert_close(w, torch.ones_like(w), atol=1e-6, rtol=0)
    depth = log["depth"][applied]
    if "chain_depth" in params:
        assert (depth == params["chain_depth"]).all()
    else:
        assert set(depth.unique().tolist()) <= {1, 2, 3}
        # operations past a chain's depth are Identity
        ops = log["op"][applied].view(-1, width, 3)
        past = torch.arange(3) >= depth[..., None]
        assert (ops[past] == IDENTITY).all()
    if not params.get("all_ops", True):
        assert not torch.isin(log["op"], torch.tensor([OP_ID[n] for n in (
            "Brightness", "Color", "Contrast", "Sharpness")])).any()


def test_augmix_views_and_jsd_contract():
    images, targets = batch(b=12)
    single = build_augmentation(["augmix"])
    aug = build_augmentation([{"name": "augmix", "jsd": True}])
    assert aug.consistency_views == 2 and single.consistency_views == 0
    with pytest.raises(RuntimeError, match="views"):
        run(aug, images, targets)
    clean, t, extra, log = aug.views(images, targets, torch.Generator().manual_seed(9))
    assert clean is images and t is targets and len(extra) == 2
    # draw order: mask, view 1, view 2 -> view 1 equals a single AugMix with the same seed
    first, _, log1 = run(single, images, targets, seed=9)
    assert torch.equal(extra[0], first)
    assert torch.equal(log["view1.op"], log1["op"]) and not torch.equal(extra[0], extra[1])
    # in a list: earlier members shared by all views, the jsd member must be last
    comp = build_augmentation([{"name": "hflip"}, {"name": "augmix", "jsd": True}])
    assert comp.consistency_views == 2
    g = torch.Generator().manual_seed(4)
    c2, _, e2, log2 = comp.views(images, targets, g)
    g = torch.Generator().manual_seed(4)
    flipped, _, _ = build_augmentation(["hflip"])(images, targets, g)
    _, _, e_ref, _ = aug.views(flipped, targets, g)
    assert torch.equal(c2, flipped) and torch.equal(e2[1], e_ref[1])
    assert "hflip.applied" in log2 and "augmix.view2.weights" in log2
    with pytest.raises(ConfigError, match="last"):
        build_augmentation([{"name": "augmix", "jsd": True}, {"name": "hflip"}])
    with pytest.raises(NotImplementedError):
        build_augmentation(["hflip"]).views(images, targets, g)


def test_jsd_loss_equals_authors_formula_written_out():
    g = torch.Generator().manual_seed(0)
    zc, z1, z2 = (torch.randn(6, 4, generator=g) * 3 for _ in range(3))
    z2[0] = torch.tensor([40.0, -40.0, 0.0, 0.0])  # a saturated softmax: the 1e-7 clamp matters
    got = jsd_consistency_loss(zc, z1, z2)
    total = 0.0
    for i in range(6):
        ps = [[math.exp(v) / sum(math.exp(u) for u in z[i].tolist()) for v in z[i].tolist()]
              for z in (zc, z1, z2)]
        for k in range(4):
            m = min(max((ps[0][k] + ps[1][k] + ps[2][k]) / 3, 1e-7), 1.0)
            for p in ps:
                total += p[k] * (math.log(p[k]) - math.log(m)) if p[k] > 0 else 0.0
    expect = 12 * total / 6 / 3
    assert math.isclose(got.item(), expect, rel_tol=1e-5)
    assert jsd_consistency_loss(zc, zc, zc).abs().item() < 1e-6
    torch.testing.assert_close(jsd_consistency_loss(zc, z1, z2, weight=1.0) * 12, got)
    with pytest.raises(ValueError):
        jsd_consistency_loss(zc, z1, z2[:3])


# ---------------------------------------------------------------- zero strength, determinism


def test_zero_strength_is_identity():
    images, targets = batch(b=60)
    out, _, _ = run(build_augmentation([{"name": "randaugment", "num_ops": 0}]), images, targets)
    assert torch.equal(out, images)
    # magnitude 0: every magnitude-scaled op is the identity (posterize / solarize / autocontrast
    # / equalize have no zero: torchvision's float posterize(8 bits) and solarize(1.0) change
    # values).
    neutral = torch.tensor([OP_ID[n] for n in ("Identity", "ShearX", "ShearY", "TranslateX",
                                               "TranslateY", "Rotate", "Brightness", "Color",
                                               "Contrast", "Sharpness")])
    out, _, log = run(build_augmentation([{"name": "randaugment", "magnitude": 0}]),
                      images, targets)
    plain = torch.isin(log["op"], neutral).all(1)
    assert plain.sum() > 10
    torch.testing.assert_close(out[plain], images[plain], atol=1e-6, rtol=0)
    # AugMix at severity 1 (bin 0) with the magnitude-scaled ops only: m·x + Σ w·x = x
    aug = build_augmentation([{"name": "augmix", "severity": 1, "chain_depth": 1,
                               "mixture_width": 2}])
    out, _, log = run(aug, images, targets)
    plain = torch.isin(log["op"], neutral).all(1)
    assert plain.sum() > 10  # float32 rounding of the convex weights only
    torch.testing.assert_close(out[plain], images[plain], atol=5e-6, rtol=0)
    for name in POLICIES:
        out, _, log = run(build_augmentation([{"name": name, "p": 0.0}]), images, targets)
        assert torch.equal(out, images) and not log["applied"].any()


@pytest.mark.parametrize("name", POLICIES)
def test_generator_is_the_only_randomness(name):
    images, targets = batch()
    aug = build_augmentation([name])
    torch.manual_seed(1)
    a = run(aug, images, targets, seed=11)
    torch.manual_seed(2)
    b = run(aug, images, targets, seed=11)
    assert torch.equal(a[0], b[0]) and all(torch.equal(a[2][k], b[2][k]) for k in a[2])
    assert not torch.equal(a[0], run(aug, images, targets, seed=12)[0])


def test_per_sample_parameters_differ():
    images, targets = batch(b=16)
    same = images[2:3].expand(16, -1, -1, -1).contiguous()
    for name in POLICIES:
        out, _, log = run(build_augmentation([name]), same, targets, seed=1)
        assert log["op"].unique(dim=0).shape[0] > 8, name
        assert out.flatten(1).unique(dim=0).shape[0] > 5, name


@pytest.mark.parametrize(
    "item, field",
    [
        ({"name": "randaugment", "magnitude": 31}, "magnitude"),
        ({"name": "randaugment", "num_ops": -1}, "num_ops"),
        ({"name": "randaugment", "num_magnitude_bins": 1}, "num_magnitude_bins"),
        ({"name": "trivialaugment", "interpolation": "bicubic"}, "interpolation"),
        ({"name": "autoaugment", "policy": "cifar100"}, "policy"),
        ({"name": "augmix", "severity": 0}, "severity"),
        ({"name": "augmix", "severity": 11}, "severity"),
        ({"name": "augmix", "mixture_width": 0}, "mixture_width"),
        ({"name": "augmix", "chain_depth": 1.5}, "chain_depth"),
        ({"name": "augmix", "jsd": "yes"}, "jsd"),
        ({"name": "augmix", "alpha": 0}, "alpha"),
    ],
)
def test_invalid_parameters(item, field):
    with pytest.raises(ConfigError) as e:
        build_augmentation([item])
    assert f"'{field}'" in str(e.value) and "valid parameters" in str(e.value)


def test_grayscale_images_rejected():
    x = torch.rand(2, 1, 8, 8)
    for name in POLICIES:
        with pytest.raises(ValueError, match="RGB"):
            run(build_augmentation([name]), x, torch.ones(2, 1))


def test_compose_with_policy_is_sequential():
    images, targets = batch()
    comp = build_augmentation(["random_crop", "trivialaugment"])
    assert isinstance(comp, Compose)
    g = torch.Generator().manual_seed(3)
    x, _, _ = build_augmentation(["random_crop"])(images, targets, g)
    x, _, _ = build_augmentation(["trivialaugment"])(x, targets, g)
    assert torch.equal(run(comp, images, targets, seed=3)[0], x)
