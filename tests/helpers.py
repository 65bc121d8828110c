"""Shared test helpers."""

import torch
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
