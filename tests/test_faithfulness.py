"""Deletion/insertion faithfulness (SPEC §5) against a plain per-image, per-step loop."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torchvision.transforms.functional import gaussian_blur

from auglens.errors import AuglensError
from auglens.explain.base import upsample
from auglens.metrics.faithfulness import (
    auc,
    deletion_insertion_curves,
    faithfulness_scores,
    pixel_counts,
    pixel_order,
    random_orders,
    summarize_scores,
)
from auglens.models import build_model

N_STEPS = 8


def make_model(seed: int) -> torch.nn.Module:
    """A small random-init ResNet whose probabilities react clearly to occlusion."""
    torch.manual_seed(seed)
    model = build_model("small_resnet", 10, width=8).eval()
    with torch.no_grad():
        model.fc.weight.mul_(40)
        model.fc.bias.zero_()
    return model


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny forwards (one image at a time in the loop reference) stall on OpenMP barriers when the
    two shared cores are busy; one intra-op thread keeps the module fast."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return make_model(0)


def make_batch(n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = gaussian_blur(torch.randn(n, 3, 32, 32, generator=g), [5, 5], [1.5, 1.5]) * 2
    maps = upsample(torch.rand(n, 8, 8, generator=g), 32)  # a CAM-like map at input resolution
    return images, maps


# ------------------------------------------------------------------------------ slow reference


def loop_curve(
    model: torch.nn.Module,
    image: torch.Tensor,
    order: np.ndarray,
    target: int,
    kind: str,
    n_steps: int,
) -> np.ndarray:
    """One image, one pixel order: build each perturbed image by hand, one forward per step."""
    c, h, w = image.shape
    p = h * w
    blurred = gaussian_blur(image[None], [11, 11], [5.0, 5.0])[0]
    scores = []
    for k in range(n_steps + 1):
        count = k * p // n_steps
        if kind == "deletion":
            x = image.clone().reshape(c, p)
            x[:, torch.as_tensor(order[:count])] = 0.0  # all channels of each chosen pixel
        else:
            x = blurred.clone().reshape(c, p)
            chosen = torch.as_tensor(order[:count])
            x[:, chosen] = image.reshape(c, p)[:, chosen]
        with torch.no_grad():
            logits = model(x.reshape(1, c, h, w))
        scores.append(torch.softmax(logits.double(), 1)[0, target].item())
    return np.array(scores)


def loop_auc(curve: np.ndarray) -> float:
    return float(
        sum((curve[i] + curve[i + 1]) / 2 / (len(curve) - 1) for i in range(len(curve) - 1))
    )


# ------------------------------------------------------------------------------------ the tests


def test_auc_of_constant_and_linear_curves() -> None:
    assert auc(torch.full((3, 17), 0.37, dtype=torch.float64)).tolist() == pytest.approx(
        [0.37] * 3, abs=1e-15
    )
    assert auc(torch.linspace(0, 1, 9)).item() == pytest.approx(0.5, abs=1e-15)
    curves = np.random.default_rng(0).random((4, 2, 13))
    rise = (curves.sum(-1) - curves[..., 0] / 2 - curves[..., -1] / 2) / 12
    np.testing.assert_allclose(auc(curves).numpy(), rise, rtol=1e-14)
    with pytest.raises(AuglensError, match="2 points"):
        auc(torch.ones(3, 1))


def test_pixel_counts_and_stable_orders() -> None:
    assert pixel_counts(1024, 16).tolist() == [64 * k for k in range(17)]
    assert pixel_counts(10, 3).tolist() == [0, 3, 6, 10]
    m = torch.tensor([[[1.0, 3.0], [3.0, 1.0]]])
    assert pixel_order(m, "morf").tolist() == [[1, 2, 0, 3]]
    assert pixel_order(m, "lerf").tolist() == [[0, 3, 1, 2]]


def test_curves_equal_per_image_per_step_loop(model: torch.nn.Module) -> None:
    images, maps = make_batch(3)
    targets = torch.tensor([6, 2, 9])
    ids = [11, 5, 40]
    out = deletion_insertion_curves(
        model, images, maps, targets, n_steps=N_STEPS, n_random=2, seed=3, image_ids=ids,
        max_batch=37, channels_last=False,
    )  # fmt: skip
    assert set(out) == {
        (k, o) for k in ("deletion", "insertion") for o in ("morf", "lerf", "random")
    }
    n_mid = 3 * (1 + 1 + 2) * (N_STEPS - 1)
    assert out.settings["n_forward"] == 3 + 3 + 1 + 2 * n_mid
    assert sum(out.settings["batch_sizes"]) == out.settings["n_forward"]
    aucs = faithfulness_scores(out)
    tiled = np.tile(np.arange(1024), (2, 1))
    for i in range(3):
        flat = maps[i].reshape(-1).numpy()
        orders = {
            "morf": [np.argsort(-flat, kind="stable")],
            "lerf": [np.argsort(flat, kind="stable")],
            "random": list(np.random.default_rng([3, ids[i]]).permuted(tiled, axis=1)),
        }
        assert np.array_equal(out.random_orders[i].numpy(), np.stack(orders["random"]))
        for kind in ("deletion", "insertion"):
            for name, perms in orders.items():
                ref = [
                    loop_curve(model, images[i], o, int(targets[i]), kind, N_STEPS) for o in perms
                ]
                got = out[(kind, name)][i].numpy()
                np.testing.assert_allclose(got, np.mean(ref, 0), rtol=0, atol=2e-6)
                if name == "random":
                    np.testing.assert_allclose(
                        out.per_permutation[kind][i].numpy(), np.stack(ref), rtol=0, atol=2e-6
                    )
                ref_auc = np.mean([loop_auc(r) for r in ref])
                assert abs(aucs[f"auc_{kind}_{name}"][i].item() - ref_auc) <= 2e-6
    # deletion really changes the score in this model (the test is not vacuous)
    assert (out[("deletion", "morf")][:, 0] - out[("deletion", "morf")][:, -1]).abs().max() > 0.05


def test_channels_last_and_chunking_do_not_change_curves(model: torch.nn.Module) -> None:
    images, maps = make_batch(4, seed=2)
    targets = torch.tensor([0, 6, 3, 6])
    a = deletion_insertion_curves(model, images, maps, targets, n_steps=4, n_random=1)
    b = deletion_insertion_curves(
        model, images, maps, targets, n_steps=4, n_random=1, max_batch=5, channels_last=False
    )
    assert a.settings["channels_last"] and not b.settings["channels_last"]
    assert len(b.settings["batch_sizes"]) > len(a.settings["batch_sizes"])
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=2e-6)


def test_random_orders_depend_on_image_id_not_on_the_model() -> None:
    images, maps = make_batch(4, seed=3)
    ids = [7, 3, 7, 100]
    kw = dict(orders=("random",), kinds=("deletion",), n_steps=2, n_random=3, image_ids=ids)
    a = deletion_insertion_curves(make_model(0), images, maps, torch.zeros(4, dtype=int), **kw)
    kw1 = {**kw, "image_ids": [7]}
    b = deletion_insertion_curves(make_model(1), images[:1], maps[:1] * 0, [0], **kw1)
    assert torch.equal(a.random_orders[0], a.random_orders[2])  # same id, same permutations
    assert torch.equal(a.random_orders[0], b.random_orders[0])  # other model, map, batch
    assert not torch.equal(a.random_orders[0], a.random_orders[1])
    assert torch.equal(a.random_orders, random_orders(ids, 1024, 3, seed=0))
    sorted_rows = a.random_orders.sort(-1).values
    assert torch.equal(sorted_rows, torch.arange(1024).expand(4, 3, 1024))
    default = random_orders(torch.arange(2), 16, 1, seed=0)
    c = deletion_insertion_curves(
        make_model(0), images[:2, :, :4, :4], maps[:2, :4, :4], torch.zeros(2, dtype=int),
        orders=("random",), kinds=("deletion",), n_steps=2, n_random=1,
    )  # fmt: skip
    assert torch.equal(c.random_orders, default)  # image_ids default to 0…N−1


def test_random_map_gives_delta_del_zero_within_its_ci(model: torch.nn.Module) -> None:
    """A random map's order is exchangeable with RaO, so ΔDel's bootstrap CI must cover 0; a
    gradient×input map (positive control) must give a CI clearly above 0."""
    images, _ = make_batch(64, seed=4)
    maps = torch.rand(64, 32, 32, generator=torch.Generator().manual_seed(5))
    x = images.clone().requires_grad_(True)
    logits = model(x)
    targets = logits.argmax(1)
    logits.log_softmax(1)[torch.arange(64), targets].sum().backward()
    grad_x_input = (x.grad * images).sum(1).clamp(min=0)
    model.zero_grad(set_to_none=True)
    kw = dict(orders=("morf", "random"), kinds=("deletion",), n_steps=N_STEPS, n_random=2)
    out = deletion_insertion_curves(model, images, maps, targets, **kw)
    scores = faithfulness_scores(out)
    assert set(scores) == {"auc_deletion_morf", "auc_deletion_random", "delta_del"}
    summary = summarize_scores(scores)["delta_del"]
    assert summary.n == 64 and summary.n_nan == 0
    assert summary.ci_low < 0 < summary.ci_high
    good = summarize_scores(
        faithfulness_scores(deletion_insertion_curves(model, images, grad_x_input, targets, **kw))
    )["delta_del"]
    assert good.ci_low > 0.02  # measured ≈ 0.056 [0.054, 0.058]
    assert good.ci_low > 10 * (summary.ci_high - summary.ci_low)  # the random CI is narrow


def test_scores_are_the_defined_auc_differences(model: torch.nn.Module) -> None:
    images, maps = make_batch(3, seed=6)
    out = deletion_insertion_curves(model, images, maps, [1, 2, 3], n_steps=4, n_random=1)
    s = faithfulness_scores(out)
    a = {k: auc(v) for k, v in out.items()}
    assert torch.equal(s["delta_del"], a[("deletion", "random")] - a[("deletion", "morf")])
    assert torch.equal(s["delta_ins"], a[("insertion", "morf")] - a[("insertion", "random")])
    assert torch.equal(s["lerf_morf_del"], a[("deletion", "lerf")] - a[("deletion", "morf")])
    assert torch.equal(s["lerf_morf_ins"], a[("insertion", "morf")] - a[("insertion", "lerf")])
    nan = summarize_scores({"x": torch.tensor([1.0, float("nan"), 3.0])})["x"]
    assert nan.mean == 2.0 and nan.n == 2 and nan.n_nan == 1


def test_model_state_restored_and_inputs_checked() -> None:
    model = make_model(2).train()
    images, maps = make_batch(2, seed=7)
    out = deletion_insertion_curves(model, images, maps, [0, 1], n_steps=2, n_random=1)
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    ref = deletion_insertion_curves(model.eval(), images, maps, [0, 1], n_steps=2, n_random=1)
    for key in out:  # computed in eval mode
        assert torch.equal(out[key], ref[key])
    with pytest.raises(AuglensError, match="upsample"):
        deletion_insertion_curves(model, images, maps[:, :8, :8], [0, 1])
    with pytest.raises(AuglensError, match="targets"):
        deletion_insertion_curves(model, images, maps, [0, 10], n_steps=2)
    with pytest.raises(AuglensError, match="orders"):
        deletion_insertion_curves(model, images, maps, [0, 1], orders=("morf", "best"))
