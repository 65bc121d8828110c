"""Network Dissection: exact thresholds, IoU against a slow per-image loop, a hand-made detector,
unique-concept counting, caching by checkpoint content, model state guard."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers import random_model
from torch import Tensor, nn

from auglens.errors import AuglensError
from auglens.metrics.dissection import (
    DissectionResult,
    bilinear_matrix,
    dissect,
    dissect_cached,
    dissection_cache_key,
    float32_floor,
    quantile_from_tail,
    tail_size,
    upsample_maps,
)
from auglens.models import build_model, save_weights

# ----------------------------------------------------------------------------- fixtures


def _tiny_model(seed: int = 0) -> nn.Module:
    """SmallResNet width 4 (layer3: 16 units at input/4) with non-trivial BN statistics."""
    return random_model("small_resnet", 3, seed, bias_scale=0.2, width=4)


NAMES = ["unlabelled", "disc", "box", "bar", "stripes", "dots", "red", "blue"]
CATS = ["", "object", "object", "object", "texture", "texture", "color", "color"]


def _probe(n: int = 7, size: int = 16, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Random images and 3 concept layers: objects (absent from some images), textures in
    blocks, colours; id 6 ("red") appears in the texture and colour layers (a shared id)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    conc = torch.zeros(n, 3, size, size, dtype=torch.int16)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for i in range(n):
        if i % 3 != 2:  # images 2, 5, ... carry no object label at all
            cy, cx = torch.randint(3, size - 3, (2,), generator=g).tolist()
            r = 2 + i % 3
            cid = 1 + int(torch.randint(0, 3, (1,), generator=g))
            conc[i, 0][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = cid
        blocks = torch.randint(0, 4, (size // 4, size // 4), generator=g)
        tex = torch.tensor([0, 4, 5, 6])[blocks].repeat_interleave(4, 0)  # 0 = unlabelled
        conc[i, 1] = tex.repeat_interleave(4, 1).to(torch.int16)
        col = torch.randint(0, 3, (size, size), generator=g)
        conc[i, 2] = torch.tensor([0, 6, 7])[col].to(torch.int16)
    return images, conc


def _normalize(x: Tensor) -> Tensor:
    return (x - 0.5) / 0.25


def _activations(model: nn.Module, images: Tensor, layer: str) -> Tensor:
    out = []
    h = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: out.append(o))
    try:
        with torch.no_grad():
            model(_normalize(images.float() / 255))
    finally:
        h.remove()
    return out[0].double()


def _np_bilinear(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Reference bilinear resize (align_corners=False, edge clamp), float64, by the formula."""
    h, w = a.shape
    out = np.empty(size)
    for y in range(size[0]):
        sy = max((y + 0.5) * h / size[0] - 0.5, 0.0)
        y0 = min(int(math.floor(sy)), h - 1)
        y1, ly = min(y0 + 1, h - 1), sy - y0
        for x in range(size[1]):
            sx = max((x + 0.5) * w / size[1] - 0.5, 0.0)
            x0 = min(int(math.floor(sx)), w - 1)
            x1, lx = min(x0 + 1, w - 1), sx - x0
            top = (1 - lx) * a[y0, x0] + lx * a[y0, x1]
            bot = (1 - lx) * a[y1, x0] + lx * a[y1, x1]
            out[y, x] = (1 - ly) * top + ly * bot
    return out


