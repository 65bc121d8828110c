"""Model registry: a small CIFAR-style ResNet (CPU default), a small ViT, torchvision backbones."""

from .registry import (
    MODELS,
    build_model,
    default_target_layer,
    get_module,
    load_model,
    load_weights,
    save_weights,
    weights_fingerprint,
    weights_sha256,
)
from .vit import SmallViT, TokenGrid, token_grid

__all__ = [
    "MODELS",
    "build_model",
    "default_target_layer",
    "get_module",
    "load_model",
    "load_weights",
    "save_weights",
    "weights_fingerprint",
    "weights_sha256",
    "SmallViT",
    "TokenGrid",
    "token_grid",
]
