"""Human-alignment metrics (SPEC §4) against direct per-image loop transcriptions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.integrate import trapezoid

from auglens.errors import AuglensError
from auglens.explain.base import upsample
from auglens.metrics import count_nans
from auglens.metrics.alignment import (
    EHR_QUANTILES,
    alignment_scores,
    box_fraction,
    boxes_to_mask,
    common_image_set,
    effective_heat_ratio,
    energy_pointing_game,
    filter_images,
)

# ----------------------------------------------------------------------------- slow references


def loop_boxes_to_mask(boxes: np.ndarray, h: int, w: int) -> np.ndarray:
    boxes = boxes.reshape(boxes.shape[0], -1, 4)
    out = np.zeros((boxes.shape[0], h, w), dtype=bool)
    for i, per_image in enumerate(boxes):
        for x1, y1, x2, y2 in per_image:
            for y in range(h):
                for x in range(w):
                    if y1 <= y < y2 and x1 <= x < x2:
                        out[i, y, x] = True
    return out


def loop_energy_pg(m: np.ndarray, region: np.ndarray) -> float:
    total = inside = 0.0
    for v, r in zip(m.ravel().tolist(), region.ravel().tolist(), strict=True):
        total += v
        inside += v if r else 0.0
    return inside / total if total > 0 else float("nan")


def loop_ehr(m: np.ndarray, region: np.ndarray, eps: float = 0.0) -> tuple[float, np.ndarray]:
    """InputIBA's EffectiveHeatRatios.evaluate (weight_by_heat) after per-map min-max scaling;
    ``eps`` = 1e-8 reproduces the reference's denominator."""
    h = m.astype(np.float64)
    if h.max() == h.min():
        return float("nan"), np.full(11, np.nan)
    h = (h - h.min()) / (h.max() - h.min())
    poi_mask = h >= 0.1
    h[~poi_mask] = 0.0
    poi = h[poi_mask]
    quantiles = np.linspace(0, 1.0, 11)
    ratios = np.zeros(len(quantiles))
    max_heat = h.max()
    for i, q in enumerate(quantiles):
        t = min(np.quantile(poi, q), max_heat * 0.99)
        bin_mask = h >= t
        ratios[i] = h[bin_mask & region].sum() / (bin_mask.sum() + eps)
    return float(trapezoid(ratios, quantiles)), ratios


# ------------------------------------------------------------------------------------- fixtures