def _slow_dissection(acts: np.ndarray, conc: np.ndarray, q: float) -> dict[str, np.ndarray]:
    """Python loops over images, units and concepts: thresholds, I, |L|, and the unions."""
    n, u = acts.shape[:2]
    c = len(NAMES)
    size = conc.shape[-2:]
    cats = sorted({g for g in CATS[1:]})
    thr = np.quantile(acts.transpose(1, 0, 2, 3).reshape(u, -1), q, axis=1)
    inter = np.zeros((u, c), dtype=np.int64)
    lab_px = np.zeros(c, dtype=np.int64)
    unit_px = np.zeros((n, u), dtype=np.int64)
    touch = {g: np.zeros((n, u), dtype=bool) for g in cats}  # M_k meets a label of category g
    for i in range(n):
        labels = [(conc[i] == k).any(0) for k in range(c)]
        for k in range(1, c):
            lab_px[k] += labels[k].sum()
        for j in range(u):
            mask = _np_bilinear(acts[i, j], size) > thr[j]
            unit_px[i, j] = mask.sum()
            for k in range(1, c):
                inter[j, k] += (mask & labels[k]).sum()
                touch[CATS[k]][i, j] |= bool((mask & labels[k]).any())
    has = {g: np.array([any((conc[i] == k).any() for k in range(1, c) if CATS[k] == g)
                        for i in range(n)]) for g in cats}  # fmt: skip
    union_all = unit_px.sum(0)[:, None] + lab_px[None] - inter
    union_cat = np.stack(
        [unit_px[has[CATS[k]]].sum(0) + lab_px[k] - inter[:, k] if k else inter[:, 0] * 0
         for k in range(c)], 1,
    )  # fmt: skip
    union_nd = np.stack(
        [(unit_px * touch[CATS[k]]).sum(0) + lab_px[k] - inter[:, k] if k else inter[:, 0] * 0
         for k in range(c)], 1,
    )  # fmt: skip
    return {
        "thr": thr, "inter": inter, "lab_px": lab_px,
        "all": union_all, "category": union_cat, "netdissect": union_nd,
    }  # fmt: skip


# ----------------------------------------------------------------------------- thresholds


@pytest.mark.parametrize("n", [1, 2, 7, 200, 1001])
@pytest.mark.parametrize("q", [0.0, 0.5, 0.9, 0.995, 1.0])
def test_quantile_from_tail_bit_equals_torch_quantile(n: int, q: float) -> None:
    g = torch.Generator().manual_seed(n)
    x = torch.randn(5, n, generator=g).round(decimals=1)  # many ties
    top = x.topk(tail_size(n, q), 1).values
    assert torch.equal(quantile_from_tail(top, n, q), torch.quantile(x.double(), q, dim=1))


def test_float32_floor_preserves_the_strict_comparison() -> None:
    t = torch.tensor([0.1, -0.3, 1.0, 2.5e-8, -7.123456789, 0.0], dtype=torch.float64)
    f = float32_floor(t)
    up = f.nextafter(torch.full_like(f, math.inf))
    # f is the largest float32 <= t, so for float32 x: x > t  <=>  x >= up  <=>  x > f
    assert f.dtype == torch.float32
    assert bool((f.double() <= t).all()) and bool((up.double() > t).all())


