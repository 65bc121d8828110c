"""Model plumbing shared by every method that looks inside a model: `LayerTap` (hooks on modules
for the duration of a with-block, through torch's public hook API, removed on exit also on
error) and the device / dtype of a model."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..errors import AuglensError
from .vit import token_grid

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


def feature_grid(model: nn.Module, output: object, layer_name: str) -> Tensor:
    """A target layer's output as a feature grid (B, C, h, w): a 4-D tensor as it is; a token
    sequence (B, N, D) of a model that declares a `TokenGrid` in ``cam_reshape`` reshaped by it
    (class token dropped, patch tokens row-major; differentiable). Anything else raises."""
    if isinstance(output, Tensor) and output.ndim == 4:
        return output
    adapter = token_grid(model)
    if adapter is not None and isinstance(output, Tensor) and output.ndim == 3:
        return adapter.to_grid(output)
    desc = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
    tokens = " or tokens (B, N, D) of a model with a TokenGrid in cam_reshape" if adapter else ""
    raise AuglensError(
        f"target layer '{layer_name}' must output a 4-D tensor (B, C, h, w){tokens}, got {desc}; "
        "choose a convolutional layer" + (" or a token layer" if adapter else "")
    )


@contextmanager
def preserved_state(model: nn.Module, freeze_params: bool = True) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode (and, if ``freeze_params``, all parameters to
    ``requires_grad=False``) for the duration of the block; on exit, also on errors, restore every
    module's ``training`` flag and every parameter's ``requires_grad`` and ``.grad`` object. Hooks
    are added only through `auglens.models.tap.LayerTap`, which removes its own."""
    modules = list(model.modules())
    training = [m.training for m in modules]
    params = list(model.parameters())
    requires = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    try:
        if any(training):
            model.eval()
        if freeze_params:
            for p, flag in zip(params, requires, strict=True):
                if flag:
                    p.requires_grad_(False)
        yield model
    finally:
        for m, flag in zip(modules, training, strict=True):
            if m.training != flag:
                m.training = flag
        for p, flag, g in zip(params, requires, grads, strict=True):
            if p.requires_grad != flag:
                p.requires_grad_(flag)
            if p.grad is not g:
                p.grad = g
