"""Numeric precision of the model's compute: which autocast dtype a device gets, and the context
that applies it. The model itself stays float32 (master weights); autocast runs convolutions and
matrix products in bfloat16 where the hardware does that natively."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch


@functools.cache
def cpu_has_bf16() -> bool:
    """True on CPUs with native bfloat16 matrix instructions (AVX-512-BF16 or AMX), where
    oneDNN runs bfloat16 convolutions faster than float32; False elsewhere (e.g. AVX2 only, where
    bfloat16 is emulated and several times slower)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` → ``bf16`` on CUDA with bfloat16 support and on CPUs with native bfloat16, else
    ``fp32``; ``fp32`` / ``bf16`` are taken as given."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Autocast to bfloat16 for ``precision == "bf16"``; a no-op for ``fp32``."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        yield


def memory_format(model: torch.nn.Module) -> torch.memory_format:
    """``channels_last`` (faster convolutions on CPU and CUDA), except for models with a strided
    1×1 convolution of fewer than 8 input channels: its channels-last backward pass crashes the
    process in oneDNN on AVX2 CPUs (torch 2.14; e.g. a ResNet shortcut at width 4)."""
    for m in model.modules():
        if (isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) and m.in_channels < 8
                and max(m.stride) > 1):
            return torch.contiguous_format
    return torch.channels_last


def numeric_environment(device: torch.device, precision: str, threads: int) -> dict[str, str]:
    """What else decides the exact numbers a model computes, besides its inputs: the torch
    version, the device (and on CPU its instruction set and the pinned thread count — reductions
    are split by thread), and the precision path. Part of every key of trained or computed
    results, so that a run never mixes results from two numeric environments."""
    env = {"torch": torch.__version__, "device": device.type, "precision": precision}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    else:
        env["cpu"] = torch.backends.cpu.get_cpu_capability()
        env["threads"] = str(threads)
    return env
