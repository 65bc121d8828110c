"""Registry of models, default Grad-CAM target layers, and checkpoint I/O (safetensors)."""

from __future__ import annotations

import hashlib
import pickle
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from ..errors import AuglensError
from ..registry import Registry
from ..utils import atomic_path
from .airbench import AirbenchNet
from .small import FastResNet, SmallResNet
from .vit import SmallViT, TokenGrid

#: name -> factory(num_classes, **params) -> nn.Module with attribute ``default_target_layer``
MODELS: Registry = Registry("model")


@MODELS.register("small_resnet")
def small_resnet(num_classes: int, width: int = 16, blocks: int = 1) -> nn.Module:
    """Small CIFAR-style ResNet (CPU default); Grad-CAM target ``layer3`` (input/4 resolution)."""
    model = SmallResNet(num_classes, width=width, blocks=blocks)
    model.default_target_layer = "layer3"
    return model


@MODELS.register("fast_resnet")
def fast_resnet(num_classes: int, width: int = 16, blocks: int = 1, patch: int = 2) -> nn.Module:
    """Small residual CNN with a patch×patch patchify stem (patch 2 or 4), 2–4× faster than
    small_resnet on CPU (built-in presets); Grad-CAM target ``layer2`` (input/4 resolution)."""
    if patch not in (2, 4):
        raise AuglensError(f"fast_resnet: patch must be 2 or 4, got {patch}")
    model = FastResNet(num_classes, width=width, blocks=blocks, patch=patch)
    model.default_target_layer = "layer2"
    return model


@MODELS.register("airbench")
def airbench(
    num_classes: int,
    width: float = 1.0,
    bn_momentum: float = 0.4,
    bias_scale: float = 8.0,
    logit_scale: float = 1 / 9,
) -> nn.Module:
    """Fast small-image net after KellerJordan/cifar10-airbench (no flips, translations, label
    smoothing or TTA); call `auglens.models.init_from_data` on the un-augmented training images
    before training (fits its frozen patch-whitening conv); Grad-CAM target ``block2`` (input/4).
    """
    return AirbenchNet(num_classes, width, bn_momentum, bias_scale, logit_scale)


def _cifar_stem(model: nn.Module) -> None:
    """Replace the ImageNet stem (7×7/2 conv + max-pool) by a 3×3/1 conv, as for 32×32 inputs."""
    model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()


def _resnet(factory: Any, num_classes: int, cifar_stem: bool) -> nn.Module:
    model = factory(weights=None, num_classes=num_classes)
    if cifar_stem:
        _cifar_stem(model)
    model.default_target_layer = "layer4"
    return model


@MODELS.register("resnet18")
def resnet18(num_classes: int, cifar_stem: bool = False) -> nn.Module:
    """torchvision ResNet-18, random init; ``cifar_stem`` for small inputs; target ``layer4``."""
    return _resnet(torchvision.models.resnet18, num_classes, cifar_stem)


@MODELS.register("resnet50")
def resnet50(num_classes: int, cifar_stem: bool = False) -> nn.Module:
    """torchvision ResNet-50 (Study B), random init; ``cifar_stem`` for small inputs; ``layer4``."""
    return _resnet(torchvision.models.resnet50, num_classes, cifar_stem)


@MODELS.register("efficientnet_b0")
def efficientnet_b0(num_classes: int, dropout: float = 0.2) -> nn.Module:
    """torchvision EfficientNet-B0 (Study A), random init; target ``features.8`` (last conv)."""
    model = torchvision.models.efficientnet_b0(
        weights=None, num_classes=num_classes, dropout=dropout
    )
    model.default_target_layer = "features.8"
    return model


