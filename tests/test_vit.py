"""Vision Transformers: token → grid reshape (hand-computed), CAMs on token layers against Captum
and a slow twin on the literally reshaped activations, IBA through the adapter, attention rollout
against a hand-computed example and a literal loop, attention capture, model state."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision
from torch import Tensor, nn

from auglens.errors import AuglensError
from auglens.explain import EXPLAINERS, explain_images, feature_grid, fit_estimator
from auglens.explain.rollout import discard_lowest, rollout, rollout_maps
from auglens.models import MODELS, TokenGrid, build_model, default_target_layer, get_module
from auglens.models.vit import ConvStem


def _vit(seed: int = 0, **params) -> nn.Module:
    params = {"width": 32, "depth": 2, "heads": 4, **params}
    torch.manual_seed(seed)
    return build_model("small_vit", 10, **params).eval()


def _x(n: int, seed: int = 1, size: int = 32) -> Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _assert_close(a: Tensor, b: Tensor, rel: float = 1e-5) -> None:
    assert a.shape == b.shape
    scale = b.abs().max().item()
    assert scale > 0, "degenerate reference (all zeros)"
    err = (a - b).abs().max().item()
    assert err <= rel * scale, f"max abs diff {err:.3g} vs scale {scale:.3g}"


# ------------------------------------------------------------------------------- token grid


def test_token_grid_hand_computed():
    tokens = torch.tensor([[[10.0 * t + d for d in range(3)] for t in range(5)]])  # (1, 1+4, 3)
    grid = TokenGrid().to_grid(tokens)
    expected = torch.tensor(
        [[[[10, 20], [30, 40]], [[11, 21], [31, 41]], [[12, 22], [32, 42]]]], dtype=torch.float32
    )  # patch token 1 + 2i + j at [i, j]; the class token (0, 1, 2) is dropped
    assert torch.equal(grid, expected)
    back = TokenGrid().to_tokens(grid * 2, tokens)
    assert torch.equal(back[:, 0], tokens[:, 0]) and torch.equal(back[:, 1:], 2 * tokens[:, 1:])
    with pytest.raises(AuglensError, match="square patch grid"):
        TokenGrid().to_grid(torch.zeros(1, 6, 3))
    assert TokenGrid(prefix=2).grid_size(11) == (3, 3)


def test_feature_grid_passes_cnn_maps_and_rejects_tokens_without_adapter():
    cnn = build_model("small_resnet", 10)
    a = torch.randn(2, 4, 3, 3)
    assert feature_grid(cnn, a, "layer3") is a
    with pytest.raises(AuglensError, match="must output a 4-D tensor"):
        feature_grid(cnn, torch.randn(2, 5, 4), "layer3")
    with pytest.raises(AuglensError, match="or a token layer"):
        feature_grid(_vit(), (torch.randn(2, 5, 4),), "blocks.1.attn")


# ----------------------------------------------------------------------------------- models


def test_small_vit_shapes_params_and_errors():
    m = _vit()
    acts = {}
    layer = get_module(m, default_target_layer(m))
    h = layer.register_forward_hook(lambda mod, i, o: acts.setdefault("a", o))
    with torch.no_grad():
        out = m(_x(2))
    h.remove()
    assert out.shape == (2, 10) and default_target_layer(m) == "blocks.1.norm1"
    assert acts["a"].shape == (2, 1 + 64, 32)  # patch 4 at 32×32: 8×8 patches + class token
    assert set(MODELS.describe("small_vit")["params"]) >= {"width", "depth", "patch"}
    assert _vit(patch=8).tokens.pos_embed.shape == (1, 1 + 16, 32)
    with pytest.raises(AuglensError, match="built for 32×32"):
        m(_x(1, size=64))
    with pytest.raises(AuglensError, match="not a multiple of patch"):
        build_model("small_vit", 10, patch=5)
    assert isinstance(m.patch_embed, ConvStem) and m.patch_embed(_x(2)).shape == (2, 32, 8, 8)
    lin = _vit(stem="patch")  # the original linear patch projection
    assert lin.patch_embed.kernel_size == (4, 4) and lin.patch_embed.stride == (4, 4)
    assert lin(_x(2)).shape == (2, 10)
    with pytest.raises(AuglensError, match="stem must be"):
        build_model("small_vit", 10, stem="resnet")
    with pytest.raises(AuglensError, match="power-of-2"):
        build_model("small_vit", 10, stem="conv", patch=6, image_size=24)
    wrapped = build_model("small_vit", 10, input_size=32, width=32, depth=1)
    assert isinstance(wrapped.cam_reshape, TokenGrid)
    assert wrapped.default_target_layer == "net.blocks.0.norm1"


def test_vit_b_16_registered_with_token_layer():
    torch.manual_seed(0)
    m = build_model("vit_b_16", 5).eval()
    nn.init.normal_(m.heads.head.weight, std=0.02)  # torchvision zero-initialises the head
    assert default_target_layer(m) == "encoder.layers.encoder_layer_11.ln_1"
    exp = EXPLAINERS.get("gradcam")(m)(_x(1, size=224))  # tokens (1, 1 + 196, 768) → 14×14
    assert exp.maps.shape == (1, 14, 14) and exp.maps.max() > 0
    assert EXPLAINERS.get("rollout")(m).layer_name == "encoder.layers"


def test_last_block_output_has_no_patch_gradient():
    """Why the default layer is the last block's norm1: at the last block's output only the class
    token reaches the logits, so Grad-CAM there is zero everywhere."""
    m = _vit()
    exp = EXPLAINERS.get("gradcam")(m, "blocks.1")(_x(3))
    assert torch.equal(exp.maps, torch.zeros_like(exp.maps))
    assert EXPLAINERS.get("gradcam")(m)(_x(3)).maps.max() > 0


# ------------------------------------------------------------------ CAMs on the reshaped grid


def _probe(m: nn.Module, layer: str):
    """Add ``m.probe`` (an Identity) that sees the layer's patch tokens as a grid (B, D, h, w),
    reshaped literally as pytorch-grad-cam's ViT ``reshape_transform``, and feeds them back."""
    m.probe = nn.Identity()

    def hook(mod, inputs, out):
        b, n, d = out.shape
        s = int(round(math.sqrt(n - 1)))
        grid = m.probe(out[:, 1:, :].reshape(b, s, s, d).transpose(2, 3).transpose(1, 2))
        return torch.cat([out[:, :1], grid.permute(0, 2, 3, 1).reshape(b, s * s, d)], 1)

    return get_module(m, layer).register_forward_hook(hook)


