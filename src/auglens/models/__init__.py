"""Model registry: a fast small-image ResNet (CPU default), an airbench-style net, a small ViT,
torchvision backbones; checkpoints, the weights identity, layer taps, precision."""

from .airbench import init_from_data, init_whitening
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
    "init_from_data",
    "init_whitening",
    "load_weights",
    "save_weights",
    "weights_fingerprint",
    "weights_sha256",
    "SmallViT",
    "TokenGrid",
    "token_grid",
]
