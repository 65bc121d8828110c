"""ROAD (SPEC §11) against hand-computed imputations, pytorch-grad-cam's ROAD (the verbatim
road_evaluation imputer) and a per-image, per-step loop."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torchvision.transforms.functional import gaussian_blur

from auglens.errors import AuglensError
from auglens.metrics.faithfulness import auc
from auglens.metrics.road import (
    RoadCurves,
    imputation_noise,
    linear_imputation,
    noisy_linear_imputation,
    removal_counts,
    road_curves,
    road_scores,
)
from auglens.models import build_model

pgc_road = pytest.importorskip("pytorch_grad_cam.metrics.road")
from pytorch_grad_cam.metrics.perturbation_confidence import (  # noqa: E402
    PerturbationConfidenceMetric,
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget  # noqa: E402

PCTS = list(range(10, 100, 10))


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def make_model(seed: int = 0) -> torch.nn.Module:
    """Small random-init ResNet whose probabilities react clearly to imputation."""
    torch.manual_seed(seed)
    model = build_model("small_resnet", 10, width=8).eval()
    with torch.no_grad():
        model.fc.weight.mul_(40)
        model.fc.bias.zero_()
    return model


def make_batch(n: int, size: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = gaussian_blur(torch.randn(n, 3, size, size, generator=g), [3, 3], [1.0, 1.0]) * 2
    maps = torch.rand(n, size, size, generator=g, dtype=torch.float64)  # distinct values
    return images, maps


def ref_imputer(image: torch.Tensor, removed: np.ndarray) -> torch.Tensor:
    """road_evaluation's NoisyLinearImputer (as shipped in pytorch-grad-cam), noise 0."""
    keep = torch.from_numpy((~removed).astype(np.float32))
    return pgc_road.NoisyLinearImputer(noise=0.0)(image.float(), keep)


# ------------------------------------------------------------------------------- imputation


def test_imputation_hand_computed() -> None:
    v = torch.arange(9.0).view(1, 3, 3)
    centre = np.zeros((3, 3), bool)
    centre[1, 1] = True
    # (1 + 3 + 5 + 7)/6 + (0 + 2 + 6 + 8)/12 = 4
    assert linear_imputation(v, centre)[0, 1, 1].item() == pytest.approx(4.0, abs=1e-12)
    v4 = torch.arange(16.0).view(1, 4, 4)
    corner = np.zeros((4, 4), bool)
    corner[0, 0] = True
    # in-image neighbours 1 (1/6), 4 (1/6), 5 (1/12): (1/6 + 4/6 + 5/12) / (5/12) = 3
    out = linear_imputation(v4, corner)
    assert out[0, 0, 0].item() == pytest.approx(3.0, abs=1e-12)
    assert torch.equal(out.view(-1)[1:], v4.double().view(-1)[1:])  # kept pixels untouched
    # two unknowns: centre p and its right neighbour q of a 3×3 image v = arange(9):
    # p = (1 + 3 + 7)/6 + (0 + 2 + 6 + 8)/12 + q/6          (s_p = 1)
    # (2/3)·q = (2 + 8 + p)/6 + (1 + 7)/12                  (s_q = 3/6 + 2/12)
    two = np.zeros((3, 3), bool)
    two[1, 1] = two[1, 2] = True
    a = np.array([[1.0, -1 / 6], [-1 / 6, 2 / 3]])
    b = np.array([11 / 6 + 16 / 12, 10 / 6 + 8 / 12])
    p, q = np.linalg.solve(a, b)
    got = linear_imputation(v, two)[0]
    assert got[1, 1].item() == pytest.approx(p, abs=1e-12)
    assert got[1, 2].item() == pytest.approx(q, abs=1e-12)


def test_imputation_equals_reference() -> None:
    rng = np.random.default_rng(4)
    for shape in [(3, 3), (1, 7), (4, 5), (16, 16), (24, 20)]:
        for frac in (0.1, 0.5, 0.9):
            img = torch.from_numpy(rng.normal(size=(3, *shape)).astype(np.float32))
            removed = rng.random(shape) < frac
            removed.flat[0] = True  # a corner, and at least one known pixel
            removed.flat[-1] = False
            got = linear_imputation(img, removed)
            ref = ref_imputer(img, removed)
            torch.testing.assert_close(got.float(), ref, rtol=0, atol=2e-6)