def _slow_cam(m: nn.Module, layer: str, x: Tensor, targets: Tensor, method: str) -> Tensor:
    """One image at a time, ``backward`` on the target logit, pytorch-grad-cam's formulas on the
    probe's grid activations and gradients."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    handle = _probe(m, layer)
    maps = []
    try:
        for i in range(x.shape[0]):
            saved = {}

            def keep(mod, inp, out, saved=saved):
                out.retain_grad()
                saved["a"] = out
                return out

            h = m.probe.register_forward_hook(keep)
            logits = m(x[i : i + 1])
            h.remove()
            m.zero_grad(set_to_none=True)
            logits[0, int(targets[i])].backward()
            a, g = saved["a"].detach().numpy(), saved["a"].grad.numpy()
            if method == "layercam":
                cam = pgc.LayerCAM.get_cam_image(None, None, None, None, a, g, False)
            else:
                cls = pgc.GradCAM if method == "gradcam" else pgc.GradCAMPlusPlus
                w = cls.get_cam_weights(None, None, None, None, a, g)
                cam = (w[:, :, None, None] * a).sum(1)
            maps.append(torch.from_numpy(np.maximum(cam, 0)[0]))
    finally:
        handle.remove()
        del m.probe
        m.zero_grad(set_to_none=True)
    return torch.stack(maps)


@pytest.mark.parametrize("given", [False, True])
def test_gradcam_on_vit_equals_captum_on_reshaped_activations(given):
    from captum.attr import LayerGradCam

    m = _vit()
    x = _x(4)
    target = torch.tensor([0, 3, 9, 3]) if given else "predicted"
    exp = EXPLAINERS.get("gradcam")(m)(x, target)
    t = target if given else m(x).argmax(1)
    assert torch.equal(exp.targets, t)
    handle = _probe(m, default_target_layer(m))
    try:
        ref = LayerGradCam(m, m.probe).attribute(x, target=t, relu_attributions=True)
    finally:
        handle.remove()
        del m.probe
    assert exp.maps.shape == (4, 8, 8)
    _assert_close(exp.maps, ref.squeeze(1).detach())


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
def test_cams_on_vit_equal_slow_twin(method):
    m = _vit(seed=1)
    x = _x(3, seed=2)
    targets = m(x).argmax(1)  # random ViTs give all-zero maps for many other classes
    exp = EXPLAINERS.get(method)(m)(x, targets)
    _assert_close(exp.maps, _slow_cam(m, default_target_layer(m), x, targets, method))
    one = [EXPLAINERS.get(method)(m)(x[i : i + 1], targets[i : i + 1]).maps for i in range(3)]
    _assert_close(torch.cat(one), exp.maps)


def test_iba_on_tokens_equals_iba_on_the_reshaped_grid():
    """IBA through the adapter (token layer) = IBA on an explicit 4-D probe of the same tokens,
    with both the fx head split (block output) and the full forward (norm1, inside a residual)."""
    m = _vit()
    imgs = (torch.rand(48, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 255).byte()
    norm = lambda t: (t - 0.5) / 0.25  # noqa: E731
    x = norm(imgs[:3].float() / 255)
    for layer, mode in (("blocks.1.norm1", "full"), ("blocks.0", "head")):
        est = fit_estimator(m, imgs, norm, layer)
        iba = EXPLAINERS.get("iba")(m, layer, estimator=est, steps=3)
        got = iba(x)
        assert iba.last_mode == mode
        handle = _probe(m, layer)
        try:
            est_p = fit_estimator(m, imgs, norm, "probe")
            _assert_close(est.mean, est_p.mean, 1e-6)
            _assert_close(est.std, est_p.std, 1e-6)
            ref = EXPLAINERS.get("iba")(m, "probe", estimator=est_p, steps=3)(x)
        finally:
            handle.remove()
            del m.probe
        _assert_close(got.maps, ref.maps, 1e-4)


# --------------------------------------------------------------------------------- rollout


def test_rollout_hand_computed_two_layers():
    a1 = torch.tensor([[0.6, 0.4], [0.3, 0.7]])  # Ã1 = (A1 + I)/2 = [[.8, .2], [.15, .85]]
    a2 = torch.tensor([[0.1, 0.9], [0.5, 0.5]])  # Ã2 = [[.55, .45], [.25, .75]]
    r = rollout([a1[None, None], a2[None, None]])
    # R = Ã2·Ã1; class-token row = [.55·.8 + .45·.15, .55·.2 + .45·.85] = [.5075, .4925]
    assert torch.allclose(r[0, 0], torch.tensor([0.5075, 0.4925], dtype=torch.float64))
    assert torch.allclose(rollout_maps(r), torch.tensor([[[0.4925]]], dtype=torch.float64))
    # two heads averaged: the same result when both heads are a1 (resp. a2) ± δ
    d = torch.tensor([[0.1, -0.1], [-0.2, 0.2]])
    r2 = rollout([torch.stack([a1 + d, a1 - d])[None], torch.stack([a2 - d, a2 + d])[None]])
    assert torch.allclose(r2, r)


def _slow_rollout(atts: list[Tensor], fusion: str = "mean", discard: float = 0.0) -> Tensor:
    """Literal loops: fuse heads, drop the smallest entries (stable order, never (0, 0)), add I,
    renormalise rows, multiply R ← Ã·R, class row over patches on the row-major grid."""
    b, heads, n, _ = atts[0].shape
    side = int(round(math.sqrt(n - 1)))
    out = torch.zeros(b, side, side, dtype=torch.float64)
    for i in range(b):
        r = np.eye(n)
        for a in atts:
            a = a[i].double().numpy()
            f = np.zeros((n, n))
            for q in range(n):
                for k in range(n):
                    vals = [a[h, q, k] for h in range(heads)]
                    f[q, k] = {"mean": np.mean, "max": max, "min": min}[fusion](vals)
            drop = sorted(range(n * n), key=lambda j: f.flat[j])[: int(n * n * discard)]
            for j in drop:
                if j != 0:
                    f.flat[j] = 0.0
            f = f + np.eye(n)
            f = f / f.sum(1, keepdims=True)
            new = np.zeros((n, n))
            for q in range(n):
                for k in range(n):
                    new[q, k] = sum(f[q, j] * r[j, k] for j in range(n))
            r = new
        for p in range(side * side):
            out[i, p // side, p % side] = r[0, 1 + p]
    return out


@pytest.mark.parametrize("fusion,discard", [("mean", 0.0), ("max", 0.0), ("min", 0.3)])
def test_rollout_equals_literal_loop(fusion, discard):
    g = torch.Generator().manual_seed(4)
    atts = [torch.rand(2, 3, 10, 10, generator=g).softmax(-1) for _ in range(3)]
    got = rollout_maps(rollout(atts, fusion, discard))
    assert torch.allclose(got, _slow_rollout(atts, fusion, discard), rtol=1e-10, atol=1e-12)


def test_discard_lowest_keeps_class_self_attention():
    f = torch.tensor([[[0.0, 0.5], [0.3, 0.2]]])
    assert torch.equal(discard_lowest(f, 0.5), torch.tensor([[[0.0, 0.5], [0.3, 0.0]]]))
    f = torch.tensor([[[0.1, 0.5], [0.3, 0.2]]])
    assert torch.equal(discard_lowest(f, 0.5), torch.tensor([[[0.1, 0.5], [0.3, 0.0]]]))


def _manual_attention(m: nn.Module, x: Tensor) -> tuple[list[Tensor], Tensor]:
    """SmallViT's forward written out, attention weights computed from the MHA's parameters."""
    with torch.no_grad():
        z = m.tokens(m.patch_embed(x).flatten(2).transpose(1, 2))
        atts = []
        for blk in m.blocks:
            y = blk.norm1(z)
            b, n, d = y.shape
            heads = blk.attn.num_heads
            qkv = y @ blk.attn.in_proj_weight.T + blk.attn.in_proj_bias
            q, k, v = (t.reshape(b, n, heads, d // heads).transpose(1, 2) for t in qkv.chunk(3, -1))
            w = (q @ k.transpose(-1, -2) / math.sqrt(d // heads)).softmax(-1)
            atts.append(w)
            o = (w @ v).transpose(1, 2).reshape(b, n, d)
            z = z + blk.attn.out_proj(o)
            z = z + blk.mlp(blk.norm2(z))
        return atts, m.head(m.norm(z)[:, 0])


def test_rollout_explainer_captures_the_models_attention():
    m = _vit(depth=3, patch=8)  # 4×4 patches
    x = _x(2)
    atts, logits = _manual_attention(m, x)
    exp = EXPLAINERS.get("rollout")(m)(x, also_ground_truth=[1, 2])
    _assert_close(exp.logits, logits, 1e-5)
    assert torch.equal(exp.targets, logits.argmax(1)) and exp.layer == "blocks"
    ref = _slow_rollout(atts).float()
    assert exp.maps.shape == (2, 4, 4)
    _assert_close(exp.maps, ref, 1e-5)
    assert torch.equal(exp.maps_gt, exp.maps)  # class-agnostic
    one = EXPLAINERS.get("rollout")(m, "blocks.2")(x)  # one layer: (A + I)/2 of the last block
    _assert_close(one.maps, _slow_rollout(atts[2:]).float(), 1e-5)
    assert one.layer == "blocks.2"


def test_rollout_on_torchvision_blocks_matches_direct_weights():
    torch.manual_seed(0)
    m = torchvision.models.VisionTransformer(32, 8, 2, 2, 16, 32, num_classes=5).eval()
    nn.init.normal_(m.heads.head.weight)  # torchvision zero-initialises the head
    m.cam_reshape = TokenGrid()
    x = _x(2)
    atts = []
    hooks = [
        blk.ln_1.register_forward_hook(
            lambda mod, i, y, blk=blk: atts.append(
                blk.self_attention(y, y, y, need_weights=True, average_attn_weights=False)[1]
            )
        )
        for blk in m.encoder.layers
    ]
    with torch.no_grad():
        logits = m(x)
    for h in hooks:
        h.remove()
    exp = EXPLAINERS.get("rollout")(m)(x)
    _assert_close(exp.logits, logits, 1e-5)
    _assert_close(exp.maps, _slow_rollout(atts).float(), 1e-5)
    assert exp.layer == "encoder.layers"


def _snapshot(m: nn.Module):
    return (
        [mod.training for mod in m.modules()],
        [p.requires_grad for p in m.parameters()],
        [
            (k, tuple(getattr(mod, k)))
            for mod in m.modules()
            for k in ("_forward_hooks", "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs")
        ],
    )


class _Boom(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        raise RuntimeError("head exploded")


@pytest.mark.parametrize("method", ["rollout", "gradcam"])
def test_state_restored_also_on_error(method):
    m = _vit().train()
    m.blocks[0].eval()
    before = _snapshot(m)
    EXPLAINERS.get(method)(m)(_x(2))
    assert _snapshot(m) == before and all(p.grad is None for p in m.parameters())
    m.head = _Boom()
    before = _snapshot(m)
    with pytest.raises(RuntimeError, match="head exploded"):
        EXPLAINERS.get(method)(m)(_x(2))
    assert _snapshot(m) == before and m.training and not m.blocks[0].training


def test_rollout_batches_and_errors():
    m = _vit()
    imgs = (torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 255).byte()
    norm = lambda t: (t - 0.5) / 0.25  # noqa: E731
    a = explain_images(m, imgs, norm, "rollout", batch_size=2)
    b = explain_images(m, imgs, norm, "rollout", batch_size=5)
    _assert_close(a.maps, b.maps, 1e-6)
    with pytest.raises(AuglensError, match="nn.MultiheadAttention"):
        EXPLAINERS.get("rollout")(build_model("small_resnet", 10))
    with pytest.raises(AuglensError, match="target_layer=None rolls out"):
        EXPLAINERS.get("rollout")(m, "blocks.0.norm1")
    with pytest.raises(AuglensError, match="head_fusion"):
        EXPLAINERS.get("rollout")(m, head_fusion="median")
    with pytest.raises(AuglensError, match="discard_ratio"):
        EXPLAINERS.get("rollout")(m, discard_ratio=1.0)
