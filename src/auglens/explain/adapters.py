"""Adapters: any Captum attribution (``captum:<Class>``) and any pytorch-grad-cam CAM
(``pgc:<Class>``) as an auglens `Explainer`, by name, in ``explain.methods``.

Both families are registered in `EXPLAINERS` (`Registry.register_family`); the libraries are
imported only when a name is resolved (a missing one raises `AuglensError` saying
``pip install captum`` / ``pip install grad-cam``). ``EXPLAINERS.describe("captum:X")["params"]``
lists the adapter's own parameters and the library's constructor and ``attribute`` /
``__call__`` keyword arguments with the library's defaults; only the parameters a user sets are
passed on, so an adapter computes exactly what a direct call of the library computes.

Common to both (the `Explainer` contract): one call explains a batch for the predicted class
(argmax of the logits, first index on ties) or given class ids, and optionally the ground-truth
class; the model runs in eval mode and its state is restored exactly (training flags,
``requires_grad``, ``.grad``, hooks, and sub-modules a library swapped in — pytorch-grad-cam's
AblationCAM replaces the target layer while it runs). Maps are float32 (B, h, w), not normalised
unless the library normalises; ``Explanation.layer`` is the target layer, or ``"input"`` for a
method that attributes to the input pixels. Layer methods use ``target_layer`` (None: the model's
default, `auglens.models.default_target_layer`). What an adapter did is in ``explainer.settings``
(library and version, class, parameters passed, channel reduction / output kind).

**Captum** (``captum:<Class>``: every ``captum.attr`` attribution whose ``attribute`` takes a
``target``, plus ``NoiseTunnel``; neuron, LLM and data-loader attributions are excluded). The
class is built on the model (``forward_func``/``model``; ``layer`` = the target layer for layer
methods) and ``attribute(x, target=targets, **params)`` runs on the model's logits. Targets need
logits first, so the adapter runs one plain forward (no graph) before ``attribute`` — what a
direct use of Captum does too (``model(x).argmax(1)``, then ``attribute``). ``NoiseTunnel``
(SmoothGrad and variants) wraps the method named by ``inner`` (default ``"Saliency"``), whose
parameters go in ``inner_params``. ``sliding_window_shapes`` and ``strides`` given as lists (YAML)
become tuples, as Captum requires.

Channel reduction (``reduce``) of an attribution (B, C, h, w) to a map (B, h, w):
``"abs_sum"`` = |Σ_c a_c| (Captum's ``visualize_image_attr(sign="absolute_value")``, which sums over
channels before taking the sign transform), ``"sum"`` = Σ_c a_c (``sign="all"``, signed),
``"positive_sum"`` = max(Σ_c a_c, 0) (``sign="positive"``), ``"sum_abs"`` = Σ_c |a_c|, ``"l2"`` =
(Σ_c a_c²)^½ (road_evaluation's display), ``"none"`` (one channel only, squeezed). ``"auto"``
(default): ``"none"`` for one-channel attributions (``LayerGradCam``), else ``"abs_sum"``; the
resolved choice is in ``settings["reduce"]``.

**pytorch-grad-cam** (``pgc:<Class>``: every ``BaseCAM`` subclass exported by
``pytorch_grad_cam``). The CAM object is built per call on ``[target layer]`` and released (hooks
removed) afterwards. ``output``: ``"raw"`` = the map before pytorch-grad-cam's post-processing, at
the layer's resolution: ``ReLU(get_cam_image(...))`` exactly as ``BaseCAM.compute_cam_per_layer``
computes it, without ``scale_cam_image`` (per-image min-max and resize to the input) — the auglens
convention for stored maps (SPEC §2). ``"library"`` = the library's own output (min-max scaled to
[0, 1] per image, resized to the input with OpenCV). ``"auto"`` (default): ``"raw"`` when the class
keeps ``BaseCAM``'s ``forward`` / ``compute_cam_per_layer`` / ``aggregate_multi_layers``, else
``"library"`` (``FullGrad``). Logits come from the CAM's own forward (``cam.outputs``, no extra
pass), except with ``aug_smooth`` (one plain forward). Gradients flow to a copy of the input
instead of to the parameters (the parameters stay frozen, as in every auglens explainer): the
gradients w.r.t. the layer are the same, no parameter ``.grad`` is built — except for CAMs that
keep the graph (``detach=False``: ShapleyCAM's Hessian-vector product), which run with every
parameter requiring grad, as a direct call on a trainable model does.
"""