class _Unshuffle(nn.Module):
    """Exact, layout-independent features: ReLU of pixel-unshuffled inputs (12 units, many ties
    from uint8 pixels and ReLU zeros)."""

    default_target_layer = "feat"

    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Sequential(nn.PixelUnshuffle(2), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        return self.feat(x).mean((2, 3))


@pytest.mark.parametrize("q", [0.995, 0.9, 0.5])
def test_streamed_threshold_equals_quantile_over_all_activations(q: float) -> None:
    images, conc = _probe(n=13)
    model = _Unshuffle()
    r = dissect(model, images, conc, _normalize, NAMES, CATS, batch_size=3, quantile=q)
    acts = model.feat(_normalize(images.float() / 255))  # (N, 12, 8, 8)
    ref = torch.quantile(acts.transpose(0, 1).reshape(12, -1).double(), q, dim=1)
    assert r.thresholds.dtype == torch.float64
    assert torch.equal(r.thresholds, ref)
    assert r.info["feature_size"] == [8, 8] and r.info["label_size"] == [16, 16]


# ----------------------------------------------------------------------------- IoU


def test_upsample_maps_matches_interpolate() -> None:
    g = torch.Generator().manual_seed(0)
    for h, w, size in [(4, 4, (16, 16)), (7, 5, (112, 60)), (8, 8, (5, 3)), (3, 3, (3, 3))]:
        maps = torch.randn(6, h, w, generator=g)
        ref = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        torch.testing.assert_close(upsample_maps(maps, size), ref, rtol=0, atol=2e-6)
    assert torch.allclose(bilinear_matrix(4, 16).sum(1), torch.ones(16, dtype=torch.float64))


@pytest.mark.parametrize("batch_size,chunk_elems", [(3, 1 << 23), (7, 300)])
def test_counts_and_iou_equal_slow_loop(batch_size: int, chunk_elems: int) -> None:
    images, conc = _probe(n=7)
    model = _tiny_model()
    q = 0.9
    r = dissect(
        model, images, conc, _normalize, NAMES, CATS, "layer3", batch_size=batch_size,
        quantile=q, channels_last=False, chunk_elems=chunk_elems,
    )  # fmt: skip
    acts = _activations(model, images, "layer3").numpy()
    assert acts.shape == (7, 16, 4, 4)
    ref = _slow_dissection(acts, conc.numpy(), q)
    np.testing.assert_allclose(r.thresholds.numpy(), ref["thr"], rtol=1e-6, atol=1e-7)
    inter = r.intersection.numpy()
    assert inter[:, 1:].sum() > 50  # non-trivial overlaps
    np.testing.assert_array_equal(inter[:, 1:], ref["inter"][:, 1:])
    np.testing.assert_array_equal(r.label_pixels.numpy()[1:], ref["lab_px"][1:])
    for union in ("all", "category", "netdissect"):
        u = r.union_counts(union).numpy()[:, 1:]
        np.testing.assert_array_equal(u, ref[union][:, 1:])
        iou = r.iou(union).numpy()
        den = ref[union][:, 1:]
        want = np.where(den > 0, ref["inter"][:, 1:] / np.maximum(den, 1), 0.0)  # 0 if empty
        np.testing.assert_allclose(iou[:, 1:], want, rtol=1e-12)
        assert (iou[:, 0] == 0).all()
    # the conventions differ here: some images carry no object label, masks miss labels
    assert not np.array_equal(ref["all"][:, 1:4], ref["category"][:, 1:4])
    assert not np.array_equal(ref["category"][:, 1:], ref["netdissect"][:, 1:])
    assert r.info["forward_passes"] == 1 and 0 < r.info["active_map_fraction"] < 1


def test_vit_token_layer_is_dissected_on_its_patch_grid() -> None:
    """A ViT's token layer (B, 1 + h·w, D): units = the D channels on the patch grid (class token
    dropped, patch i·w + j at [i, j]), against the slow loop on the literally reshaped tokens."""
    images, conc = _probe(n=5)
    torch.manual_seed(0)
    vit = build_model("small_vit", 3, image_size=16, width=8, depth=1, heads=2).eval()
    r = dissect(vit, images, conc, _normalize, NAMES, CATS, batch_size=2, quantile=0.9)
    tokens = _activations(vit, images, "blocks.0.norm1")
    acts = tokens[:, 1:].reshape(5, 4, 4, 8).permute(0, 3, 1, 2).numpy()
    ref = _slow_dissection(acts, conc.numpy(), 0.9)
    np.testing.assert_allclose(r.thresholds.numpy(), ref["thr"], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(r.intersection.numpy()[:, 1:], ref["inter"][:, 1:])


def test_second_forward_gives_the_same_counts() -> None:
    images, conc = _probe(n=7)
    model = _tiny_model()
    kw = dict(batch_size=3, quantile=0.9, channels_last=False)
    a = dissect(model, images, conc, _normalize, NAMES, CATS, **kw)
    b = dissect(
        model, images, conc, _normalize, NAMES, CATS, activation_cache_bytes=0, stop_early=False,
        **kw,
    )  # fmt: skip
    assert a.info["activations_cached"] and not b.info["activations_cached"]
    assert b.info["forward_passes"] == 2
    assert torch.equal(a.thresholds, b.thresholds)
    assert torch.equal(a.intersection, b.intersection)
    assert torch.equal(a.unit_pixels_by_category, b.unit_pixels_by_category)
    assert torch.equal(a.unit_pixels_touching, b.unit_pixels_touching)


class _MaskModel(nn.Module):
    """Target layer ``feat`` = the normalised image itself: channel 0 carries the concept mask."""

    default_target_layer = "feat"

    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.feat(x).mean((2, 3))


def _mask_probe(n: int, per_image: int, size: int = 20, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Concept 1 ("disc", object) on ``per_image`` random pixels of each image, encoded in
    channel 0 as 200-255 (noise 0-100 elsewhere); colour concepts 6/7 on random halves."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 101, (n, 3, size, size), generator=g, dtype=torch.uint8)
    images[:, 1:] = torch.randint(0, 256, (n, 2, size, size), generator=g, dtype=torch.uint8)
    conc = torch.zeros(n, 2, size, size, dtype=torch.int16)
    for i in range(n):
        idx = torch.randperm(size * size, generator=g)[:per_image]
        conc[i, 0].view(-1)[idx] = 1
        images[i, 0].view(-1)[idx] = torch.randint(200, 256, (per_image,), generator=g).to(
            torch.uint8
        )
        conc[i, 1, :, : size // 2] = 6 + i % 2
    return images, conc


def test_hand_made_unit_is_an_exact_detector() -> None:
    # the concept covers exactly 0.5 % of the pixels → M_0 is exactly the mask → IoU = 1
    images, conc = _mask_probe(n=50, per_image=2)
    r = dissect(_MaskModel(), images, conc, lambda x: x, NAMES, CATS, batch_size=16)
    t = r.table()
    assert {"unit", "concept", "category", "iou", "detector"} <= set(t.columns)
    row = t.iloc[0]
    assert (row.concept, row.category, row.iou, row.detector) == ("disc", "object", 1.0, True)
    assert not t.detector.iloc[1:].any()
    assert r.unique_concepts_per_category()["object"] == 1
    assert r.unique_concepts()["object"] == ["disc"]


def test_hand_made_unit_detects_a_larger_concept() -> None:
    # concept on 5 % of the pixels: M_0 is its top ≤ 0.5 % (ties) → IoU ≤ 0.1, still > 0.04
    images, conc = _mask_probe(n=40, per_image=20, seed=1)
    r = dissect(_MaskModel(), images, conc, lambda x: x, NAMES, CATS, batch_size=8)
    t = r.table()
    assert t.concept[0] == "disc" and t.detector[0]
    ch0 = images[:, 0].double() / 255
    m0 = ch0 > torch.quantile(ch0.flatten(), 0.995)
    disc = conc[:, 0] == 1
    assert t.iou[0] == (m0 & disc).sum().item() / (m0 | disc).sum().item()
    assert 0.06 < t.iou[0] <= 0.1
    assert t.iou[1:].max() < 0.04


# ----------------------------------------------------------------------------- result


def _hand_result(iou_threshold: float = 0.04) -> DissectionResult:
    """5 units, concepts a, b (object), c (color), d (texture), e (scene); union="all" with
    |M_k| = |L_c| = 100, so IoU = I / (200 - I)."""
    names = ["unlabelled", "a", "b", "c", "d", "e"]
    cats = ["", "object", "object", "color", "texture", "scene"]
    inter = torch.zeros(5, 6, dtype=torch.long)
    inter[0, 1] = 100  # IoU 1
    inter[1, 1] = 20  # 0.111
    inter[1, 2] = 10
    inter[2, 2] = 10  # 10/190 = 0.0526
    inter[3, 3] = 9  # 0.0471
    inter[4, 4] = 7  # 0.0361: not a detector
    inter[4, 5] = 2
    return DissectionResult(
        layer="x", quantile=0.995, iou_threshold=iou_threshold, union="all",
        thresholds=torch.zeros(5, dtype=torch.float64), intersection=inter,
        label_pixels=torch.full((6,), 100, dtype=torch.long),
        unit_pixels=torch.full((5,), 100, dtype=torch.long),
        unit_pixels_by_category=torch.full((5, 4), 100, dtype=torch.long),
        unit_pixels_touching=torch.full((5, 4), 100, dtype=torch.long),
        concept_names=names, concept_categories=cats,
        categories=["object", "scene", "texture", "color"],
    )  # fmt: skip


def test_unique_concepts_per_category_on_a_hand_made_result() -> None:
    r = _hand_result()
    t = r.table()
    assert t.concept.tolist() == ["a", "a", "b", "c", "d"]
    assert t.detector.tolist() == [True, True, True, True, False]
    assert t.iou[2] == 10 / 190
    assert r.unique_concepts_per_category() == {
        "object": 2, "part": 0, "scene": 0, "material": 0, "texture": 0, "color": 1,
    }  # fmt: skip
    assert r.summary()["detectors"] == 4 and r.summary()["unique_concepts"] == 3
    # strictly greater than the threshold
    r2 = _hand_result(iou_threshold=10 / 190)
    assert r2.table().detector.tolist() == [True, True, False, False, False]
    assert r2.unique_concepts_per_category()["object"] == 1
    assert len(r2.detectors()) == 2


# ----------------------------------------------------------------------------- caching


def test_cache_hit_and_key_follows_checkpoint_content(tmp_path) -> None:
    images, conc = _probe(n=7)
    model = _tiny_model()
    ckpt = tmp_path / "w.safetensors"
    save_weights(model, ckpt)
    kw = dict(checkpoint_path=ckpt, cache_dir=tmp_path / "cache", quantile=0.9, batch_size=4)
    first = dissect_cached(model, images, conc, _normalize, NAMES, CATS, **kw)
    assert first.info["cache"] == "miss"
    # another model object with the same weights (a different architecture name would not matter)
    again = dissect_cached(_tiny_model(), images, conc, _normalize, NAMES, CATS, **kw)
    assert again.info["cache"] == "hit" and again.info["cache_key"] == first.info["cache_key"]
    pd.testing.assert_frame_equal(again.table(), first.table())
    assert torch.equal(again.intersection, first.intersection)
    assert torch.equal(again.thresholds, first.thresholds)
    for name in ("label_pixels", "unit_pixels", "unit_pixels_by_category", "unit_pixels_touching"):
        assert torch.equal(getattr(again, name), getattr(first, name))
    assert again.concept_names == NAMES and again.concept_categories == CATS
    assert again.unique_concepts_per_category() == first.unique_concepts_per_category()

    other = _tiny_model(seed=1)  # changed weights → changed file → changed key
    save_weights(other, ckpt)
    third = dissect_cached(other, images, conc, _normalize, NAMES, CATS, **kw)
    assert third.info["cache"] == "miss"
    assert third.info["cache_key"] != first.info["cache_key"]
    assert len(list((tmp_path / "cache").glob("dissection-*.parquet"))) == 2
    # probe set and settings are part of the key
    fourth = dissect_cached(other, images[:6], conc[:6], _normalize, NAMES, CATS, **kw)
    assert fourth.info["cache"] == "miss"
    keys = {
        dissection_cache_key("s", "l", 0.995, 0.04, "p", "n"),
        dissection_cache_key("s2", "l", 0.995, 0.04, "p", "n"),
        dissection_cache_key("s", "l2", 0.995, 0.04, "p", "n"),
        dissection_cache_key("s", "l", 0.99, 0.04, "p", "n"),
        dissection_cache_key("s", "l", 0.995, 0.05, "p", "n"),
        dissection_cache_key("s", "l", 0.995, 0.04, "p2", "n"),
        dissection_cache_key("s", "l", 0.995, 0.04, "p", "n2"),
    }
    assert len(keys) == 7
    # the union convention is read from the stored counts, not recomputed
    nd = dissect_cached(other, images, conc, _normalize, NAMES, CATS, union="netdissect", **kw)
    assert nd.info["cache"] == "hit" and nd.union == "netdissect"
    assert torch.equal(nd.iou(), third.iou("netdissect"))
    # a different normalisation is a different probe input
    shifted = dissect_cached(other, images, conc, lambda x: _normalize(x) + 1, NAMES, CATS, **kw)
    assert shifted.info["cache"] == "miss"


def test_cache_refuses_a_model_that_does_not_hold_the_checkpoint(tmp_path) -> None:
    images, conc = _probe(n=4)
    ckpt = tmp_path / "w.safetensors"
    save_weights(_tiny_model(seed=0), ckpt)
    with pytest.raises(AuglensError, match="differ from checkpoint"):
        dissect_cached(
            _tiny_model(seed=1), images, conc, _normalize, NAMES, CATS,
            checkpoint_path=ckpt, cache_dir=tmp_path / "c",
        )  # fmt: skip
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").iterdir())


def test_corrupt_cache_file_is_recomputed(tmp_path) -> None:
    images, conc = _probe(n=4)
    model = _tiny_model()
    ckpt = tmp_path / "w.safetensors"
    save_weights(model, ckpt)
    kw = dict(checkpoint_path=ckpt, cache_dir=tmp_path / "c", quantile=0.9)
    first = dissect_cached(model, images, conc, _normalize, NAMES, CATS, **kw)
    with open(first.info["cache_file"], "wb") as f:
        f.write(b"not parquet")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        again = dissect_cached(model, images, conc, _normalize, NAMES, CATS, **kw)
    assert again.info["cache"] == "miss" and any("corrupt" in str(x.message) for x in w)
    pd.testing.assert_frame_equal(again.table(), first.table())
    assert dissect_cached(model, images, conc, _normalize, NAMES, CATS, **kw).info["cache"] == (
        "hit"
    )


# ----------------------------------------------------------------------------- state, errors


class _FailOnSecondBatch(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.default_target_layer = "inner.layer3"

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("boom")
        return self.inner(x)


def test_model_state_restored_also_on_errors() -> None:
    images, conc = _probe(n=7)
    model = _tiny_model().train()
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    r = dissect(model, images, conc, _normalize, NAMES, CATS, batch_size=3)
    assert r.n_units == 16 and r.layer == "layer3"
    assert not any(t.is_inference() for t in (r.thresholds, r.intersection, r.unit_pixels))
    assert all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, buffers[k]) for k, v in model.state_dict().items())  # eval during
    assert not any(m._forward_hooks for m in model.modules())

    wrapped = _FailOnSecondBatch(_tiny_model()).train()
    with pytest.raises(RuntimeError, match="boom"):
        dissect(wrapped, images, conc, _normalize, NAMES, CATS, batch_size=3)
    assert all(m.training for m in wrapped.modules())
    assert not any(m._forward_hooks for m in wrapped.modules())
    assert all(p.requires_grad for p in wrapped.parameters())


def test_input_errors() -> None:
    images, conc = _probe(n=4)
    model = _tiny_model()
    with pytest.raises(AuglensError, match="uint8"):
        dissect(model, images.float(), conc, _normalize, NAMES, CATS)
    with pytest.raises(AuglensError, match="concept ids"):
        dissect(model, images, conc + 10, _normalize, NAMES, CATS)
    with pytest.raises(AuglensError, match="same non-zero number"):
        dissect(model, images, conc[:3], _normalize, NAMES, CATS)
    with pytest.raises(AuglensError, match="quantile"):
        dissect(model, images, conc, _normalize, NAMES, CATS, quantile=1.5)
    with pytest.raises(AuglensError, match="union"):
        dissect(model, images, conc, _normalize, NAMES, CATS, union="any")  # type: ignore[arg-type]
    with pytest.raises(AuglensError, match="no module"):
        dissect(model, images, conc, _normalize, NAMES, CATS, layer="nope")
    with pytest.raises(AuglensError, match=r"\(B, units, h, w\)"):
        dissect(model, images, conc, _normalize, NAMES, CATS, layer="fc")


def test_on_the_shapes_dataset_contract() -> None:
    from auglens.data import build_shapes
    from auglens.data.base import CONCEPT_CATEGORIES

    d = build_shapes(n_train=8, n_val=8, n_test=24)
    model = _tiny_model()
    r = dissect(
        model, d.test.images, d.test.concepts, d.normalize, d.concept_names,
        d.concept_categories, batch_size=10,
    )  # fmt: skip
    t = r.table()
    assert len(t) == 16 and set(t.category) <= set(CONCEPT_CATEGORIES)
    assert r.info["label_size"] == [32, 32] and r.info["feature_size"] == [8, 8]
    # every shapes image labels every category (object, texture, color), so the conventions agree
    assert torch.equal(r.union_counts("category"), r.union_counts("all"))
    # label pixels: each labelled pixel carries one shape and one object colour, or one texture
    # and one background colour
    n_shape = int(r.label_pixels[1:11].sum())
    assert n_shape == int(d.test.masks.sum()) == int(r.label_pixels[11:19].sum())
    assert set(r.unique_concepts_per_category()) == set(CONCEPT_CATEGORIES)
