"""Map-comparison metrics (SPEC §3) against slow, obviously-correct per-pair references."""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
import scipy.ndimage
import scipy.stats
import torch
from scipy.optimize import linprog

from auglens.errors import AuglensError
from auglens.metrics import (
    CLASS_KLD_DIRECTION,
    DEFAULT_METRICS,
    METRICS,
    MapComparison,
    average_ranks,
    center_of_mass_shift,
    class_kld,
    compare_maps,
    count_nans,
    emd,
    mad,
    minmax_normalize,
    msd,
    overlap_rate,
    pearson,
    spearman,
    ssim,
    ssim_window,
    top_count,
    topk_iou,
)

# ----------------------------------------------------------------------------- slow references


def ref_norm(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    lo, hi = m.min(), m.max()
    return np.zeros_like(m) if hi == lo else (m - lo) / (hi - lo)


def ref_mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.abs(ref_norm(a) - ref_norm(b))))


def ref_msd(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((ref_norm(a) - ref_norm(b)) ** 2))


def _is_constant(m: np.ndarray) -> bool:
    return bool(np.all(m == m.flat[0]))


def ref_pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    if _is_constant(a) or _is_constant(b):
        return math.nan
    return float(scipy.stats.pearsonr(a, b).statistic)


def ref_spearman(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on constant input and returns NaN
        return float(scipy.stats.spearmanr(a, b).statistic)


def ref_top(m: np.ndarray, y: float) -> set[int]:
    """The ⌈Y·n/100⌉ highest pixels; among equal values the lower index first (pure Python)."""
    flat = [float(v) for v in np.ravel(m)]
    k = math.ceil(Fraction(str(y)) * len(flat) / 100)
    order = sorted(range(len(flat)), key=lambda i: (-flat[i], i))
    return set(order[:k])


def ref_overlap(a: np.ndarray, b: np.ndarray, y: float) -> float:
    ta, tb = ref_top(a, y), ref_top(b, y)
    return len(ta & tb) / len(ta)


def ref_iou(a: np.ndarray, b: np.ndarray, y: float) -> float:
    ta, tb = ref_top(a, y), ref_top(b, y)
    return len(ta & tb) / len(ta | tb)


def ref_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. SSIM transcribed with scipy.ndimage (Gaussian σ=1.5 truncated at 3.5σ)."""
    x, y = ref_norm(a), ref_norm(b)
    h, w = x.shape
    win = min(h, w, 11)
    win = win if win % 2 else win - 1

    def filt(z: np.ndarray) -> np.ndarray:
        return scipy.ndimage.gaussian_filter(z, sigma=1.5, truncate=3.5, mode="reflect")

    ux, uy = filt(x), filt(y)
    vx, vy, vxy = filt(x * x) - ux * ux, filt(y * y) - uy * uy, filt(x * y) - ux * uy
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    p = (win - 1) // 2
    return float(s[p : h - p, p : w - p].mean())


def ref_com_shift(a: np.ndarray, b: np.ndarray) -> float:
    def centroid(m: np.ndarray) -> tuple[float, float] | None:
        total = 0.0
        r = c = 0.0
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                total += float(m[i, j])
                r += i * float(m[i, j])
                c += j * float(m[i, j])
        return None if total == 0 else (r / total, c / total)

    ca, cb = centroid(a), centroid(b)
    if ca is None or cb is None:
        return math.nan
    return math.dist(ca, cb)


def ref_emd(a: np.ndarray, b: np.ndarray) -> float:
    """Dense transport LP over all pixel pairs (no support reduction), solved by HiGHS."""
    h, w = a.shape
    if a.sum() == 0 or b.sum() == 0:
        return math.nan
    pa, pb = np.ravel(a) / a.sum(), np.ravel(b) / b.sum()
    n = h * w
    coords = [(i, j) for i in range(h) for j in range(w)]
    cost = np.array([[math.dist(p, q) for q in coords] for p in coords])
    a_eq = np.zeros((2 * n, n * n))
    for i in range(n):
        a_eq[i, i * n : (i + 1) * n] = 1  # mass leaving pixel i of a
        a_eq[n + i, i::n] = 1  # mass arriving at pixel i of b
    res = linprog(cost.ravel(), A_eq=a_eq, b_eq=np.concatenate([pa, pb]), bounds=(0, None))
    assert res.status == 0
    return float(res.fun)


def per_pair(fn, a: torch.Tensor, b: torch.Tensor, *args) -> np.ndarray:
    return np.array([fn(a[i].numpy(), b[i].numpy(), *args) for i in range(a.shape[0])])


# ------------------------------------------------------------------------------------- data


def smooth_relu_maps(n: int, size: int, seed: int) -> torch.Tensor:
    """ReLU'd smooth random maps (many exact zeros): Grad-CAM-like."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, 1, 4, 4, generator=g)
    up = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear")
    return torch.relu(up[:, 0])


def tie_cases() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    rnd = torch.randn(2, 24, 9, 11, generator=g)
    return {
        "continuous": (rnd[0], rnd[1]),
        "relu": (smooth_relu_maps(24, 12, 1), smooth_relu_maps(24, 12, 2)),
        "float16": (((rnd[0] * 4).round() / 4).half(), torch.relu(rnd[1] * 3).round().half()),
        "integer": (
            torch.randint(0, 3, (24, 7, 7), generator=g),
            torch.randint(0, 2, (24, 7, 7), generator=g),
        ),
    }


CASES = tie_cases()


# -------------------------------------------------------------------- agreement with references


@pytest.mark.parametrize("case", sorted(CASES))
def test_pointwise_metrics_match_references(case: str) -> None:
    a, b = CASES[case]
    np.testing.assert_allclose(mad(a, b).numpy(), per_pair(ref_mad, a, b), rtol=0, atol=1e-12)
    np.testing.assert_allclose(msd(a, b).numpy(), per_pair(ref_msd, a, b), rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        pearson(a, b).numpy(), per_pair(ref_pearson, a, b), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_spearman_matches_scipy_with_ties(case: str) -> None:
    a, b = CASES[case]
    got = spearman(a, b)
    assert got.dtype == torch.float64 and got.shape == (a.shape[0],)
    np.testing.assert_allclose(got.numpy(), per_pair(ref_spearman, a, b), rtol=0, atol=1e-10)


@pytest.mark.parametrize("case", sorted(CASES))
def test_average_ranks_match_rankdata(case: str) -> None:
    a, _ = CASES[case]
    want = scipy.stats.rankdata(a.reshape(a.shape[0], -1).double().numpy(), axis=1)
    np.testing.assert_array_equal(average_ranks(a).numpy(), want)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("y", [5, 10, 20, 2.5, 100])
def test_overlap_and_iou_match_reference(case: str, y: float) -> None:
    a, b = CASES[case]
    np.testing.assert_array_equal(overlap_rate(a, b, y).numpy(), per_pair(ref_overlap, a, b, y))
    np.testing.assert_array_equal(topk_iou(a, b, y).numpy(), per_pair(ref_iou, a, b, y))


def test_fast_sort_path_equals_torch_stable_sort() -> None:
    from auglens.metrics.similarity.ranking import _sort_desc

    g = torch.Generator().manual_seed(5)
    x = (torch.randn(50, 300, generator=g) * 3).round() / 2  # many ties, negative values
    x[:, ::7] = -0.0  # −0.0 ties with +0.0
    x[:, ::11] = 0.0
    x[3] = torch.finfo(torch.float32).tiny / 4  # subnormals, constant row
    x[4, :5] = torch.tensor([3.0e38, -3.0e38, 1e-45, -1e-45, 0.0])
    keys, idx = _sort_desc(x)
    want_v, want_i = torch.sort(x.double(), dim=1, descending=True, stable=True)
    torch.testing.assert_close(idx, want_i, rtol=0, atol=0)
    assert torch.equal(keys[:, 1:] == keys[:, :-1], want_v[:, 1:] == want_v[:, :-1])
    a, b = x, x.flip(1)
    torch.testing.assert_close(spearman(a, b), spearman(a.double(), b.double()), equal_nan=True)
    y = x.abs()  # non-negative maps (the fast path's shortcut), still with −0.0 among the zeros
    y[:, ::13] = -0.0
    keys, idx = _sort_desc(y, nonnegative=True)
    want_v, want_i = torch.sort(y.double(), dim=1, descending=True, stable=True)
    torch.testing.assert_close(idx, want_i, rtol=0, atol=0)
    assert torch.equal(keys[:, 1:] == keys[:, :-1], want_v[:, 1:] == want_v[:, :-1])


@pytest.mark.parametrize("case", sorted(CASES))
def test_torch_and_numpy_tie_ranks_agree(case: str) -> None:
    from auglens.metrics.similarity import MapContext
    from auglens.metrics.similarity.definitions import _centred_corr
    from auglens.metrics.similarity.ranking import (
        _twice_centred_tie_positions_np,
        _twice_centred_tie_positions_torch,
    )

    a, b = CASES[case]
    sv = torch.sort(a.reshape(a.shape[0], -1).double(), dim=1, descending=True)[0]
    want = _twice_centred_tie_positions_np(sv.numpy())
    np.testing.assert_array_equal(_twice_centred_tie_positions_torch(sv).numpy(), want)
    # the device-agnostic Spearman path (used off the CPU) equals the CPU Σ-form path
    ctx = MapContext(a, b)
    ra = _twice_centred_tie_positions_torch(ctx.sorted_a[0])
    rb = _twice_centred_tie_positions_torch(ctx.sorted_b[0])
    generic = _centred_corr(ra, rb.gather(1, ctx.b_pos_of_a), ctx.constant)
    torch.testing.assert_close(generic, spearman(a, b), equal_nan=True, rtol=0, atol=1e-14)


def test_thread_settings_restored_and_workers_agree() -> None:
    a, b = CASES["relu"]
    before = torch.get_num_threads()
    one = compare_maps(a, b, block_pairs=2, workers=1)
    two = compare_maps(a, b, block_pairs=2, workers=2)
    assert torch.get_num_threads() == before
    for name in one:
        torch.testing.assert_close(one[name], two[name], equal_nan=True, rtol=0, atol=0)


def test_requires_grad_inputs() -> None:
    a = torch.rand(3, 4, 4, requires_grad=True)
    out = compare_maps(a, a.detach() * 2)
    assert out["spearman"].allclose(torch.ones(3, dtype=torch.float64))


def test_relu_and_quantised_maps_really_have_ties() -> None:
    for case in ("relu", "float16", "integer"):
        a, _ = CASES[case]
        flat = a.reshape(a.shape[0], -1)
        assert all(len(torch.unique(row)) <= 0.8 * row.numel() for row in flat), case


# ------------------------------------------------------------------------ hand-made overlaps


def _hand_map() -> torch.Tensor:
    """10×10: five pixels valued 5 at {3, 7, 20, 50, 90}; value 1 on 10..29; 0 elsewhere."""
    m = torch.zeros(100)
    m[10:30] = 1.0
    m[[90, 3, 50, 7, 20]] = 5.0
    return m.view(1, 10, 10)


def test_top_sets_break_ties_by_lower_index() -> None:
    a = _hand_map()
    # Y=5 → k=5: the five 5s. Y=10 → k=10: plus the 1s at the lowest indices 10..14.
    # Y=20 → k=20: the 5s, then 1s at 10..19 and 21..25 (20 is already among the 5s).
    assert ref_top(a[0].numpy(), 5) == {3, 7, 20, 50, 90}
    assert ref_top(a[0].numpy(), 10) == {3, 7, 20, 50, 90, 10, 11, 12, 13, 14}
    assert ref_top(a[0].numpy(), 20) == {3, 7, 20, 50, 90, *range(10, 20), *range(21, 26)}
    # Against a constant baseline (all ties → pixels 0..k−1) and against a strictly
    # decreasing ramp (also 0..k−1): |T(a) ∩ {0..k−1}| = 1, 2, 12.
    want_overlap = {5: 1 / 5, 10: 2 / 10, 20: 12 / 20}
    want_iou = {5: 1 / 9, 10: 2 / 18, 20: 12 / 28}
    for b in (torch.zeros(1, 10, 10), torch.arange(100, 0, -1.0).view(1, 10, 10)):
        for y in (5, 10, 20):
            assert overlap_rate(a, b, y).item() == pytest.approx(want_overlap[y], abs=1e-15)
            assert overlap_rate(b, a, y).item() == pytest.approx(want_overlap[y], abs=1e-15)
            assert topk_iou(a, b, y).item() == pytest.approx(want_iou[y], abs=1e-15)
        out = compare_maps(a, b, ["overlap", "iou"])
        assert [out[f"overlap@{y}"].item() for y in (5, 10, 20)] == pytest.approx([0.2, 0.2, 0.6])


def test_identical_maps_overlap_fully() -> None:
    a = CASES["relu"][0]
    for y in (5, 10, 20):
        assert torch.all(overlap_rate(a, a.clone(), y) == 1)
    assert torch.allclose(spearman(a, a), torch.ones(a.shape[0], dtype=torch.float64))
    assert torch.all(mad(a, 4 * a) == 0)  # min-max normalisation removes the scale


def test_top_count_exact_integer_arithmetic() -> None:
    assert math.ceil(7 / 100 * 100) == 8  # the float trap …
    assert top_count(100, 7) == 7 and top_count(100, 7.0) == 7  # … avoided
    assert top_count(1024, 5) == 52 and top_count(1024, 10) == 103 and top_count(1024, 20) == 205
    assert top_count(100, 5) == 5 and top_count(64, 5) == 4 and top_count(49, 20) == 10
    assert top_count(1000, 0.1) == 1 and top_count(7, 100) == 7 and top_count(3, 0.001) == 1
    for bad in (0, -1, 100.5, math.nan, True):
        with pytest.raises(AuglensError, match="percentage"):
            top_count(10, bad)


# --------------------------------------------------------------------------- constant maps


def test_constant_maps_give_nan_and_are_counted() -> None:
    a, b = CASES["relu"][0].clone(), CASES["relu"][1].clone()
    a[2] = 0.0  # all-zero Grad-CAM map
    b[5] = 3.0
    a[7], b[7] = 1.0, 1.0
    out = compare_maps(a, b, ["mad", "msd", "pearson", "spearman", "overlap", "ssim", "com_shift"])
    for name in ("pearson", "spearman"):
        assert torch.isnan(out[name]).nonzero().view(-1).tolist() == [2, 5, 7]
    counts = count_nans(out)
    assert counts["pearson"] == counts["spearman"] == 3
    assert counts["mad"] == counts["msd"] == counts["overlap@5"] == counts["ssim"] == 0
    assert counts["com_shift"] == 1  # a[2] sums to 0
    # constant maps normalise to zeros: MAD against an all-zero map is the other map's mean
    assert out["mad"][7].item() == 0.0
    assert out["mad"][2].item() == pytest.approx(ref_norm(b[2].numpy()).mean(), abs=1e-12)
    assert out["ssim"][7].item() == pytest.approx(1.0)
    assert minmax_normalize(torch.full((1, 3, 3), 7.0)).abs().sum() == 0


def test_map_comparison_streams_and_counts_nans() -> None:
    a, b = CASES["relu"][0].clone(), CASES["relu"][1].clone()
    a[4] = 0.0
    ref = compare_maps(a, b, ["mad", "spearman", "overlap@10", "iou@20"])
    mc = MapComparison(["mad", "spearman", "overlap@10", "iou@20"], block_pairs=3)
    for s in range(0, a.shape[0], 5):
        mc.update(a[s : s + 5], b[s : s + 5])
    got = mc.compute()
    assert len(mc) == a.shape[0] and list(got) == list(ref)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], equal_nan=True, rtol=0, atol=1e-14)
    assert mc.nan_counts() == {"mad": 0, "spearman": 1, "overlap@10": 0, "iou@20": 0}
    mc.reset()
    assert len(mc) == 0 and mc.compute()["mad"].numel() == 0