from __future__ import annotations

import importlib
import inspect
import types
from collections.abc import Callable, Mapping
from functools import cache, lru_cache
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import AuglensError
from ..models.registry import default_target_layer, get_module
from .base import EXPLAINERS, Explainer, resolve_targets

CAPTUM_EXCLUDED_PARAMS = frozenset({
    "self", "inputs", "target", "forward_func", "model", "layer", "device_ids",
    "additional_forward_args", "return_convergence_delta", "attribution_method", "kwargs",
})  # fmt: skip
PGC_EXCLUDED_PARAMS = frozenset({"self", "model", "target_layers", "input_tensor", "targets"})
REDUCTIONS = ("auto", "abs_sum", "sum", "positive_sum", "sum_abs", "l2", "none")
PGC_OUTPUTS = ("auto", "raw", "library")
_TUPLE_PARAMS = ("sliding_window_shapes", "strides")


def _import(module: str, pip: str) -> types.ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise AuglensError(
            f"this explainer needs the optional package '{pip}' ({e}); pip install {pip}"
        ) from None


def _library_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def _signature_params(fn: Callable, excluded: frozenset[str]) -> dict[str, inspect.Parameter]:
    return {
        name: p
        for name, p in inspect.signature(fn).parameters.items()
        if name not in excluded and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }


def _with_signature(cls: type, extra: Mapping[str, inspect.Parameter]) -> type:
    """Give ``cls`` an ``__init__`` whose signature also lists ``extra`` (keyword-only), so that
    `Registry.describe` shows the library's parameters with their defaults."""
    base_init = cls.__init__

    def __init__(self: Any, model: nn.Module, target_layer: str | None = None, **kw: Any) -> None:
        base_init(self, model, target_layer, **kw)

    own = list(inspect.signature(base_init).parameters.values())
    own = [p for p in own if p.kind is not p.VAR_KEYWORD]
    taken = {p.name for p in own}
    more = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=inspect.Parameter.empty)
        for name, p in extra.items()
        if name not in taken
    ]
    __init__.__signature__ = inspect.Signature(own + more)  # type: ignore[attr-defined]
    cls.__init__ = __init__  # type: ignore[misc]
    return cls


def _snapshot_children(model: nn.Module) -> list[tuple[nn.Module, dict[str, nn.Module | None]]]:
    return [(m, dict(m._modules)) for m in model.modules()]


def _restore_children(snapshot: list[tuple[nn.Module, dict[str, nn.Module | None]]]) -> None:
    for module, children in snapshot:
        if module._modules != children:
            module._modules.clear()
            module._modules.update(children)


