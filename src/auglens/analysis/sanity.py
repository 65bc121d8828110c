"""Sanity checks of attribution methods (SPEC §11): cascading model-parameter randomisation,
the random-logit test, and the random-map control.

**Cascading randomisation** (Adebayo et al. 2018, "Sanity Checks for Saliency Maps"; Quantus
``MPRT`` as a reference). The model's parameters are split into groups (`parameter_groups`),
ordered from the output towards the input by the first forward call of their module. Step k
re-initialises groups 1..k (cumulative) on a copy of the model — the caller's model is never
touched — and explains the same images for the **same classes** as the original model (its
predicted classes by default). Per step and image: the similarity of the randomised model's map
to the original's, computed on the absolute maps with `compare_maps` (default Spearman ρ and
SSIM, `auglens.metrics.similarity` conventions: SSIM min-max normalises, Spearman is NaN for a
constant map — e.g. an all-zero Grad-CAM — and NaNs are kept and counted, never dropped).

Re-initialisation of a group: inside a forked CPU RNG seeded with
``derive_seed(seed, "randomise", group name)`` (the same draws for a group whatever the step,
device or other groups), every module of the group calls its own default initialiser
``reset_parameters()`` (``_reset_parameters()`` for ``nn.MultiheadAttention``), children before
parents (as at construction), which also resets BatchNorm running statistics; a parameter whose
module has neither (e.g. torchvision ViT's class token and position embedding) is drawn from
N(0, 0.02²) truncated at ±2 (the ViT convention). Anything a reset touches outside the group is
restored.

Groups (``granularity``): ``"block"`` (default) — walk down from the root, splitting the root,
plain containers (exactly ``nn.Sequential``/``ModuleList``/``ModuleDict``), a wrapper's only
child with parameters (e.g. `InputResize`'s network), and modules that own parameters next to
children with parameters (their own parameters form a group named by the parameters, e.g.
``class_token``); every other module with parameters is one group (a residual block, an MBConv
block, a transformer block, a lone conv/BN/linear layer). ``"layer"``: every module's own
parameters (each conv, BN, linear, LayerNorm). Or an explicit list of module names. Modules not
called in the forward pass are left out. For ``small_resnet``: fc, layer3.0, layer2.0, layer1.0,
stem.1, stem.0.

**Random-logit test** (Sixt et al. 2020; Quantus ``RandomLogit``): per image, the map for the
predicted class vs the map for another class drawn uniformly from the K − 1 others, seeded per
image id (``derive_seed(seed, "random_logit", id)``), so the draw does not depend on the batch.

**Random-map control**: maps of i.i.d. U[0, 1) noise at feature resolution, one CPU generator per
image seeded with ``derive_seed(seed, "random_map", id)``: the same image id gives the same map
for every model, batch and device. Compared with the original maps by the same metrics, it gives
the chance level (ρ ≈ 0).

**Shuffled pairing** ("cascade_shuffled"): per step, the randomised model's map of another image
(a seeded derangement π of the batch, ``derive_seed(seed, "shuffle", N)``) vs the original map.
It measures what the maps share whatever the image — a spatial prior (zero-padding borders, a
centre bias) — so cascade − cascade_shuffled is the image-specific similarity. Measured on
small_resnet trained on shapes (256 test images, Grad-CAM): with every group randomised ρ = 0.25
paired vs 0.21 shuffled vs 0.00 for random maps — a fully random CNN keeps the architecture's
spatial prior, not the image-specific explanation.

**Verdict** (`randomisation_verdict`): a method *fails* the randomisation check when, with the top
``top_steps`` groups randomised (default 1: the output layer, which decides the explained class),
the mean Spearman ρ of its maps to the original maps still exceeds the random-map control's mean
ρ by more than ``margin`` (default 0.5). Measured as above: Grad-CAM 0.03 (passes); Grad-CAM++
0.88 and LayerCAM 0.89 (fail; both are nearly class-insensitive, random-logit ρ ≈ 0.75). The
numbers behind the flag are returned with it; a step where more than half of the images give NaN
is reported as NaN and does not fail (the maps became constant, i.e. they changed).

Tables are tidy (one row per value): ``test`` ("cascade", "cascade_shuffled", "random_map",
"random_logit"), ``step`` (1..G for the cascade, 0 otherwise), ``group`` (the group randomised at
that step, "" otherwise), ``metric``, ``image_id`` (of the original map), ``value`` (float64).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ..errors import AuglensError
from ..explain.base import EXPLAINERS, Explanation, explain_images, model_device, preserved_state
from ..metrics.similarity import compare_maps, resolve_metrics
from ..models.tap import LayerTap
from ..utils import derive_seed

Granularity = Literal["block", "layer"]
MethodParams = Mapping[str, Any] | Callable[[nn.Module], Mapping[str, Any]] | None
COLUMNS = ["test", "step", "group", "metric", "image_id", "value"]
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
FALLBACK_STD = 0.02

# ----------------------------------------------------------------------------------- groups


@dataclass(frozen=True)
class ParamGroup:
    """Parameters re-initialised together. ``module``: dotted name of the owning module;
    ``own_only``: only the module's own parameters/buffers (not its children's);
    ``params``/``buffers``: full names in the model's state dict."""

    name: str
    module: str
    own_only: bool
    params: tuple[str, ...]
    buffers: tuple[str, ...]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _has_params(m: nn.Module) -> bool:
    return next(m.parameters(), None) is not None