@MODELS.register("small_vit")
def small_vit(
    num_classes: int,
    width: int = 64,
    depth: int = 4,
    patch: int = 4,
    heads: int = 4,
    mlp_ratio: float = 2.0,
    image_size: int = 32,
    dropout: float = 0.0,
    stem: str = "conv",
) -> nn.Module:
    """Small ViT for 32×32 (CPU; 8×8 patches at patch 4; ``stem`` "conv" or "patch"); CAM target
    ``blocks.<last>.norm1``."""
    model = SmallViT(
        num_classes, image_size, patch, width, depth, heads, mlp_ratio, dropout, stem
    )
    model.default_target_layer = f"blocks.{depth - 1}.norm1"
    model.cam_reshape = TokenGrid(prefix=1)
    return model


@MODELS.register("vit_b_16")
def vit_b_16(num_classes: int) -> nn.Module:
    """torchvision ViT-B/16, random init, 224×224 inputs only (set ``input_size: 224`` for smaller
    images); CAM target ``encoder.layers.encoder_layer_11.ln_1`` (14×14 patches)."""
    model = torchvision.models.vit_b_16(weights=None, num_classes=num_classes)
    model.default_target_layer = "encoder.layers.encoder_layer_11.ln_1"
    model.cam_reshape = TokenGrid(prefix=1)
    return model


class InputResize(nn.Module):
    """Bilinearly resizes inputs to ``size``×``size`` before ``net`` (e.g. CIFAR 32 → 224)."""

    def __init__(self, net: nn.Module, size: int) -> None:
        super().__init__()
        self.net = net
        self.size = size
        self.default_target_layer = "net." + net.default_target_layer
        if getattr(net, "cam_reshape", None) is not None:
            self.cam_reshape = net.cam_reshape

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.net(x)


def build_model(
    name: str,
    num_classes: int,
    input_size: int | None = None,
    checkpoint: str | Path | None = None,
    **params: object,
) -> nn.Module:
    """Build a registered model (random init from the global RNG), optionally resized input and
    weights loaded from a local checkpoint. Never downloads anything."""
    factory = MODELS.get(name)
    try:
        model = factory(num_classes, **params)
    except TypeError as e:
        valid = ", ".join(MODELS.describe(name)["params"]) or "none"
        raise AuglensError(
            f"bad parameter for model '{name}': {e}; valid parameters: {valid}"
        ) from e
    if input_size is not None:
        model = InputResize(model, input_size)
    if checkpoint is not None:
        load_weights(model, checkpoint, num_classes=num_classes)
    return model


def default_target_layer(model: nn.Module) -> str:
    """The registered default Grad-CAM layer name of ``model`` (a dotted module path)."""
    name = getattr(model, "default_target_layer", None)
    if name is None:
        raise AuglensError(
            f"{type(model).__name__} has no default target layer; pass one by module name"
        )
    return name


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The sub-module at dotted path ``name``; unknown names list the valid ones near it."""
    modules = dict(model.named_modules())
    if name not in modules:
        top = [n for n in modules if n and "." not in n]
        raise AuglensError(
            f"model {type(model).__name__} has no module '{name}'; top-level modules: "
            f"{', '.join(top)} (use dotted paths for nested ones, e.g. '{top[-1]}.0')"
        )
    return modules[name]


def load_model(model_cfg: Any, num_classes: int, weights: str | Path | None = None) -> nn.Module:
    """The model a config's ``model`` section names (``name``, ``input_size``, ``params()``), with
    ``weights`` loaded (None: ``model_cfg.checkpoint`` or random init), in eval mode."""
    checkpoint = weights if weights is not None else getattr(model_cfg, "checkpoint", None)
    return build_model(model_cfg.name, num_classes, model_cfg.input_size, checkpoint,
                       **model_cfg.params()).eval()


def weights_sha256(path: str | Path) -> str:
    """The identity of a set of weights: the sha256 of its safetensors file (what `save_weights`
    returns and every record, key and cache stores)."""
    return file_sha256(path)


def weights_fingerprint(model: nn.Module) -> str:
    """The same identity computed from a model in memory: sha256 of the safetensors bytes of its
    state dict (CPU, contiguous) — equal to `weights_sha256` of the file `save_weights` writes."""
    from safetensors.torch import save

    return hashlib.sha256(save(_state(model))).hexdigest()


def _state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_weights(model: nn.Module, path: str | Path) -> str:
    """Write the state dict as safetensors atomically (temp file + rename); returns its sha256."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(_state(model), tmp)
    return file_sha256(path)