def random_case(seed: int, n: int = 40, h: int = 19, w: int = 23):
    rng = np.random.default_rng(seed)
    maps = rng.random((n, h, w)) ** 3
    maps[::4] = np.round(maps[::4] * 4)  # many ties
    maps[1::4] = np.where(rng.random((n // 4, h, w)) < 0.9, 0.0, maps[1::4])  # sparse
    boxes = np.stack(
        [
            rng.integers(-3, w + 3, (n, 3)),
            rng.integers(-3, h + 3, (n, 3)),
            rng.integers(-3, w + 3, (n, 3)),
            rng.integers(-3, h + 3, (n, 3)),
        ],
        -1,
    )
    return maps, boxes


# ---------------------------------------------------------------------------------------- boxes


def test_boxes_to_mask_matches_loop_with_clipping_and_empty_boxes() -> None:
    maps, boxes = random_case(0)
    h, w = maps.shape[1:]
    got = boxes_to_mask(torch.as_tensor(boxes), h, w).numpy()
    assert got.dtype == bool and got.shape == maps.shape
    np.testing.assert_array_equal(got, loop_boxes_to_mask(np.clip(boxes, 0, None), h, w))
    single = boxes[:, 0]
    np.testing.assert_array_equal(
        boxes_to_mask(torch.as_tensor(single), h, w).numpy(),
        loop_boxes_to_mask(np.clip(single, 0, None), h, w),
    )


def test_boxes_index_rows_by_y_not_swapped() -> None:
    mask = boxes_to_mask(torch.tensor([[1, 2, 4, 3]]), 5, 6)[0]  # x 1..3, y 2
    expected = torch.zeros(5, 6, dtype=torch.bool)
    expected[2:3, 1:4] = True
    assert torch.equal(mask, expected)
    assert box_fraction(mask[None]).item() == pytest.approx(3 / 30)


def test_boxes_reject_fractions_and_bad_shapes() -> None:
    with pytest.raises(AuglensError, match="integer"):
        boxes_to_mask(torch.tensor([[0.5, 0, 2, 2]]), 4, 4)
    with pytest.raises(AuglensError, match="x1, y1, x2, y2"):
        boxes_to_mask(torch.zeros(2, 3), 4, 4)
    assert boxes_to_mask(torch.tensor([[0.0, 0, 2, 2]]), 4, 4).sum() == 4


# ----------------------------------------------------------------------------------- energy PG


def test_energy_pg_is_one_for_the_ground_truth_mask_and_zero_outside() -> None:
    _, boxes = random_case(1, n=8)
    region = boxes_to_mask(torch.as_tensor(np.abs(boxes)), 19, 23)
    region[:, 0, 0] = True  # no empty region
    ones = energy_pointing_game(region.double(), region)
    assert torch.equal(ones, torch.ones(8, dtype=torch.float64))
    assert torch.equal(energy_pointing_game((~region).double(), region), torch.zeros(8).double())


def test_energy_pg_matches_loop_on_random_maps_and_boxes() -> None:
    maps, boxes = random_case(2)
    region = boxes_to_mask(torch.as_tensor(boxes), *maps.shape[1:])
    maps[3] = 0.0  # an all-zero map → NaN
    got = energy_pointing_game(torch.as_tensor(maps, dtype=torch.float32), region)
    assert got.dtype == torch.float64
    ref = [
        loop_energy_pg(m.astype(np.float32), r) for m, r in zip(maps, region.numpy(), strict=True)
    ]
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12, atol=1e-15)
    assert np.isnan(got[3].item())


def test_energy_pg_rejects_negative_nonfinite_and_feature_resolution_maps() -> None:
    region = torch.ones(2, 8, 8, dtype=torch.bool)
    with pytest.raises(AuglensError, match="non-negative"):
        energy_pointing_game(-torch.ones(2, 8, 8), region)
    with pytest.raises(AuglensError, match="NaN"):
        energy_pointing_game(torch.full((2, 8, 8), float("nan")), region)
    with pytest.raises(AuglensError, match="upsample"):
        energy_pointing_game(torch.ones(2, 2, 2), region)
    # the documented way from feature resolution: bilinear, align_corners=False
    up = upsample(torch.rand(2, 2, 2), 8)
    assert energy_pointing_game(up, region).allclose(torch.ones(2, dtype=torch.float64))


# ------------------------------------------------------------------------------------------ EHR


@pytest.mark.parametrize("seed", [3, 4])
def test_ehr_matches_loop_transcription_on_random_maps_and_boxes(seed: int) -> None:
    maps, boxes = random_case(seed)
    region = boxes_to_mask(torch.as_tensor(boxes), *maps.shape[1:])
    ehr, ratios = effective_heat_ratio(torch.as_tensor(maps), region, return_curve=True)
    assert ehr.shape == (maps.shape[0],) and ratios.shape == (maps.shape[0], 11)
    for i in range(maps.shape[0]):
        ref, ref_ratios = loop_ehr(maps[i], region[i].numpy())
        assert abs(ehr[i].item() - ref) <= 1e-10
        np.testing.assert_allclose(ratios[i].numpy(), ref_ratios, rtol=0, atol=1e-10)
        # the reference's + 1e-8 in the denominator changes nothing visible
        assert abs(loop_ehr(maps[i], region[i].numpy(), eps=1e-8)[0] - ref) <= 1e-8


def test_ehr_float32_maps_and_few_kept_pixels() -> None:
    rng = np.random.default_rng(5)
    maps = np.zeros((6, 10, 10), dtype=np.float32)
    for i in range(6):  # i + 1 pixels above the base threshold
        maps[i].flat[rng.choice(100, i + 1, replace=False)] = rng.random(i + 1) + 0.5
    region = torch.as_tensor(rng.random((6, 10, 10)) < 0.5)
    got = effective_heat_ratio(torch.as_tensor(maps), region)
    ref = [loop_ehr(m, r)[0] for m, r in zip(maps, region.numpy(), strict=True)]
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-10)


def test_ehr_of_the_ground_truth_mask_is_one_and_constant_maps_are_nan() -> None:
    region = torch.zeros(3, 12, 12, dtype=torch.bool)
    region[:, 2:6, 3:9] = True
    maps = region.double().clone()
    maps[2] = 0.7  # constant
    ehr = effective_heat_ratio(maps, region)
    assert ehr[:2].tolist() == pytest.approx([1.0, 1.0], abs=1e-15)
    assert np.isnan(ehr[2].item())
    assert EHR_QUANTILES == tuple(np.linspace(0, 1, 11).tolist())


def test_alignment_scores_keeps_and_counts_nans() -> None:
    maps, boxes = random_case(6, n=8)
    maps[2] = 0.0
    region = boxes_to_mask(torch.as_tensor(boxes), *maps.shape[1:])
    out = alignment_scores(torch.as_tensor(maps), region)
    assert set(out) == {"energy_pg", "ehr"}
    assert count_nans(out) == {"energy_pg": 1, "ehr": 1}


# -------------------------------------------------------------------------------------- filters


def test_filter_images_thresholds_inclusive_and_optional() -> None:
    frac = torch.tensor([0.1, 0.33, 0.34, 0.2, 0.9])
    prob = torch.tensor([0.6, 0.9, 0.99, 0.59, 0.1])
    assert filter_images(frac, prob).tolist() == [True, True, False, False, False]
    assert filter_images(frac, None).tolist() == [True, True, False, True, False]
    assert filter_images(None, prob).tolist() == [True, True, True, False, False]
    assert filter_images(frac, prob, max_box_fraction=None).tolist() == [
        True, True, True, False, False,
    ]  # fmt: skip
    assert filter_images(frac, prob, None, None).all()
    with pytest.raises(AuglensError, match="needs"):
        filter_images(None, None)
    with pytest.raises(AuglensError, match="values"):
        filter_images(frac, prob[:3])


def test_common_image_set_intersects_and_counts() -> None:
    keep, counts = common_image_set(
        {"base": torch.tensor([1, 1, 0, 1]), "cutmix": torch.tensor([True, False, False, True])}
    )
    assert keep.tolist() == [True, False, False, True]
    assert counts == {"base": 3, "cutmix": 2}