# ---------------------------------------------------------------- compare_maps and registry


def test_compare_maps_shares_work_and_equals_single_metrics() -> None:
    a, b = CASES["float16"]
    out = compare_maps(a, b)
    assert list(out) == ["mad", "msd", "pearson", "spearman", "overlap@5", "overlap@10",
                         "overlap@20"]  # fmt: skip
    assert DEFAULT_METRICS == ("mad", "msd", "pearson", "spearman", "overlap")
    singles = {"mad": mad(a, b), "msd": msd(a, b), "pearson": pearson(a, b),
               "spearman": spearman(a, b), "overlap@10": overlap_rate(a, b, 10)}  # fmt: skip
    for name, v in singles.items():
        torch.testing.assert_close(out[name], v, equal_nan=True, rtol=0, atol=1e-14)
    small_blocks = compare_maps(a, b, block_pairs=1)
    for name, v in out.items():
        torch.testing.assert_close(small_blocks[name], v, equal_nan=True, rtol=0, atol=1e-14)
    flat = compare_maps(a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1))
    torch.testing.assert_close(flat["spearman"], out["spearman"], equal_nan=True)


def test_ys_and_arbitrary_thresholds() -> None:
    a, b = CASES["relu"]
    out = compare_maps(a, b, ["overlap", "iou@7.5", "overlap@10"], ys=(2.5, 10))
    assert list(out) == ["overlap@2.5", "overlap@10", "iou@7.5"]
    np.testing.assert_array_equal(out["iou@7.5"].numpy(), per_pair(ref_iou, a, b, 7.5))