def _group(name: str, m: nn.Module, own_only: bool) -> ParamGroup:
    params = tuple(_join(name, n) for n, _ in m.named_parameters(recurse=not own_only))
    buffers = tuple(_join(name, n) for n, _ in m.named_buffers(recurse=not own_only))
    label = (
        name if not own_only or not any(_has_params(c) for c in m.children()) else "+".join(params)
    )
    return ParamGroup(label or "(root)", name, own_only, params, buffers)


def _block_groups(m: nn.Module, name: str, split: bool) -> Iterator[ParamGroup]:
    own = next(m.parameters(recurse=False), None) is not None
    kids = [(n, c) for n, c in m.named_children() if _has_params(c)]
    if not (split or type(m) in _CONTAINERS or (own and kids)):
        yield _group(name, m, own_only=False)
        return
    if own:
        yield _group(name, m, own_only=True)
    for n, c in kids:
        wrapper = len(kids) == 1 and not own and type(m) not in _CONTAINERS
        yield from _block_groups(c, _join(name, n), split=wrapper)


def parameter_groups(
    model: nn.Module, x: Tensor, granularity: Granularity | Sequence[str] = "block"
) -> list[ParamGroup]:
    """Randomisation groups of ``model``, output first (reverse order of the first forward call
    of each group's module on ``x``, one eval pass without autograd; the model is unchanged).
    ``granularity``: "block", "layer" or module names (module docstring)."""
    if isinstance(granularity, str):
        if granularity == "block":
            groups = list(_block_groups(model, "", split=True))
        elif granularity == "layer":
            groups = [
                _group(n, m, own_only=True)
                for n, m in model.named_modules()
                if next(m.parameters(recurse=False), None) is not None
            ]
        else:
            raise AuglensError(
                f"granularity must be 'block', 'layer' or a list of module names, got "
                f"{granularity!r}"
            )
    else:
        modules = dict(model.named_modules())
        bad = [n for n in granularity if n not in modules or not _has_params(modules[n])]
        if bad:
            raise AuglensError(f"no module with parameters named {bad[:3]} in the model")
        groups = [_group(n, modules[n], own_only=False) for n in granularity]
        seen: set[str] = set()
        for g in groups:
            if seen & set(g.params):
                raise AuglensError(f"randomisation group '{g.name}' overlaps an earlier one")
            seen |= set(g.params)
    order = _call_order(model, x)
    called = [g for g in groups if g.module in order]
    called.sort(key=lambda g: order[g.module], reverse=True)
    if not called:
        raise AuglensError("no module with parameters was called in the forward pass")
    return called


