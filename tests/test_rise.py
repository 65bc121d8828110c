"""RISE against the reference's mask construction (skimage) and a per-mask loop."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from helpers import random_model

from auglens.errors import AuglensError
from auglens.explain import EXPLAINERS, RISE


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _model(seed: int = 0) -> torch.nn.Module:
    m = random_model("small_resnet", 10, seed=seed, width=8)
    with torch.no_grad():
        m.fc.weight.mul_(20)  # probabilities that react to masking
    return m


def test_masks_follow_the_reference_construction() -> None:
    """eclique/RISE ``generate_masks`` with our grids and shifts: skimage bilinear resize of the
    grid to (s + 1)·cell, crop at the shift."""
    resize = pytest.importorskip("skimage.transform").resize
    rise = RISE(_model(), n_masks=12, grid_size=5, p=0.4, seed=3)
    for h, w in ((20, 20), (19, 23)):
        got = rise.masks(h, w)
        cell = np.ceil(np.array([h, w]) / 5)
        up = ((5 + 1) * cell).astype(int)
        shifts = rise.shifts(h, w)
        assert (shifts[:, 0] < cell[0]).all() and (shifts[:, 1] < cell[1]).all()
        for i in range(12):
            x, y = shifts[i].tolist()
            grid = rise.grids[i].numpy().astype("float32")
            ref = resize(grid, up, order=1, mode="reflect", anti_aliasing=False)
            ref = ref[x : x + h, y : y + w]
            np.testing.assert_allclose(got[i].numpy(), ref, rtol=0, atol=1e-6)
    assert rise.grids.float().mean().item() == pytest.approx(0.4, abs=0.1)


def loop_rise(model, x, target, masks, p):
    """One image, one mask at a time (float64): Σ_n softmax(model(mask_n · x))[target] · mask_n
    / (N · p)."""
    sal = torch.zeros(x.shape[1:], dtype=torch.float64)
    with torch.no_grad():
        for mk in masks:
            prob = torch.softmax(model((x * mk)[None]).double(), 1)[0, target]
            sal += prob * mk.double()
    return sal / (masks.shape[0] * p)


def test_saliency_equals_per_mask_loop() -> None:
    model = _model()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    rise = EXPLAINERS.get("rise")(model, n_masks=40, grid_size=4, p=0.5, seed=7, max_batch=32,
                                  channels_last=False)  # fmt: skip
    exp = rise(x, also_ground_truth=torch.tensor([1, 2, 3]))
    masks = rise.masks(16, 16)
    assert exp.layer == "input" and exp.method == "rise" and exp.maps.shape == (3, 16, 16)
    assert torch.equal(exp.targets, model(x).argmax(1))
    for i in range(3):
        ref = loop_rise(model, x[i], int(exp.targets[i]), masks, 0.5)
        torch.testing.assert_close(exp.maps[i].double(), ref, rtol=1e-5, atol=1e-7)
        ref_gt = loop_rise(model, x[i], i + 1, masks, 0.5)
        torch.testing.assert_close(exp.maps_gt[i].double(), ref_gt, rtol=1e-5, atol=1e-7)
    assert exp.maps.std() > 0.01 * exp.maps.mean()  # not a flat map: the test is not vacuous


def test_batch_chunking_layout_and_models_share_masks() -> None:
    model = _model()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    kw = dict(n_masks=30, grid_size=4, p=0.3, seed=1)
    full = RISE(model, max_batch=64, channels_last=False, **kw)(x)
    small = RISE(model, max_batch=7, channels_last=True, cache_mb=0, **kw)(x)
    one = RISE(model, **kw)(x[2:3])
    torch.testing.assert_close(small.maps, full.maps, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(one.maps, full.maps[2:3], rtol=1e-5, atol=1e-7)
    other = RISE(_model(seed=5), **kw)
    assert torch.equal(other.masks(16, 16), RISE(model, **kw).masks(16, 16))
    assert not torch.equal(RISE(model, **{**kw, "seed": 2}).masks(16, 16), other.masks(16, 16))
    m = RISE(model, **kw).masks(16, 16, 5, 9)
    assert torch.equal(m, RISE(model, cache_mb=0, **kw).masks(16, 16)[5:9])


def test_state_and_parameters() -> None:
    model = _model().train()
    before = [mod.training for mod in model.modules()]
    RISE(model, n_masks=4, grid_size=2)(torch.randn(1, 3, 16, 16))
    assert [mod.training for mod in model.modules()] == before
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    for bad, match in (({"n_masks": 0}, "n_masks"), ({"grid_size": 0}, "grid_size"),
                       ({"p": 0.0}, "p must be"), ({"p": 1.5}, "p must be"),
                       ({"seed": -1}, "seed"), ({"max_batch": 0}, "max_batch")):  # fmt: skip
        with pytest.raises(AuglensError, match=match):
            RISE(model, **bad)
    assert EXPLAINERS.describe("rise")["params"]["n_masks"] == 6000
    assert math.isclose(RISE(model).p, 0.1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_cpu() -> None:
    model = _model()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    kw = dict(n_masks=50, grid_size=4, p=0.5, seed=2)
    cpu = RISE(model, **kw)(x, also_ground_truth=torch.tensor([0, 1]))
    gpu = RISE(model.cuda(), **kw)(x.cuda(), also_ground_truth=torch.tensor([0, 1]))
    assert gpu.maps.device.type == "cuda"
    torch.testing.assert_close(gpu.maps.cpu(), cpu.maps, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(gpu.maps_gt.cpu(), cpu.maps_gt, rtol=1e-3, atol=1e-5)