def test_noise_equals_reference_with_the_same_draws(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    img = torch.from_numpy(rng.normal(size=(3, 12, 9)).astype(np.float32))
    removed = rng.random((12, 9)) < 0.6
    z = imputation_noise(7, 3, "lerf", int(removed.sum()), 3)
    monkeypatch.setattr(torch, "randn_like", lambda t: z.to(t.dtype).clone())
    ref = pgc_road.NoisyLinearImputer(noise=0.01)(img, torch.from_numpy((~removed) * 1.0))
    got = noisy_linear_imputation(img, removed, 0.01, z)
    torch.testing.assert_close(got.float(), ref, rtol=0, atol=2e-6)
    # noise sits on the removed pixels only, in ascending flat index order
    diff = (got - linear_imputation(img, removed)).view(3, -1)
    assert torch.equal(diff[:, ~torch.from_numpy(removed.reshape(-1))], torch.zeros(3, 108 - int(
        removed.sum()), dtype=torch.float64))  # fmt: skip
    torch.testing.assert_close(diff[:, torch.from_numpy(removed.reshape(-1))], 0.01 * z)


def test_imputation_commutes_with_normalisation() -> None:
    """Imputing [0, 1] pixels with noise σ then normalising = imputing normalised pixels with
    noise σ / std: why ``input_std`` reproduces road_evaluation on normalised inputs."""
    rng = np.random.default_rng(6)
    x01 = torch.from_numpy(rng.random((3, 10, 11)))
    mean = torch.tensor([0.4, 0.5, 0.6]).double()[:, None, None]
    std = torch.tensor([0.2, 0.25, 0.3]).double()
    removed = rng.random((10, 11)) < 0.7
    z = imputation_noise(0, 0, "morf", int(removed.sum()), 3)
    a = (noisy_linear_imputation(x01, removed, 0.01, z) - mean) / std[:, None, None]
    b = noisy_linear_imputation((x01 - mean) / std[:, None, None], removed, 0.01 / std, z)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_removal_counts_are_exact() -> None:
    assert removal_counts(100, PCTS).tolist() == list(range(10, 100, 10))
    assert removal_counts(144, [10, 30, 70]).tolist() == [14, 43, 100]
    assert removal_counts(1000, [33.3, 0.1]).tolist() == [333, 1]  # not int(1000 * 0.333) = 332


# ----------------------------------------------------------------------------------- curves


def tleemann_removed(expl: np.ndarray, th_p: float, remove: bool) -> np.ndarray:
    """road_evaluation ``ImputedDataset.__getitem__``'s bitmask, literally (without its 1e-4
    tie-breaking noise: the maps here have distinct values). Returns True = removed."""
    width, height = expl.shape
    mask_copy = torch.tensor(expl.reshape(-1, 1))
    salient_order = torch.argsort(mask_copy, axis=0, descending=True)
    bitmask = torch.ones(width * height, dtype=torch.uint8)
    if remove:
        coords = salient_order[: int(width * height * th_p)]
    else:
        coords = salient_order[int(width * height * th_p) :]
    bitmask[coords] = 0
    return (bitmask.reshape(width, height) == 0).numpy()


def loop_curves(model, images, maps, targets, pcts) -> dict[str, np.ndarray]:
    """One image, one order, one k at a time: sort the map, remove, impute with the reference
    imputer (noise 0), forward, softmax."""
    n, _, h, w = images.shape
    out = {"morf": np.zeros((n, len(pcts))), "lerf": np.zeros((n, len(pcts)))}
    for i in range(n):
        flat = maps[i].reshape(-1).numpy()
        for order, idx in (("morf", np.argsort(-flat, kind="stable")),
                           ("lerf", np.argsort(flat, kind="stable"))):  # fmt: skip
            for j, k in enumerate(pcts):
                removed = np.zeros(h * w, bool)
                removed[idx[: k * h * w // 100]] = True
                x = ref_imputer(images[i], removed.reshape(h, w))
                with torch.no_grad():
                    p = torch.softmax(model(x[None]).double(), 1)[0, int(targets[i])]
                out[order][i, j] = p.item()
    return out


def test_curves_equal_per_image_loop_and_road_evaluation_masks() -> None:
    model = make_model(0)
    images, maps = make_batch(3, 12)
    targets = model(images).argmax(1)
    pcts = [10, 30, 50, 70, 90]
    got = road_curves(model, images, maps, targets, percentages=pcts, noise=0.0, max_batch=4,
                      channels_last=False)  # fmt: skip
    ref = loop_curves(model, images, maps, targets, pcts)
    for order in ("morf", "lerf"):
        np.testing.assert_allclose(got[order].numpy(), ref[order], rtol=0, atol=2e-6)
    assert got.settings["n_forward"] == 3 + 3 * 2 * 5
    assert got.counts.tolist() == [14, 43, 72, 100, 129]
    # the curves move: the test is not vacuous
    assert (got["morf"][:, 0] - got["morf"][:, -1]).abs().max() > 0.05
    # our k = share removed: road_evaluation's MoRF th_p = k/100, its LeRF th_p = 1 − k/100
    flat_order = {"morf": maps[0].reshape(-1).argsort(descending=True, stable=True)}
    flat_order["lerf"] = maps[0].reshape(-1).argsort(stable=True)
    for k in (10, 50, 90):  # P = 144: P·k/100 is not integral; counts differ by ≤ 1
        for order, th_p in (("morf", k / 100), ("lerf", 1 - k / 100)):
            ref_set = tleemann_removed(maps[0].numpy(), th_p, order == "morf").reshape(-1)
            ours = np.zeros(144, bool)
            ours[flat_order[order][: k * 144 // 100].numpy()] = True
            assert abs(int(ref_set.sum()) - int(ours.sum())) <= 1
            small, big = (ours, ref_set) if ours.sum() <= ref_set.sum() else (ref_set, ours)
            assert not (small & ~big).any()  # nested: the same pixels up to the count


def _pgc_curve(model, images, maps, targets, order: str, p: int) -> np.ndarray:
    remove = RemoveMostRelevantFirst if order == "morf" else RemoveLeastRelevantFirst
    metric = PerturbationConfidenceMetric(remove(p, pgc_road.NoisyLinearImputer(noise=0.0)))
    tg = [ClassifierOutputSoftmaxTarget(int(t)) for t in targets]
    return metric(images, maps.float().numpy(), tg, model, return_diff=False)


def test_curves_equal_pytorch_grad_cam_road() -> None:
    """10×10 images: pytorch-grad-cam's percentile thresholds remove exactly c_k pixels."""
    model = make_model(1)
    images, maps = make_batch(4, 10, seed=2)
    targets = torch.tensor([1, 5, 9, 1])
    got = road_curves(model, images, maps, targets, noise=0.0, channels_last=False)
    for order in ("morf", "lerf"):
        for j, k in enumerate(PCTS):
            ref = _pgc_curve(model, images, maps, targets, order, 100 - k)
            np.testing.assert_allclose(got[order][:, j].numpy(), ref, rtol=0, atol=2e-6)


def test_noisy_metric_equals_pytorch_grad_cam_combined(monkeypatch: pytest.MonkeyPatch) -> None:
    """ROADCombined with noise 0.01: feed the reference our draws, in its call order
    (LeRF averager, then MoRF; percentiles outer, images inner)."""
    model = make_model(2)
    images, maps = make_batch(3, 10, seed=3)
    targets = torch.tensor([2, 3, 8])
    ids = [17, 4, 230]
    got = road_curves(model, images, maps, targets, seed=9, image_ids=ids, channels_last=False)
    queue = [
        imputation_noise(9, ids[i], order, 100 - p, 3)
        for order in ("lerf", "morf")
        for p in PCTS
        for i in range(3)
    ]

    def fake_randn_like(t: torch.Tensor) -> torch.Tensor:
        z = queue.pop(0)
        assert z.shape == t.shape
        return z.to(t.dtype)

    monkeypatch.setattr(torch, "randn_like", fake_randn_like)
    tg = [ClassifierOutputSoftmaxTarget(int(t)) for t in targets]
    ref = pgc_road.ROADCombined(percentiles=PCTS)(images, maps.float().numpy(), tg, model)
    assert not queue
    ours = ((got["lerf"] - got.original[:, None]).mean(1)
            - (got["morf"] - got.original[:, None]).mean(1)) / 2  # fmt: skip
    np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=3e-6)


def test_noise_is_seeded_and_batching_does_not_change_curves() -> None:
    model = make_model(0)
    images, maps = make_batch(3, 12, seed=4)
    kw = dict(percentages=[20, 60], seed=3, image_ids=[5, 6, 7])
    a = road_curves(model, images, maps, [0, 1, 2], **kw)
    b = road_curves(model, images, maps, [0, 1, 2], max_batch=3, channels_last=False, **kw)
    c = road_curves(model, images[1:], maps[1:], [1, 2], **{**kw, "image_ids": [6, 7]})
    assert len(b.settings["batch_sizes"]) > len(a.settings["batch_sizes"])
    for order in ("morf", "lerf"):
        torch.testing.assert_close(a[order], b[order], rtol=0, atol=2e-6)
        torch.testing.assert_close(a[order][1:], c[order], rtol=0, atol=2e-6)  # per image
    other = road_curves(model, images, maps, [0, 1, 2], **{**kw, "seed": 4})
    assert not torch.equal(other["morf"], a["morf"])
    zero = road_curves(model, images, maps, [0, 1, 2], **{**kw, "noise": 0.0})
    assert (zero["morf"] - a["morf"]).abs().max() > 0  # the noise is there …
    assert (zero["morf"] - a["morf"]).abs().max() < 0.05  # … and small
    std = road_curves(model, images, maps, [0, 1, 2], input_std=[0.5, 0.25, 0.2], **kw)
    assert std.settings["noise_std_per_channel"] == pytest.approx([0.02, 0.04, 0.05])


def test_scores_are_trapezoid_areas() -> None:
    curves = RoadCurves(
        morf=torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.2, 0.2]], dtype=torch.float64),
        lerf=torch.tensor([[1.0, 1.0, 0.7], [0.3, 0.1, 0.5]], dtype=torch.float64),
    )
    curves.percentages = torch.tensor([10.0, 50.0, 90.0])
    s = road_scores(curves)
    assert s["road_auc_morf"].tolist() == pytest.approx([0.5, 0.2])
    assert s["road_auc_lerf"].tolist() == pytest.approx([(1.0 + 0.85) / 2, 0.25])
    assert torch.equal(s["road_lerf_morf"], s["road_auc_lerf"] - s["road_auc_morf"])
    torch.testing.assert_close(s["road_auc_lerf"], auc(curves["lerf"]))  # uniform grid
    curves.percentages = torch.tensor([10.0, 20.0, 90.0])  # non-uniform: trapezoid by hand
    expected = ((0.9 + 0.5) / 2 * 0.1 + (0.5 + 0.1) / 2 * 0.7) / 0.8
    assert road_scores(curves)["road_auc_morf"][0].item() == pytest.approx(expected)


def test_state_restored_and_inputs_checked() -> None:
    model = make_model(3).train()
    images, maps = make_batch(2, 10, seed=5)
    out = road_curves(model, images, maps, [0, 1], percentages=[50])
    assert model.training and all(p.grad is None and p.requires_grad for p in model.parameters())
    ref = road_curves(model.eval(), images, maps, [0, 1], percentages=[50])
    assert torch.equal(out["morf"], ref["morf"])
    for bad, match in (({"percentages": [0, 50]}, r"\(0, 100\)"),
                       ({"percentages": [100]}, r"\(0, 100\)"),
                       ({"percentages": [50, 20]}, "increasing"),
                       ({"orders": ["morf", "random"]}, "orders"),
                       ({"noise": -1.0}, "noise"),
                       ({"input_std": [1.0, 0.0, 1.0]}, "input_std")):  # fmt: skip
        with pytest.raises(AuglensError, match=match):
            road_curves(model, images, maps, [0, 1], **bad)
    with pytest.raises(AuglensError, match="upsample"):
        road_curves(model, images, maps[:, :5, :5], [0, 1])
    with pytest.raises(AuglensError, match="targets"):
        road_curves(model, images, maps, [0, 10], percentages=[50])
    with pytest.raises(AuglensError, match="every pixel"):
        linear_imputation(images[0], np.ones((10, 10), bool))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_cpu() -> None:
    model = make_model(0)
    images, maps = make_batch(2, 12, seed=6)
    kw = dict(percentages=[30, 70], seed=1)
    cpu = road_curves(model, images, maps, [0, 1], **kw)
    gpu = road_curves(model.cuda(), images.cuda(), maps.cuda(), torch.tensor([0, 1]).cuda(), **kw)
    for order in ("morf", "lerf"):
        torch.testing.assert_close(gpu[order], cpu[order], rtol=0, atol=1e-4)