def _call_order(model: nn.Module, x: Tensor) -> dict[str, int]:
    """First-call index of every module (pre-hooks, so a parent precedes its children)."""
    order: dict[str, int] = {}
    names = {id(m): n for n, m in model.named_modules()}

    def pre(mod: nn.Module, args: object) -> None:
        order.setdefault(names[id(mod)], len(order))

    with preserved_state(model), LayerTap(list(model.modules()), pre, kind="pre"):
        with torch.no_grad():
            model(x.to(model_device(model)))
    return order


def randomise_group(model: nn.Module, group: ParamGroup, seed: int = 0) -> None:
    """Re-initialise ``group`` of ``model`` in place with its modules' default initialisers
    (module docstring), seeded by ``(seed, group.name)``; nothing outside the group changes."""
    root = model.get_submodule(group.module)
    state = root.state_dict(keep_vars=True)
    mine = {n[len(group.module) + 1 :] if group.module else n for n in group.params + group.buffers}
    keep = {k: v.detach().clone() for k, v in state.items() if k not in mine}
    modules = [root] if group.own_only else list(root.modules())
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(derive_seed(seed, "randomise", group.name))
        for m in reversed(modules):  # children before parents, as at construction
            reset = getattr(m, "reset_parameters", None) or getattr(m, "_reset_parameters", None)
            if callable(reset):
                reset()
            else:
                for p in m.parameters(recurse=False):
                    nn.init.trunc_normal_(
                        p, std=FALLBACK_STD, a=-2 * FALLBACK_STD, b=2 * FALLBACK_STD
                    )
        for k, v in keep.items():
            state[k].copy_(v)


# ------------------------------------------------------------------------------ random maps


def random_maps(image_ids: Tensor | Sequence[int], shape: tuple[int, int], seed: int = 0) -> Tensor:
    """i.i.d. U[0, 1) maps (N, h, w) float32, one CPU generator per image seeded with
    ``derive_seed(seed, "random_map", id)``: independent of batch composition and device."""
    ids = torch.as_tensor(image_ids).reshape(-1).tolist()
    h, w = shape
    out = torch.empty(len(ids), h, w)
    for i, image_id in enumerate(ids):
        g = torch.Generator().manual_seed(derive_seed(seed, "random_map", int(image_id)))
        out[i] = torch.rand(h, w, generator=g)
    return out


def random_map_explanation(tensors: Mapping[str, Tensor], seed: int = 0) -> dict[str, Tensor]:
    """A stored explanation (tensors of ``explain.store``: maps, maps_gt, logits, targets,
    labels, image_ids) with ``maps`` and ``maps_gt`` replaced by `random_maps` of its image ids
    (the same noise for both: the control is class-independent), in the stored maps' dtype.
    Logits, targets and labels are kept: the maps "explain" that model's outputs."""
    if "maps" not in tensors or "image_ids" not in tensors:
        raise AuglensError("a stored explanation needs tensors 'maps' and 'image_ids'")
    maps = tensors["maps"]
    noise = random_maps(tensors["image_ids"], tuple(maps.shape[1:]), seed).to(maps.dtype)
    out = dict(tensors)
    out["maps"] = noise
    if "maps_gt" in tensors:
        out["maps_gt"] = noise.clone()
    return out


# ---------------------------------------------------------------------------- the checks


def _similarity(
    test: str, step: int, group: str, a: Tensor, b: Tensor, ids: Tensor, metrics: Sequence[str]
) -> pd.DataFrame:
    res = compare_maps(a.abs(), b.abs(), metrics)
    return pd.concat(
        [
            pd.DataFrame(
                {
                    "test": test,
                    "step": step,
                    "group": group,
                    "metric": name,
                    "image_id": ids.numpy(),
                    "value": v.cpu().numpy(),
                }
            )
            for name, v in res.items()
        ],
        ignore_index=True,
    )


