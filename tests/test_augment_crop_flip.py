"""random_resized_crop and hflip against torchvision, per sample."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torchvision.transforms.v2 import functional as TF

from auglens.augment import build_augmentation
from auglens.augment.geometric import resized_crop_params
from auglens.errors import AuglensError


def _run(spec, x, seed=0):
    y = torch.nn.functional.one_hot(torch.arange(x.shape[0]) % 10, 10).float()
    return build_augmentation(spec)(x, y, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("size", [(32, 32), (24, 40)])
def test_random_resized_crop_equals_torchvision_resized_crop_per_sample(size):
    x = torch.rand(48, 3, *size, generator=torch.Generator().manual_seed(3))
    out, y, log = _run([{"name": "random_resized_crop"}], x)
    assert out.shape == x.shape and log["applied"].all()
    for i in range(x.shape[0]):
        t, l, h, w = (int(log[k][i]) for k in ("top", "left", "height", "width"))
        assert 0 <= t and t + h <= size[0] and 0 <= l and l + w <= size[1]
        ref = TF.resized_crop(x[i], t, l, h, w, list(size), antialias=True)
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=0)


def test_crop_area_and_aspect_follow_torchvision_get_params():
    n = 20000
    top, left, h, w = resized_crop_params(n, 64, 64, (0.08, 1.0), (3 / 4, 4 / 3),
                                          torch.Generator().manual_seed(0))
    frac = (h * w).double().numpy() / 64**2
    aspect = (w.double() / h.double()).numpy()
    assert frac.min() >= 0.08 * 0.75 and frac.max() <= 1.0  # rounding of w and h
    assert aspect.min() >= 0.75 * 0.85 and aspect.max() <= 4 / 3 * 1.15
    torch.manual_seed(0)
    ref = np.array([_tv_params(64, 64) for _ in range(4000)])
    ref_frac = ref[:, 2] * ref[:, 3] / 64**2
    # same distribution of the crop area (two-sample Kolmogorov–Smirnov)
    assert stats.ks_2samp(frac, ref_frac).pvalue > 1e-3


def _tv_params(height, width):
    """torchvision's RandomResizedCrop parameter draw (v1 get_params, the reference)."""
    from torchvision.transforms import RandomResizedCrop

    img = torch.empty(1, height, width)
    return RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3])


def test_fallback_is_torchvisions_centre_crop():
    # an aspect range no crop of a square image can satisfy at this area: always the fallback
    top, left, h, w = resized_crop_params(5, 30, 30, (0.99, 1.0), (3.0, 4.0),
                                          torch.Generator().manual_seed(0))
    assert w.tolist() == [30] * 5 and h.tolist() == [round(30 / 3.0)] * 5
    assert top.tolist() == [(30 - 10) // 2] * 5 and left.tolist() == [0] * 5
    top, left, h, w = resized_crop_params(3, 30, 30, (0.99, 1.0), (0.2, 0.25),
                                          torch.Generator().manual_seed(0))
    assert h.tolist() == [30] * 3 and w.tolist() == [round(30 * 0.25)] * 3


def test_full_scale_crop_and_p0_are_the_identity():
    x = torch.rand(8, 3, 16, 16)
    out, _, log = _run([{"name": "random_resized_crop", "scale": [1.0, 1.0],
                         "ratio": [1.0, 1.0]}], x)
    assert log["height"].tolist() == [16] * 8
    torch.testing.assert_close(out, x, atol=1e-6, rtol=0)
    out, _, log = _run([{"name": "random_resized_crop", "p": 0.0}], x)
    assert torch.equal(out, x) and not log["applied"].any()


def test_hflip_flips_exactly_the_applied_samples_at_rate_p():
    x = torch.rand(4000, 1, 2, 3)
    out, _, log = _run([{"name": "hflip"}], x, seed=5)
    a = log["applied"]
    assert torch.equal(out[a], x[a].flip(-1)) and torch.equal(out[~a], x[~a])
    rate = a.double().mean().item()
    assert abs(rate - 0.5) < 4 * math.sqrt(0.25 / 4000)
    out1, _, _ = _run([{"name": "hflip", "p": 1.0}], x[:3])
    assert torch.equal(out1, x[:3].flip(-1))


def test_same_seed_same_crops_and_bad_parameters():
    x = torch.rand(16, 3, 20, 20)
    a, _, la = _run([{"name": "random_resized_crop"}, {"name": "hflip"}], x, seed=9)
    b, _, lb = _run([{"name": "random_resized_crop"}, {"name": "hflip"}], x, seed=9)
    assert torch.equal(a, b)
    with pytest.raises(AuglensError, match="scale"):
        build_augmentation([{"name": "random_resized_crop", "scale": [0.5, 1.5]}])
    with pytest.raises(AuglensError, match="ratio"):
        build_augmentation([{"name": "random_resized_crop", "ratio": [2.0, 1.0]}])
