"""Explainer engine: equality with Captum / pytorch-grad-cam formulas, state guard, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import random_model
from torch import Tensor, nn

from auglens.errors import AuglensError
from auglens.explain import (
    EXPLAINERS,
    Explainer,
    Explanation,
    explain_images,
    preserved_state,
    upsample,
)
from auglens.models import default_target_layer, get_module

METHODS = ["gradcam", "gradcam++", "layercam"]


def _model(name: str, num_classes: int = 10, seed: int = 0, **params) -> nn.Module:
    """Random-init model with non-trivial BN statistics, so that maps are not all ~0."""
    return random_model(name, num_classes, seed, **params)


def _assert_close(a: Tensor, b: Tensor, rel: float = 1e-5) -> None:
    """max |a - b| ≤ rel · max |b| (maps of random models have arbitrary scales)."""
    assert a.shape == b.shape
    scale = b.abs().max().item()
    assert scale > 0, "degenerate reference (all zeros)"
    err = (a - b).abs().max().item()
    assert err <= rel * scale, f"max abs diff {err:.3g} vs scale {scale:.3g}"


# --------------------------------------------------------------------- slow reference (plain way)


def _slow_reference(model: nn.Module, layer: str, x: Tensor, targets: Tensor, method: str):
    """One image at a time: hook keeps the layer output, ``loss.backward()`` on the target logit,
    then pytorch-grad-cam's own formulas (numpy) for the weights / map, ReLU at the end."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    model.eval()
    module = get_module(model, layer)
    maps = []
    for i in range(x.shape[0]):
        saved = {}

        def hook(mod, inp, out, saved=saved):
            out.retain_grad()
            saved["a"] = out
            return out.clone()  # downstream in-place ops must not touch the saved output

        h = module.register_forward_hook(hook)
        try:
            logits = model(x[i : i + 1])
        finally:
            h.remove()
        model.zero_grad(set_to_none=True)
        logits[0, int(targets[i])].backward()
        a = saved["a"].detach().numpy()
        g = saved["a"].grad.numpy()
        if method == "gradcam":
            w = pgc.GradCAM.get_cam_weights(None, None, None, None, a, g)
            cam = (w[:, :, None, None] * a).sum(1)
        elif method == "gradcam++":
            w = pgc.GradCAMPlusPlus.get_cam_weights(None, None, None, None, a, g)
            cam = (w[:, :, None, None] * a).sum(1)
        else:
            cam = pgc.LayerCAM.get_cam_image(None, None, None, None, a, g, False)
        maps.append(torch.from_numpy(np.maximum(cam, 0)[0]))
    model.zero_grad(set_to_none=True)
    return torch.stack(maps)


# --------------------------------------------------------------------------------- equality