def test_registry_names_and_unknown_metric_error() -> None:
    names = METRICS.names()
    for name in ("mad", "msd", "pearson", "spearman", "overlap@5", "overlap@10", "overlap@20",
                 "iou@10", "ssim", "com_shift", "emd", "class_kld"):  # fmt: skip
        assert name in names
    assert METRICS.describe("overlap@20")["doc"].startswith("Overlap rate")
    a, b = CASES["relu"]
    with pytest.raises(AuglensError, match=r"unknown metric 'spearmann'.*did you mean 'spearman'"):
        compare_maps(a, b, ["spearmann"])
    with pytest.raises(AuglensError, match="valid metrics: .*class_kld.*overlap@10"):
        MapComparison(["nope"])
    with pytest.raises(AuglensError, match="percentage"):
        compare_maps(a, b, ["overlap"], ys=(0,))


# --------------------------------------------------------------------------------- errors


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(AuglensError, match=r"a \(2, 4, 4\) vs b \(baseline\) \(2, 4, 5\)"):
        mad(torch.zeros(2, 4, 4), torch.zeros(2, 4, 5))
    with pytest.raises(AuglensError, match=r"\(N, h, w\) or \(N, n\)"):
        compare_maps(torch.zeros(4), torch.zeros(4))
    with pytest.raises(AuglensError, match="differ"):
        MapComparison().update(torch.zeros(3, 16), torch.zeros(2, 16))


