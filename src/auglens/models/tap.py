"""Model plumbing shared by every method that looks inside a model: `LayerTap` (hooks on modules
for the duration of a with-block, through torch's public hook API, removed on exit also on
error) and the device / dtype of a model."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch import nn

Hook = Callable[..., Any]


class LayerTap:
    """Hooks on one or more modules while a with-block runs.

    ``LayerTap(module_or_modules, fn, kind="forward")``: ``fn(module, inputs, output)`` for every
    call of each module (return a tensor to replace the output, None to keep it); ``kind="pre"``
    registers forward pre-hooks ``fn(module, args)`` instead (``with_kwargs=True``:
    ``fn(module, args, kwargs)`` returning ``(args, kwargs)`` or None). Every handle is removed
    when the block ends, also when it raises: nothing is left on the model.

        with LayerTap(model.layer3, lambda m, i, o: acts.append(o)):
            logits = model(x)
    """

    def __init__(self, modules: nn.Module | Iterable[nn.Module], fn: Hook,
                 kind: Literal["forward", "pre"] = "forward", with_kwargs: bool = False) -> None:
        self.modules = [modules] if isinstance(modules, nn.Module) else list(modules)
        self.fn, self.kind, self.with_kwargs = fn, kind, with_kwargs
        self._handles: list[Any] = []

    def __enter__(self) -> LayerTap:
        try:
            for m in self.modules:
                if self.kind == "pre":
                    h = m.register_forward_pre_hook(self.fn, with_kwargs=self.with_kwargs)
                else:
                    h = m.register_forward_hook(self.fn, with_kwargs=self.with_kwargs)
                self._handles.append(h)
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook this tap added (idempotent)."""
        while self._handles:
            self._handles.pop().remove()


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (or buffer); CPU for a model without tensors."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """Floating dtype of the model's first floating parameter (float32 if none)."""
    for t in model.parameters():
        if t.is_floating_point():
            return t.dtype
    return torch.float32
