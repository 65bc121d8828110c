"""Model registry: a small CIFAR-style ResNet (CPU default), an airbench-style fast net for small
images, and torchvision backbones."""

from .airbench import init_from_data, init_whitening
from .registry import (
    MODELS,
    build_model,
    default_target_layer,
    get_module,
    load_weights,
    save_weights,
)

__all__ = [
    "MODELS",
    "build_model",
    "default_target_layer",
    "get_module",
    "init_from_data",
    "init_whitening",
    "load_weights",
    "save_weights",
]