@pytest.mark.parametrize("name,size", [("small_resnet", 32), ("resnet18", 64)])
@pytest.mark.parametrize("given", [False, True])
def test_gradcam_equals_captum(name, size, given):
    from captum.attr import LayerGradCam

    m = _model(name)
    x = torch.randn(5, 3, size, size, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([0, 3, 9, 3, 7]) if given else "predicted"
    exp = EXPLAINERS.get("gradcam")(m)(x, target)
    expected_t = target if given else m(x).argmax(1)
    assert torch.equal(exp.targets, expected_t)
    layer = get_module(m, default_target_layer(m))
    ref = LayerGradCam(m, layer).attribute(x, target=expected_t, relu_attributions=True)
    assert exp.maps.dtype == torch.float32 and exp.maps.shape == ref.shape[:1] + ref.shape[2:]
    _assert_close(exp.maps, ref.squeeze(1).detach())
    assert exp.layer == default_target_layer(m) and exp.method == "gradcam"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name,size", [("small_resnet", 32), ("resnet18", 64)])
def test_cams_equal_slow_reference(method, name, size):
    m = _model(name)
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([1, 4, 8])
    exp = EXPLAINERS.get(method)(m)(x, targets)
    ref = _slow_reference(m, default_target_layer(m), x, targets, method)
    _assert_close(exp.maps, ref)
    assert exp.maps.min() >= 0


@pytest.mark.parametrize(
    "name,size,params",
    [("efficientnet_b0", 64, {}), ("resnet50", 64, {}), ("resnet18", 32, {"cifar_stem": True})],
)
def test_other_architectures_match_reference(name, size, params):
    m = _model(name, **params)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    exp = EXPLAINERS.get("gradcam")(m)(x)
    _assert_close(exp.logits, m(x).detach())
    ref = _slow_reference(m, default_target_layer(m), x, exp.targets, "gradcam")
    _assert_close(exp.maps, ref)


def test_layer_followed_by_inplace_ops():
    """resnet18 'layer4.1.bn2' feeds ``out += identity`` and ReLU(inplace=True)."""
    m = _model("resnet18")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    for method in METHODS:
        exp = EXPLAINERS.get(method)(m, "layer4.1.bn2")(x)
        assert exp.layer == "layer4.1.bn2"
        ref = _slow_reference(m, "layer4.1.bn2", x, exp.targets, method)
        _assert_close(exp.maps, ref)
        _assert_close(exp.logits, m(x).detach())


def test_inplace_relu_as_target_layer():
    m = _model("resnet18")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    exp = EXPLAINERS.get("gradcam")(m, "relu")(x)
    assert exp.maps.shape == (2, 32, 32)
    _assert_close(exp.logits, m(x).detach())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name,size", [("small_resnet", 32), ("resnet18", 64)])
def test_batch_equals_single_images(method, name, size):
    m = _model(name)
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(6))
    ex = EXPLAINERS.get(method)(m)
    full = ex(x)
    for i in range(4):
        one = ex(x[i : i + 1])
        assert torch.equal(one.targets, full.targets[i : i + 1])
        torch.testing.assert_close(one.maps, full.maps[i : i + 1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(one.logits, full.logits[i : i + 1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_ground_truth_in_same_pass_equals_separate_call(method):
    m = _model("small_resnet")
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    gt = torch.tensor([0, 1, 2, 3, 4, 5])
    ex = EXPLAINERS.get(method)(m)
    both = ex(x, also_ground_truth=gt)
    sep = ex(x, target=gt)
    pred = ex(x)
    assert torch.equal(both.targets_gt, gt) and torch.equal(both.targets, pred.targets)
    torch.testing.assert_close(both.maps_gt, sep.maps, rtol=0, atol=0)
    torch.testing.assert_close(both.maps, pred.maps, rtol=0, atol=0)


@pytest.mark.parametrize("channels_last", [False, None, True])
def test_logits_equal_eval_forward_and_targets_are_argmax(channels_last):
    m = _model("small_resnet").train()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    exp = EXPLAINERS.get("gradcam")(m, channels_last=channels_last)(x)
    assert m.training  # restored
    with torch.no_grad():
        ref = m.eval()(x)
    assert exp.logits.dtype == torch.float32 and exp.targets.dtype == torch.int64
    if channels_last is False:  # same memory format as the plain forward: bit-exact
        assert torch.equal(exp.logits, ref)
    _assert_close(exp.logits, ref)
    assert torch.equal(exp.targets, ref.argmax(1))
    plain = EXPLAINERS.get("gradcam")(m, channels_last=False)(x)
    _assert_close(exp.maps, plain.maps)


class _ViewNet(nn.Module):
    """Flattens (B, C, h, w) features with ``.view``, which needs contiguous strides."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 5)
        self.default_target_layer = "conv"

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.conv(x).view(x.shape[0], -1))


def test_view_model_falls_back_to_contiguous_input():
    torch.manual_seed(0)
    m = _ViewNet()
    x = torch.randn(3, 3, 8, 8)
    exp = EXPLAINERS.get("gradcam")(m, channels_last=True)(x)
    ref = EXPLAINERS.get("gradcam")(m, channels_last=False)(x)
    assert torch.equal(exp.maps, ref.maps) and torch.equal(exp.logits, m(x).detach())
    assert all(len(mod._forward_hooks) == 0 for mod in m.modules())


def test_works_inside_no_grad_and_inference_mode():
    m = _model("small_resnet")
    x = torch.randn(2, 3, 32, 32)
    ref = EXPLAINERS.get("gradcam")(m)(x).maps
    with torch.no_grad():
        a = EXPLAINERS.get("gradcam")(m)(x).maps
    with torch.inference_mode():
        xi = x.clone()
        b = EXPLAINERS.get("gradcam")(m)(xi).maps
    assert torch.equal(a, ref) and torch.equal(b, ref)


# ---------------------------------------------------------------------------- model state


def _snapshot(m: nn.Module):
    return (
        [mod.training for mod in m.modules()],
        [p.requires_grad for p in m.parameters()],
        [
            (k, tuple(getattr(mod, k)))
            for mod in m.modules()
            for k in (
                "_forward_hooks",
                "_forward_pre_hooks",
                "_backward_hooks",
                "_backward_pre_hooks",
            )
        ],
    )


class _Boom(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        raise RuntimeError("head exploded")


def _mixed_state_model() -> nn.Module:
    m = _model("small_resnet").train()
    m.layer1.eval()  # a mixed training state must come back exactly
    for p in m.stem.parameters():
        p.requires_grad_(False)
    return m


@pytest.mark.parametrize("method", METHODS)
def test_state_restored(method):
    m = _mixed_state_model()
    seen = []
    user_hook = m.layer3.register_forward_hook(lambda *a: seen.append(1))
    before = _snapshot(m)
    EXPLAINERS.get(method)(m)(torch.randn(3, 3, 32, 32), also_ground_truth=torch.tensor([1, 2, 3]))
    assert _snapshot(m) == before
    assert seen == [1]  # the user's hook ran and is still registered
    assert all(p.grad is None for p in m.parameters())
    user_hook.remove()
    assert all(len(mod._forward_hooks) == 0 for mod in m.modules())
    assert all(len(mod._forward_pre_hooks) == 0 for mod in m.modules())


def test_state_restored_when_forward_raises():
    m = _mixed_state_model()
    m.fc = _Boom()
    before = _snapshot(m)
    with pytest.raises(RuntimeError, match="head exploded"):
        EXPLAINERS.get("gradcam")(m)(torch.randn(2, 3, 32, 32))
    assert _snapshot(m) == before
    assert m.training and not m.layer1.training
    assert all(p.grad is None for p in m.parameters())
    assert all(len(mod._forward_hooks) == 0 for mod in m.modules())


def test_existing_grads_are_kept():
    m = _model("small_resnet")
    m(torch.randn(2, 3, 32, 32)).sum().backward()
    grads = [p.grad.clone() for p in m.parameters()]
    EXPLAINERS.get("gradcam")(m)(torch.randn(2, 3, 32, 32))
    assert all(torch.equal(p.grad, g) for p, g in zip(m.parameters(), grads, strict=True))


def test_guard_and_layer_tap_restore_everything_on_error():
    """preserved_state restores flags; every hook goes through LayerTap (torch's public hook
    API), whose handles are removed when the block ends, also on error."""
    from auglens.models.tap import LayerTap

    m = _model("small_resnet").train()
    seen = []

    def boom(mod, inputs, output):
        seen.append(output.shape)
        raise ValueError("inside the forward")

    with pytest.raises(ValueError):
        with preserved_state(m), LayerTap(m.layer2, boom), LayerTap(
                [m.layer1, m.layer3], lambda mod, args: None, kind="pre"):
            assert not m.training and not any(p.requires_grad for p in m.parameters())
            m(torch.randn(2, 3, 32, 32))
    assert seen and m.training and all(p.requires_grad for p in m.parameters())
    for layer in (m.layer1, m.layer2, m.layer3):
        assert not layer._forward_hooks and not layer._forward_pre_hooks


# ------------------------------------------------------------------------------ bad inputs


def test_unknown_method_lists_valid_names():
    with pytest.raises(AuglensError, match=r"valid explainers: .*gradcam\+\+.*layercam"):
        EXPLAINERS.get("gradcamm")
    m = _model("small_resnet")
    with pytest.raises(AuglensError, match="unknown explainer 'scorecam'"):
        explain_images(m, torch.zeros(1, 3, 32, 32, dtype=torch.uint8), lambda x: x, "scorecam")


def test_unknown_layer_is_clear():
    with pytest.raises(AuglensError, match="has no module 'layer9'"):
        EXPLAINERS.get("gradcam")(_model("small_resnet"), "layer9")


@pytest.mark.parametrize(
    "x,target,match",
    [
        (torch.randn(3, 32, 32), "predicted", r"4-D tensor \(B, C, H, W\), got \(3, 32, 32\)"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "predicted", "must be float"),
        (torch.randn(2, 3, 32, 32), torch.tensor([1, 10]), r"in \[0, 9\].*\[10\]"),
        (torch.randn(2, 3, 32, 32), torch.tensor([-1, 0]), ">= 0"),
        (torch.randn(2, 3, 32, 32), torch.tensor([1, 2, 3]), r"shape \(2,\)"),
        (torch.randn(2, 3, 32, 32), torch.tensor([1.0, 2.0]), "integer class ids"),
        (torch.randn(2, 3, 32, 32), "gt", "target must be 'predicted'"),
    ],
)
def test_bad_inputs(x, target, match):
    m = _model("small_resnet").train()
    before = _snapshot(m)
    with pytest.raises(AuglensError, match=match):
        EXPLAINERS.get("gradcam")(m)(x, target)
    assert _snapshot(m) == before


def test_ground_truth_out_of_range():
    with pytest.raises(AuglensError, match="ground-truth class ids must be in"):
        EXPLAINERS.get("gradcam")(_model("small_resnet"))(
            torch.randn(2, 3, 32, 32), also_ground_truth=torch.tensor([0, 12])
        )


def test_nan_maps_are_reported_with_count():
    x = torch.randn(4, 3, 32, 32)
    x[1, :, 3, 3] = float("nan")
    x[3] = float("nan")
    with pytest.raises(AuglensError, match="2 of 4 maps contain NaN"):
        EXPLAINERS.get("gradcam")(_model("small_resnet"))(x)


def test_layer_called_twice_is_an_error():
    m = _model("resnet18")
    with pytest.raises(AuglensError, match="called more than once"):
        EXPLAINERS.get("gradcam")(m, "layer1.0.relu")(torch.randn(1, 3, 32, 32))
    assert all(len(mod._forward_hooks) == 0 for mod in m.modules())


def test_non_spatial_layer_is_an_error():
    with pytest.raises(AuglensError, match="must output a 4-D tensor"):
        EXPLAINERS.get("gradcam")(_model("small_resnet"), "fc")(torch.randn(1, 3, 32, 32))


# ------------------------------------------------------------------ images, upsample, base


def test_explain_images_streams_batches():
    m = _model("small_resnet")
    g = torch.Generator().manual_seed(9)
    images = torch.randint(0, 256, (7, 3, 32, 32), dtype=torch.uint8, generator=g)
    gt = torch.tensor([0, 1, 2, 3, 4, 5, 6])

    def normalize(x: Tensor) -> Tensor:
        return (x - 0.5) / 0.25

    exp = explain_images(m, images, normalize, "layercam", batch_size=3, ground_truth=gt)
    ref = EXPLAINERS.get("layercam")(m)(normalize(images.float() / 255), also_ground_truth=gt)
    assert len(exp) == 7 and exp.maps.dtype == torch.float32 and exp.maps.device.type == "cpu"
    torch.testing.assert_close(exp.maps, ref.maps, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(exp.maps_gt, ref.maps_gt, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(exp.logits, ref.logits, rtol=1e-5, atol=1e-6)
    assert torch.equal(exp.targets, ref.targets) and torch.equal(exp.targets_gt, gt)
    given = explain_images(m, images, normalize, batch_size=4, target=gt)
    assert torch.equal(given.targets, gt)
    with pytest.raises(AuglensError, match="uint8 images"):
        explain_images(m, images.float(), normalize)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_explain_images_on_cuda_leaves_model_on_cpu():
    m = _model("small_resnet")
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    exp = explain_images(m, images, lambda x: x, device="cuda")
    assert exp.maps.device.type == "cpu"
    assert next(m.parameters()).device.type == "cpu"


def test_upsample_is_bilinear_align_corners_false():
    maps = torch.arange(8.0).view(2, 2, 2)
    up = upsample(maps, 4)
    assert up.shape == (2, 4, 4)
    # align_corners=False: the first output pixel equals the corner value, edges replicate
    assert up[0, 0, 0] == 0 and up[0, 0, 1] == 0.25 and up[0, 3, 3] == 3
    assert upsample(maps, (3, 5)).shape == (2, 3, 5)


def test_base_is_generic_for_other_methods():
    """A non-CAM method (like the future IBA) plugs in by implementing `_explain`."""

    class MeanActivation(Explainer):
        def _explain(self, x, target, target_gt):
            acts = {}
            h = self.layer.register_forward_hook(lambda mod, i, o: acts.setdefault("a", o))
            logits = self.model(x)
            h.remove()
            return acts["a"].mean(1), logits, logits.argmax(1), None

    m = _model("small_resnet").train()
    exp = MeanActivation(m)(torch.randn(2, 3, 32, 32))
    assert isinstance(exp, Explanation) and exp.maps.shape == (2, 8, 8) and m.training
    assert sorted(EXPLAINERS) == sorted(METHODS) or set(METHODS) <= set(EXPLAINERS)