def test_nan_and_inf_inputs_are_rejected_with_counts() -> None:
    a, b = torch.rand(5, 4, 4), torch.rand(5, 4, 4)
    a[1, 0, 0] = math.nan
    a[3, 2, 1] = math.inf
    b[4, 1, 1] = -math.inf
    with pytest.raises(AuglensError, match=r"a: 2 of 5 maps contain NaN or inf .*index 1.*"
                                           r"b \(baseline\): 1 of 5 maps"):  # fmt: skip
        compare_maps(a, b)
    with pytest.raises(AuglensError, match="1 of 5 maps"):
        spearman(b, b)
    with pytest.raises(AuglensError, match="NaN"):
        minmax_normalize(a)


def test_spatial_and_nonnegative_requirements() -> None:
    flat = torch.rand(3, 16)
    with pytest.raises(AuglensError, match=r"'ssim' needs 2-D maps"):
        compare_maps(flat, flat, ["ssim"])
    signed = torch.randn(3, 4, 4)
    with pytest.raises(AuglensError, match=r"'com_shift' needs non-negative.*3 of 3 maps"):
        center_of_mass_shift(signed, signed.abs())
    with pytest.raises(AuglensError, match="non-negative"):
        emd(signed.abs(), signed)
    many = torch.rand(100, 4, 4)
    many[[3, 50, 97]] -= 2.0
    with pytest.raises(AuglensError, match=r"b \(baseline\): 3 of 100 maps"):
        compare_maps(many.abs(), many, ["mad", "com_shift"], block_pairs=7)