_NESTED_KEYS = ("state_dict", "model_state_dict", "model")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a safetensors file, or a torch file with ``weights_only=True`` (no arbitrary code).

    A torch file may hold the state dict itself or under "state_dict", "model_state_dict" or
    "model" (common training checkpoints). A pickle that needs anything but tensors and plain
    containers is refused with an AuglensError naming the file and the offending global."""
    path = Path(path)
    if not path.is_file():
        raise AuglensError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise AuglensError(f"corrupt checkpoint {path}: {e}") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        m = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", str(e), re.IGNORECASE)
        what = f"'{m.group(1)}'" if m else "objects other than tensors"
        raise AuglensError(
            f"cannot load checkpoint {path} safely: refused, it is a pickle that needs {what} to "
            "load, which could run arbitrary code (auglens loads torch files with "
            "weights_only=True). Re-save the weights as a plain state_dict "
            "(torch.save(model.state_dict(), path)) or as .safetensors"
        ) from None
    except Exception as e:
        raise AuglensError(
            f"cannot load checkpoint {path} safely (weights_only=True refused or file corrupt): "
            f"{str(e).splitlines()[0]}; save a plain state_dict or a .safetensors file"
        ) from e
    if isinstance(obj, dict):
        for key in _NESTED_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise AuglensError(f"checkpoint {path} does not hold a state_dict of tensors")
    return obj


def _align_keys(state: dict[str, Tensor], own: dict[str, Tensor]) -> dict[str, Tensor]:
    """Adapt common key prefixes: strip "module." (DataParallel) and add "net." when the model is
    wrapped in `InputResize` but the checkpoint is of the bare network (e.g. torchvision's)."""
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if own and all(k.startswith("net.") for k in own) and not any(k in own for k in state):
        state = {"net." + k: v for k, v in state.items()}
    return state


def _head(model: nn.Module) -> tuple[str, nn.Linear] | None:
    """The last ``nn.Linear`` of ``model`` (its classifier head), by module order."""
    heads = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return heads[-1] if heads else None


def load_weights(model: nn.Module, path: str | Path, num_classes: int | None = None) -> nn.Module:
    """Load a checkpoint into ``model`` strictly; mismatched keys or shapes give a clear error.

    A checkpoint whose classifier head (the model's last ``nn.Linear``) has another number of
    outputs is reported as a class-count mismatch naming the file and both counts (checked when
    ``num_classes``, the data's class count, is None or the head's size). Keys saved with a
    "module." prefix, or without the "net." prefix of an `InputResize` wrapper, are accepted."""
    own = model.state_dict()
    state = _align_keys(read_state_dict(path), own)
    head = _head(model)
    if head is not None and num_classes in (None, head[1].out_features):
        key = f"{head[0]}.weight"
        want = head[1].out_features
        got = state.get(key)
        if got is not None and got.ndim == 2 and got.shape[0] != want:
            raise AuglensError(
                f"class-count mismatch: checkpoint {path} has {got.shape[0]} output classes but "
                f"the data has {want} classes (shape mismatch {key}: checkpoint "
                f"{tuple(got.shape)} vs model {tuple(own[key].shape)}); use a checkpoint trained "
                "on these classes"
            )
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    bad_shape = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or bad_shape:
        parts = []
        if bad_shape:
            parts.append("shape mismatch " + "; ".join(bad_shape[:3]))
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        raise AuglensError(
            f"checkpoint {path} does not match model {type(model).__name__}: " + "; ".join(parts)
        )
    model.load_state_dict(state)
    return model