class _AdapterBase(Explainer):
    """Shared by both families: layer resolution (only when the method needs a layer),
    parameter checks, and the restoration of swapped sub-modules."""

    #: "captum" or "pgc"; the library class and its member name
    family: ClassVar[str] = ""
    member: ClassVar[str] = ""
    library: ClassVar[Any] = None
    #: parameters the library accepts (name → inspect.Parameter)
    library_params: ClassVar[dict[str, inspect.Parameter]] = {}
    uses_layer: ClassVar[bool] = True

    def _setup(self, model: nn.Module, target_layer: str | None,
               channels_last: bool | None, params: Mapping[str, Any]) -> None:  # fmt: skip
        self.model = model
        self.channels_last = channels_last
        if self.uses_layer:
            self.layer_name = default_target_layer(model) if target_layer is None else target_layer
            self.layer = get_module(model, self.layer_name)
        else:
            self.layer_name, self.layer = "input", None  # type: ignore[assignment]
        bad = [k for k in params if k not in self.library_params]
        if bad:
            valid = [p for p in inspect.signature(type(self).__init__).parameters
                     if p not in ("self", "model")]  # fmt: skip
            raise AuglensError(
                f"unknown parameter '{bad[0]}' for explainer '{self.name}'; valid: "
                + ", ".join(sorted(valid))
            )
        missing = [
            k
            for k, p in self.library_params.items()
            if p.default is inspect.Parameter.empty and k not in params
        ]
        if missing:
            raise AuglensError(
                f"explainer '{self.name}' needs parameter '{missing[0]}' (set it in "
                f"explain.params['{self.name}'])"
            )
        self.params = {
            k: (tuple(v) if k in _TUPLE_PARAMS and isinstance(v, list) else v)
            for k, v in params.items()
        }

    def __repr__(self) -> str:
        return f"{self.name}({type(self.model).__name__}, layer='{self.layer_name}')"

    def _explain(
        self, x: Tensor, target: Tensor | None, target_gt: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        snapshot = _snapshot_children(self.model)
        try:
            with torch.inference_mode(False), torch.enable_grad():
                return self._run(x, target, target_gt)
        finally:
            _restore_children(snapshot)

    def _run(
        self, x: Tensor, target: Tensor | None, target_gt: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        raise NotImplementedError


# ------------------------------------------------------------------------------------- Captum


def _reduce(attr: Tensor, how: str) -> tuple[Tensor, str]:
    """Attribution (B, C, h, w) → map (B, h, w) and the reduction actually used."""
    if not isinstance(attr, Tensor) or attr.ndim != 4:
        desc = tuple(attr.shape) if isinstance(attr, Tensor) else type(attr).__name__
        raise AuglensError(
            f"the attribution must be (B, C, h, w) to become a map, got {desc}; choose a "
            "convolutional layer or an input attribution"
        )
    if how == "auto":
        how = "none" if attr.shape[1] == 1 else "abs_sum"
    if how == "none":
        if attr.shape[1] != 1:
            raise AuglensError(
                f"reduce='none' needs a one-channel attribution, got {attr.shape[1]} channels; "
                f"choose one of {', '.join(REDUCTIONS)}"
            )
        return attr[:, 0], how
    if how == "sum":
        return attr.sum(1), how
    if how == "abs_sum":
        return attr.sum(1).abs(), how
    if how == "positive_sum":
        return attr.sum(1).clamp_min(0), how
    if how == "sum_abs":
        return attr.abs().sum(1), how
    return attr.pow(2).sum(1).sqrt(), how  # l2


def _captum_class_ok(obj: object, base: type) -> bool:
    if not (inspect.isclass(obj) and issubclass(obj, base) and hasattr(obj, "attribute")):
        return False
    if obj.__name__ == "NoiseTunnel":
        return True
    try:
        attr = inspect.signature(obj.attribute).parameters
        init = list(inspect.signature(obj.__init__).parameters.values())[1:]
    except (TypeError, ValueError):
        return False
    if "target" not in attr or "neuron_selector" in attr or "inputs" not in attr:
        return False
    first_ok = bool(init) and init[0].name in ("forward_func", "model")
    required = [p.name for p in init[1:] if p.default is inspect.Parameter.empty]
    return first_ok and set(required) <= {"layer"}


@lru_cache(maxsize=1)
def captum_members() -> list[str]:
    """Names of the Captum attribution classes the ``captum:`` family accepts."""
    attr = _import("captum.attr", "captum")
    return sorted(n for n in dir(attr) if _captum_class_ok(getattr(attr, n), attr.Attribution))


def _captum_params(cls: type) -> dict[str, inspect.Parameter]:
    out = _signature_params(cls.__init__, CAPTUM_EXCLUDED_PARAMS)
    out.update(_signature_params(cls.attribute, CAPTUM_EXCLUDED_PARAMS))
    return out


class CaptumExplainer(_AdapterBase):
    """Base of the ``captum:<Class>`` adapters (see the module docstring)."""

    family = "captum"

    def __init__(
        self,
        model: nn.Module,
        target_layer: str | None = None,
        *,
        reduce: str = "auto",
        channels_last: bool | None = None,
        **params: Any,
    ) -> None:
        if reduce not in REDUCTIONS:
            raise AuglensError(f"reduce must be one of {', '.join(REDUCTIONS)}, got '{reduce}'")
        self.reduce = reduce
        self.inner_cls: type | None = None
        self.inner_params: dict[str, Any] = {}
        if self.member == "NoiseTunnel":
            inner = params.pop("inner", "Saliency")
            inner_params = dict(params.pop("inner_params", None) or {})
            if inner == "NoiseTunnel" or inner not in captum_members():
                raise AuglensError(
                    f"captum:NoiseTunnel inner method '{inner}' is not a Captum attribution; "
                    "valid: " + ", ".join(m for m in captum_members() if m != "NoiseTunnel")
                )
            self.inner_cls = getattr(_import("captum.attr", "captum"), inner)
            self.uses_layer = "layer" in inspect.signature(self.inner_cls.__init__).parameters
            inner_valid = _captum_params(self.inner_cls)
            bad = [k for k in inner_params if k not in inner_valid]
            if bad:
                raise AuglensError(
                    f"unknown parameter '{bad[0]}' for captum:{inner} in inner_params; valid: "
                    + ", ".join(sorted(inner_valid))
                )
            need = [k for k, p in inner_valid.items()
                    if p.default is inspect.Parameter.empty and k not in inner_params]
            if need:
                raise AuglensError(f"captum:NoiseTunnel inner method {inner} needs parameter "
                                   f"'{need[0]}' in inner_params")
            self.inner_params = inner_params
        self._setup(model, target_layer, channels_last, params)
        self.settings = {
            "library": f"captum {_library_version('captum')}",
            "class": self.member,
            "params": dict(self.params),
            "reduce": reduce,
            "target_score": "logit",
        }
        if self.inner_cls is not None:
            self.settings["inner"] = self.inner_cls.__name__
            self.settings["inner_params"] = dict(self.inner_params)

    def _build(self, cls: type, params: Mapping[str, Any]) -> Any:
        init_names = set(inspect.signature(cls.__init__).parameters)
        kw = {k: v for k, v in params.items() if k in init_names}
        if "layer" in init_names:
            kw["layer"] = self.layer
        return cls(self.model, **kw)

    def _attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        x = x.detach().requires_grad_()  # what Captum would set itself, with a warning
        if self.inner_cls is not None:
            inner = self._build(self.inner_cls, self.inner_params)
            init_names = set(inspect.signature(self.inner_cls.__init__).parameters)
            kw = {k: v for k, v in self.inner_params.items() if k not in init_names}
            attr = self.library(inner).attribute(x, target=targets, **self.params, **kw)
        else:
            init_names = set(inspect.signature(self.library.__init__).parameters)
            method = self._build(self.library, self.params)
            kw = {k: v for k, v in self.params.items() if k not in init_names}
            attr = method.attribute(x, target=targets, **kw)
        maps, used = _reduce(attr, self.reduce)
        self.settings["reduce_used"] = used
        return maps.detach()

    def _run(
        self, x: Tensor, target: Tensor | None, target_gt: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        with torch.no_grad():
            logits = self.model(x)
        if not isinstance(logits, Tensor):
            raise AuglensError(f"model output must be logits (B, K), got {type(logits).__name__}")
        targets = resolve_targets(logits, target)
        gt = None if target_gt is None else resolve_targets(logits, target_gt, "ground-truth")
        maps = self._attribute(x, targets)
        maps_gt = None if gt is None else self._attribute(x, gt)
        return maps, logits, targets, maps_gt


@cache
def captum_explainer(member: str) -> type[Explainer]:
    """The `Explainer` class of ``captum:<member>`` (cached: one class per name)."""
    attr = _import("captum.attr", "captum")
    lib = getattr(attr, member)
    params = _captum_params(lib)
    uses_layer = "layer" in inspect.signature(lib.__init__).parameters
    if member == "NoiseTunnel":
        params["inner"] = inspect.Parameter("inner", inspect.Parameter.KEYWORD_ONLY,
                                            default="Saliency")  # fmt: skip
        params["inner_params"] = inspect.Parameter(
            "inner_params", inspect.Parameter.KEYWORD_ONLY, default=None
        )
    where = "the target layer" if uses_layer else "the input pixels"
    cls = type(
        f"Captum{member}",
        (CaptumExplainer,),
        {
            "name": f"captum:{member}",
            "member": member,
            "library": lib,
            "library_params": params,
            "uses_layer": uses_layer,
            "__doc__": f"Captum {member} via the auglens adapter (attributes to {where})",
        },
    )
    return _with_signature(cls, params)


# --------------------------------------------------------------------------- pytorch-grad-cam


def _raw_cams(self: Any, input_tensor: Tensor, targets: list, eigen_smooth: bool) -> list:
    """``BaseCAM.compute_cam_per_layer`` without ``scale_cam_image``: ReLU'd maps (B, 1, h, w)
    at each target layer's resolution (bound to the CAM object for one call)."""
    if self.detach:
        acts = [a.cpu().data.numpy() for a in self.activations_and_grads.activations]
        grads = [g.cpu().data.numpy() for g in self.activations_and_grads.gradients]
    else:
        acts = list(self.activations_and_grads.activations)
        grads = list(self.activations_and_grads.gradients)
    out = []
    for i, layer in enumerate(self.target_layers):
        a = acts[i] if i < len(acts) else None
        g = grads[i] if i < len(grads) else None
        cam = self.get_cam_image(input_tensor, layer, targets, a, g, eigen_smooth)
        out.append(np.maximum(cam, 0)[:, None])
    return out


def _raw_aggregate(self: Any, cams: list) -> np.ndarray:
    return np.maximum(np.concatenate(cams, axis=1), 0).mean(axis=1)


@lru_cache(maxsize=1)
def pgc_members() -> list[str]:
    """Names of the pytorch-grad-cam ``BaseCAM`` classes the ``pgc:`` family accepts."""
    pgc = _import("pytorch_grad_cam", "grad-cam")
    base = importlib.import_module("pytorch_grad_cam.base_cam").BaseCAM
    classes = {n: getattr(pgc, n) for n in dir(pgc)}
    return sorted(
        n for n, c in classes.items()
        if inspect.isclass(c) and issubclass(c, base) and c is not base
    )


def _pgc_raw_capable(cls: type) -> bool:
    base = importlib.import_module("pytorch_grad_cam.base_cam").BaseCAM
    return all(
        getattr(cls, f) is getattr(base, f)
        for f in ("forward", "compute_cam_per_layer", "aggregate_multi_layers")
    )


class PgcExplainer(_AdapterBase):
    """Base of the ``pgc:<Class>`` adapters (see the module docstring)."""

    family = "pgc"

    def __init__(
        self,
        model: nn.Module,
        target_layer: str | None = None,
        *,
        output: str = "auto",
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        channels_last: bool | None = None,
        **params: Any,
    ) -> None:
        if output not in PGC_OUTPUTS:
            raise AuglensError(f"output must be one of {', '.join(PGC_OUTPUTS)}, got '{output}'")
        raw_ok = _pgc_raw_capable(self.library)
        if output == "raw" and not raw_ok:
            raise AuglensError(
                f"{self.name} overrides pytorch-grad-cam's map computation; only "
                "output='library' (min-max scaled, input resolution) is available"
            )
        self.output = ("raw" if raw_ok else "library") if output == "auto" else output
        self.aug_smooth, self.eigen_smooth = bool(aug_smooth), bool(eigen_smooth)
        self._setup(model, target_layer, channels_last, params)
        self.settings = {
            "library": f"grad-cam {_library_version('grad-cam')}",
            "class": self.member,
            "params": dict(self.params),
            "output": self.output,
            "aug_smooth": self.aug_smooth,
            "eigen_smooth": self.eigen_smooth,
            "target_score": "logit (ClassifierOutputTarget)",
        }

    def _cam(self, cam: Any, x: Tensor, targets: Tensor | None) -> Tensor:
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        tl = None if targets is None else [ClassifierOutputTarget(int(t)) for t in targets]
        try:
            out = cam(x, tl, aug_smooth=self.aug_smooth, eigen_smooth=self.eigen_smooth)
        except IndexError as e:
            raise AuglensError(f"{self.name}: class id out of range for the model ({e})") from e
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).to(x.device)

    def _run(
        self, x: Tensor, target: Tensor | None, target_gt: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        cam = self.library(model=self.model, target_layers=[self.layer], **self.params)
        try:
            if self.output == "raw":
                cam.compute_cam_per_layer = types.MethodType(_raw_cams, cam)
                cam.aggregate_multi_layers = types.MethodType(_raw_aggregate, cam)
            if not cam.detach:  # second-order methods (ShapleyCAM) need the parameters' graph
                for p in self.model.parameters():
                    p.requires_grad_(True)  # restored by the state guard
            if cam.uses_gradients or cam.compute_input_gradient:
                x = x.detach().requires_grad_()  # graph without parameter gradients
            maps = self._cam(cam, x, target)
            if self.aug_smooth:
                with torch.no_grad():
                    logits = self.model(x)
            else:
                logits = cam.outputs
            if not isinstance(logits, Tensor) or logits.ndim != 2:
                raise AuglensError("model output must be a tensor of logits (B, K)")
            logits = logits.detach()
            targets = resolve_targets(logits, target)
            if self.aug_smooth and target is None:  # the CAM chose argmax of augmented logits
                maps = self._cam(cam, x, targets)
            maps_gt = None
            if target_gt is not None:
                maps_gt = self._cam(cam, x, resolve_targets(logits, target_gt, "ground-truth"))
        finally:
            cam.activations_and_grads.release()
        return maps, logits, targets, maps_gt


@cache
def pgc_explainer(member: str) -> type[Explainer]:
    """The `Explainer` class of ``pgc:<member>`` (cached: one class per name)."""
    pgc = _import("pytorch_grad_cam", "grad-cam")
    lib = getattr(pgc, member)
    params = _signature_params(lib.__init__, PGC_EXCLUDED_PARAMS)
    cls = type(
        f"Pgc{member}",
        (PgcExplainer,),
        {
            "name": f"pgc:{member}",
            "member": member,
            "library": lib,
            "library_params": params,
            "uses_layer": True,
            "__doc__": f"pytorch-grad-cam {member} via the auglens adapter (on the target layer)",
        },
    )
    return _with_signature(cls, params)


EXPLAINERS.register_family(
    "captum", captum_explainer, captum_members,
    "any Captum attribution by class name, e.g. captum:IntegratedGradients (pip install captum)",
    placeholder="<Attribution>",
)  # fmt: skip
EXPLAINERS.register_family(
    "pgc", pgc_explainer, pgc_members,
    "any pytorch-grad-cam CAM by class name, e.g. pgc:ScoreCAM (pip install grad-cam)",
    placeholder="<CAM>",
)  # fmt: skip