def derangement(n: int, seed: int = 0) -> Tensor:
    """A seeded permutation π of range(n) with π(i) ≠ i (n ≥ 2): a random cyclic order, each
    image paired with the next one in it."""
    if n < 2:
        raise AuglensError("a shuffled pairing needs at least 2 images")
    g = torch.Generator().manual_seed(derive_seed(seed, "shuffle", n))
    order = torch.randperm(n, generator=g)
    out = torch.empty(n, dtype=torch.long)
    out[order] = order.roll(-1)
    return out


def _ids(image_ids: Tensor | Sequence[int] | None, n: int) -> Tensor:
    ids = torch.arange(n) if image_ids is None else torch.as_tensor(image_ids).long().reshape(-1)
    if ids.shape[0] != n:
        raise AuglensError(f"image_ids has {ids.shape[0]} entries for {n} images")
    return ids


def _explain(
    net: nn.Module,
    images: Tensor,
    normalize: Callable[[Tensor], Tensor],
    method: str,
    layer: str | None,
    target: Any,
    params: MethodParams,
    batch_size: int,
    device: torch.device,
) -> Explanation:
    kwargs = params(net) if callable(params) else params
    return explain_images(
        net,
        images,
        normalize,
        method,
        layer,
        batch_size,
        device,
        target=target,
        method_params=kwargs,
    )