def test_empty_batch() -> None:
    out = compare_maps(torch.zeros(0, 4, 4), torch.zeros(0, 4, 4), ["mad", "spearman", "overlap"])
    assert all(v.shape == (0,) and v.dtype == torch.float64 for v in out.values())


# ------------------------------------------------------------------------------ class_kld


def test_class_kld_matches_scipy_entropy_and_direction() -> None:
    g = torch.Generator().manual_seed(3)
    la, lb = torch.randn(16, 10, generator=g) * 3, torch.randn(16, 10, generator=g) * 3
    got = class_kld(la, lb)
    pa, pb = torch.softmax(la.double(), 1).numpy(), torch.softmax(lb.double(), 1).numpy()
    want = [scipy.stats.entropy(pb[i], pa[i]) for i in range(16)]  # KL(p_baseline ‖ p_other)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-14)
    assert not np.allclose(class_kld(lb, la).numpy(), want)  # the direction matters
    assert CLASS_KLD_DIRECTION == "KL(p_baseline || p_other)"
    probs = class_kld(torch.from_numpy(pa), torch.from_numpy(pb), kind="probs")
    np.testing.assert_allclose(probs.numpy(), want, rtol=1e-12, atol=1e-14)
    assert torch.all(class_kld(la, la) == 0)
    # huge logits stay finite (log_softmax in float64)
    big = torch.tensor([[1000.0, 0.0], [0.0, 1000.0]])
    assert torch.isfinite(class_kld(big, big.flip(1))).all()


