"""Shared test helpers."""

import math

import numpy as np
import torch
from scipy import stats
from torch import nn

from auglens.models import build_model


def random_model(name: str, num_classes: int, seed: int = 0, bias_scale: float = 0.1,
                 **params) -> nn.Module:
    """``build_model(name, ...)`` with random init and non-trivial BatchNorm statistics (so maps
    and activations are not all ~0), in eval mode; deterministic in ``seed``."""
    torch.manual_seed(seed)
    m = build_model(name, num_classes, **params)
    g = torch.Generator().manual_seed(seed)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            c = mod.num_features
            mod.running_mean.copy_(0.1 * torch.randn(c, generator=g))
            mod.running_var.copy_(0.5 + torch.rand(c, generator=g))
            mod.weight.data.copy_(0.5 + torch.rand(c, generator=g))
            mod.bias.data.copy_(bias_scale * torch.randn(c, generator=g))
    return m.eval()


def two_way_half_width(stat, sds: np.ndarray, img: np.ndarray, level: float) -> float:
    """Half-width of the two-way (seed × image) bootstrap t interval, by loops: ``stat(seeds,
    images)`` over the seed-only draws ``sds`` (n_boot, R) and the image-only draws ``img``
    (n_boot, I); se² = v_seeds·R/(R−1) + v_images·I/(I−1), Satterthwaite df (docs/statistics.md)."""
    (n_boot, s_n), i_n = sds.shape, img.shape[1]
    only_s = [stat(sds[b], range(i_n)) for b in range(n_boot)]
    only_i = [stat(range(s_n), img[b]) for b in range(n_boot)]
    v_s = np.nanvar(only_s, ddof=1) * s_n / (s_n - 1)
    v_i = np.nanvar(only_i, ddof=1) * i_n / (i_n - 1)
    var = v_s + v_i
    df = var**2 / (v_s**2 / (s_n - 1) + v_i**2 / (i_n - 1))
    return float(stats.t.ppf(1 - (1 - level) / 2, df) * math.sqrt(var))


def run_shrunk_preset(name: str, keep, tmp_path, **sections) -> tuple[dict, "object"]:
    """Run preset ``name`` through `auglens run` cut down to the variants in ``keep``, 2 seeds,
    tiny data, 1 epoch, width 4, no sanity stage, no matched baseline (``sections`` replace
    whole config sections) → (the raw config, the run directory)."""
    import yaml

    from auglens.cli import _preset_raw, main

    raw = _preset_raw(name)
    raw["variants"] = {v: s for v, s in raw["variants"].items() if v in keep}
    raw["data"] |= {"n_train": 96, "n_val": 32, "n_test": 16}
    raw["model"] |= {"width": 4}
    raw |= {"train": {"epochs": 1, "batch_size": 32, "threads": 1}, "seeds": [0, 1],
            "sanity": {"enabled": False}, "analysis": {"n_boot": 100, "matched": False}}
    raw |= sections
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    assert main(["run", str(tmp_path / "exp.yaml"), "--out", str(out), "--quiet",
                 "--workers", "1"]) == 0
    return raw, out