def cascading_randomisation(
    model: nn.Module,
    images: Tensor,
    normalize: Callable[[Tensor], Tensor],
    method: str = "gradcam",
    target_layer: str | None = None,
    *,
    image_ids: Tensor | Sequence[int] | None = None,
    granularity: Granularity | Sequence[str] = "block",
    seed: int = 0,
    metrics: Sequence[str] = ("spearman", "ssim"),
    target: Any = "predicted",
    method_params: MethodParams = None,
    control: bool = True,
    shuffled: bool = True,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Cascading randomisation of ``model`` on uint8 ``images`` (N, 3, H, W) fed as
    ``normalize(images / 255)`` (conventions: module docstring) → tidy table with test
    "cascade" (steps 1..G), with ``shuffled`` "cascade_shuffled" (`derangement`) and with
    ``control`` "random_map" rows (`random_maps` with ``seed`` vs the original maps).
    ``method_params``: explainer keyword arguments, or a function of the (randomised) model
    returning them (IBA: fit its estimator per model). ``on_step(k, G)``
    after each step. The caller's model is never modified."""
    EXPLAINERS.get(method)
    resolve_metrics(metrics)
    ids = _ids(image_ids, images.shape[0])
    dev = model_device(model) if device is None else torch.device(device)
    work = copy.deepcopy(model).cpu()
    x0 = normalize(images[:1].float().div(255))
    groups = parameter_groups(work, x0, granularity)
    net = work if dev.type == "cpu" else copy.deepcopy(work).to(dev)
    orig = _explain(
        net, images, normalize, method, target_layer, target, method_params, batch_size, dev
    )
    parts = []
    perm = derangement(len(ids), seed) if shuffled else None
    if control:
        noise = random_maps(ids, tuple(orig.maps.shape[1:]), seed)
        parts.append(_similarity("random_map", 0, "", noise, orig.maps, ids, metrics))
    for k, g in enumerate(groups, 1):
        randomise_group(work, g, seed)
        net = work if dev.type == "cpu" else copy.deepcopy(work).to(dev)
        ex = _explain(
            net,
            images,
            normalize,
            method,
            target_layer,
            orig.targets,
            method_params,
            batch_size,
            dev,
        )
        parts.append(_similarity("cascade", k, g.name, ex.maps, orig.maps, ids, metrics))
        if perm is not None:
            parts.append(
                _similarity("cascade_shuffled", k, g.name, ex.maps[perm], orig.maps, ids, metrics)
            )
        if on_step:
            on_step(k, len(groups))
    return pd.concat(parts, ignore_index=True)[COLUMNS]


def random_other_classes(
    targets: Tensor, image_ids: Tensor, num_classes: int, seed: int = 0
) -> Tensor:
    """Per image a class ≠ its target, uniform over the K − 1 others: (target + r) mod K with
    r ∈ [1, K − 1] from a generator seeded with ``derive_seed(seed, "random_logit", id)``."""
    if num_classes < 2:
        raise AuglensError("the random-logit test needs at least 2 classes")
    out = torch.empty_like(targets)
    for i, (t, image_id) in enumerate(zip(targets.tolist(), image_ids.tolist(), strict=True)):
        g = torch.Generator().manual_seed(derive_seed(seed, "random_logit", int(image_id)))
        r = int(torch.randint(1, num_classes, (1,), generator=g))
        out[i] = (t + r) % num_classes
    return out


def random_logit_test(
    model: nn.Module,
    images: Tensor,
    normalize: Callable[[Tensor], Tensor],
    method: str = "gradcam",
    target_layer: str | None = None,
    *,
    image_ids: Tensor | Sequence[int] | None = None,
    seed: int = 0,
    metrics: Sequence[str] = ("spearman", "ssim"),
    method_params: MethodParams = None,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> pd.DataFrame:
    """Map for the predicted class vs map for a random other class (`random_other_classes`),
    similarity of the absolute maps per image → tidy table, test "random_logit", step 0."""
    EXPLAINERS.get(method)
    resolve_metrics(metrics)
    ids = _ids(image_ids, images.shape[0])
    dev = model_device(model) if device is None else torch.device(device)
    pred = _explain(
        model, images, normalize, method, target_layer, "predicted", method_params, batch_size, dev
    )
    other = random_other_classes(pred.targets, ids, pred.logits.shape[1], seed)
    alt = _explain(
        model, images, normalize, method, target_layer, other, method_params, batch_size, dev
    )
    return _similarity("random_logit", 0, "", alt.maps, pred.maps, ids, metrics)[COLUMNS]


# --------------------------------------------------------------------------------- summary


def summarize_sanity(table: pd.DataFrame) -> pd.DataFrame:
    """Mean over images per (test, step, group, metric): columns ``mean`` (NaN-skipping),
    ``n`` (images), ``n_nan``."""
    g = table.groupby(["test", "step", "group", "metric"], sort=False)["value"]
    out = g.agg(mean="mean", n="size", n_nan=lambda v: int(v.isna().sum())).reset_index()
    return out


def randomisation_verdict(
    table: pd.DataFrame, top_steps: int = 1, margin: float = 0.5, metric: str = "spearman"
) -> dict[str, Any]:
    """The randomisation-check flag (rule: module docstring) from a `cascading_randomisation`
    table with control rows: {"fails", "step", "group", "similarity", "control", "margin",
    "n_nan", "metric", "all_randomised", "all_randomised_shuffled"}; ``similarity`` is NaN when
    more than half of the images are NaN; the last two (context, not part of the rule): the mean
    with every group randomised, paired and shuffled (NaN without shuffled rows)."""
    cas = table[(table.test == "cascade") & (table.metric == metric)]
    ctl = table[(table.test == "random_map") & (table.metric == metric)]
    if cas.empty or ctl.empty:
        raise AuglensError(
            f"the verdict needs cascade and random_map rows of metric '{metric}' "
            "(run cascading_randomisation with control=True)"
        )
    step = min(top_steps, int(cas.step.max()))
    vals = cas[cas.step == step].value
    n_nan = int(vals.isna().sum())
    sim = float(vals.mean()) if n_nan * 2 <= len(vals) else float("nan")
    level = float(ctl.value.mean())
    last = int(cas.step.max())
    shuf = table[
        (table.test == "cascade_shuffled") & (table.metric == metric) & (table.step == last)
    ]
    return {
        "fails": bool(np.isfinite(sim) and sim - level > margin),
        "step": step,
        "group": str(cas[cas.step == step].group.iloc[0]),
        "similarity": sim,
        "control": level,
        "margin": margin,
        "n_nan": n_nan,
        "metric": metric,
        "all_randomised": float(cas[cas.step == last].value.mean()),
        "all_randomised_shuffled": float(shuf.value.mean()) if len(shuf) else float("nan"),
    }