def test_class_kld_through_compare_maps_and_errors() -> None:
    a, b = CASES["relu"]
    la, lb = torch.randn(a.shape[0], 5), torch.randn(a.shape[0], 5)
    out = compare_maps(a, b, ["mad", "class_kld"], a_logits=la, b_logits=lb, block_pairs=5)
    torch.testing.assert_close(out["class_kld"], class_kld(la, lb))
    with pytest.raises(AuglensError, match="needs the class logits"):
        compare_maps(a, b, ["class_kld"])
    with pytest.raises(AuglensError, match=r"a \(3, 5\) vs b \(baseline\) \(3, 4\)"):
        class_kld(torch.zeros(3, 5), torch.zeros(3, 4))
    with pytest.raises(AuglensError, match="1 of 3 rows"):
        class_kld(torch.tensor([[0.0, math.nan]] + [[0.0, 1.0]] * 2), torch.zeros(3, 2))
    with pytest.raises(AuglensError, match="sum"):
        class_kld(torch.ones(2, 3), torch.ones(2, 3), kind="probs")
    with pytest.raises(AuglensError, match="images but there are"):
        compare_maps(a, b, ["class_kld"], a_logits=la[:3], b_logits=lb[:3])


# ------------------------------------------------------------------------ beyond the paper


@pytest.mark.parametrize("shape", [(12, 14), (11, 11), (8, 8), (5, 7), (3, 3), (1, 4)])
def test_ssim_matches_transcription(shape: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    a = torch.relu(torch.randn(6, *shape, generator=g))
    b = torch.relu(a + 0.5 * torch.randn(6, *shape, generator=g))
    np.testing.assert_allclose(ssim(a, b).numpy(), per_pair(ref_ssim, a, b), rtol=0, atol=1e-12)
    assert torch.allclose(ssim(a, a), torch.ones(6, dtype=torch.float64))


@pytest.mark.parametrize("shape", [(12, 14), (11, 11), (8, 8), (5, 7), (3, 3)])
def test_ssim_matches_skimage(shape: tuple[int, int]) -> None:
    metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(7)
    a, b = torch.randn(4, *shape, generator=g), torch.randn(4, *shape, generator=g)
    want = [
        metrics.structural_similarity(
            ref_norm(a[i].numpy()),
            ref_norm(b[i].numpy()),
            data_range=1.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            win_size=ssim_window(*shape),
        )  # fmt: skip
        for i in range(4)
    ]
    np.testing.assert_allclose(ssim(a, b).numpy(), want, rtol=0, atol=1e-12)


def test_center_of_mass_shift() -> None:
    a, b = torch.zeros(3, 4, 5), torch.zeros(3, 4, 5)
    a[0, 0, 0], b[0, 3, 4] = 1.0, 2.0  # centroids (0, 0) and (3, 4): distance 5
    a[1], b[1] = 1.0, 1.0  # same centroid
    b[2, 1, 1] = 1.0  # a[2] sums to 0 → NaN
    got = center_of_mass_shift(a, b)
    assert got[0].item() == pytest.approx(5.0) and got[1].item() == pytest.approx(0.0)
    assert math.isnan(got[2].item())
    x, y = CASES["relu"]
    np.testing.assert_allclose(
        center_of_mass_shift(x, y).numpy(), per_pair(ref_com_shift, x, y), rtol=0, atol=1e-12
    )


def test_emd_exact_against_dense_linprog() -> None:
    g = torch.Generator().manual_seed(11)
    a = torch.relu(torch.randn(4, 4, 4, generator=g))
    b = torch.relu(torch.randn(4, 4, 4, generator=g))
    b[3] = 0.0  # empty map → NaN
    want = per_pair(ref_emd, a, b)
    backends = ["linprog"]
    try:
        import ot  # noqa: F401

        backends.append("pot")
    except ImportError:
        pass
    for backend in backends:
        np.testing.assert_allclose(emd(a, b, backend=backend).numpy(), want, rtol=0, atol=1e-7)
    assert count_nans({"emd": emd(a, b)}) == {"emd": 1}


def test_emd_known_answers() -> None:
    a, b = torch.zeros(2, 4, 5), torch.zeros(2, 4, 5)
    a[0, 0, 0], b[0, 3, 4] = 1.0, 7.0  # all mass moves 5 pixels (3-4-5 triangle)
    a[1, 2] = torch.tensor([1.0, 2.0, 3.0, 0.0, 4.0])  # one row: EMD = 1-D Wasserstein
    b[1, 2] = torch.tensor([0.0, 5.0, 1.0, 1.0, 1.0])
    got = emd(a, b)
    assert got[0].item() == pytest.approx(5.0, abs=1e-9)
    cols = np.arange(5)
    want = scipy.stats.wasserstein_distance(cols, cols, a[1, 2].numpy(), b[1, 2].numpy())
    assert got[1].item() == pytest.approx(want, abs=1e-9)
    assert "emd" not in DEFAULT_METRICS  # exact EMD is slow: opt-in
    with pytest.raises(AuglensError, match="unknown EMD backend"):
        emd(a, b, backend="sinkhorn")  # type: ignore[arg-type]


def test_package_exports_the_public_names() -> None:
    """similarity is a package; its public names (and nothing else) reach auglens.metrics."""
    import auglens.metrics as M
    import auglens.metrics.similarity as S

    public = {
        "CLASS_KLD_DIRECTION", "DEFAULT_METRICS", "METRICS", "MapComparison", "MapContext",
        "average_ranks", "center_of_mass_shift", "class_kld", "compare_maps", "count_nans", "emd",
        "mad", "minmax_normalize", "msd", "overlap_rate", "pearson", "resolve_metrics",
        "spearman", "ssim", "ssim_window", "top_count", "topk_iou",
    }  # fmt: skip
    assert set(S.__all__) == public and len(S.__all__) == len(public)
    assert public <= set(M.__all__) and len(M.__all__) == len(set(M.__all__))
    assert all(getattr(M, name) is getattr(S, name) for name in public)
