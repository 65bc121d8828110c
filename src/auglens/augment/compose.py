"""The identity baseline, composition of augmentations, and building them from a config spec."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from .base import AUGMENTATIONS, AugLog, Augmentation, ParameterError


@AUGMENTATIONS.register("none")
class NoAugmentation(Augmentation):
    """Identity (the baseline): returns the inputs unchanged. Log: ``applied`` (all False)."""

    name = "none"

    def __init__(self, p: float = 1.0) -> None:
        super().__init__(p)

    def apply(
        self, images: Tensor, targets: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, AugLog]:
        return images, targets, {"applied": torch.zeros(images.shape[0], dtype=torch.bool)}


class Compose(Augmentation):
    """Apply ``augmentations`` in order with the same generator (one cell may combine several).

    Logs are merged as ``"<name>.<key>"``; a name used more than once gets ``#2``, ``#3``, ...
    (e.g. ``"cutmix.lam"``, ``"affine#2.angle"``).
    """

    name = "compose"

    def __init__(self, augmentations: Sequence[Augmentation]) -> None:
        super().__init__(1.0)
        self.augmentations = list(augmentations)
        self.mixes_labels = any(a.mixes_labels for a in self.augmentations)  # type: ignore[misc]
        for aug in self.augmentations[:-1]:
            if aug.consistency_views:
                raise ConfigError(
                    f"'{aug.name}' makes consistency views (jsd) and must be the last "
                    "augmentation of the list"
                )
        self.consistency_views = (
            self.augmentations[-1].consistency_views if self.augmentations else 0
        )
        seen: dict[str, int] = {}
        self.prefixes: list[str] = []
        for aug in self.augmentations:
            seen[aug.name] = seen.get(aug.name, 0) + 1
            n = seen[aug.name]
            self.prefixes.append(aug.name if n == 1 else f"{aug.name}#{n}")

    def apply(
        self, images: Tensor, targets: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, AugLog]:
        log: AugLog = {}
        for prefix, aug in zip(self.prefixes, self.augmentations, strict=True):
            images, targets, sub = aug(images, targets, generator)
            log.update({f"{prefix}.{k}": v for k, v in sub.items()})
        return images, targets, log

    def views(
        self, images: Tensor, targets: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, list[Tensor], AugLog]:
        """All members but the last applied as usual (shared by the clean image and the views),
        then the last member's ``views``; logs prefixed as in ``apply``."""
        log: AugLog = {}
        pairs = list(zip(self.prefixes, self.augmentations, strict=True))
        for prefix, aug in pairs[:-1]:
            images, targets, sub = aug(images, targets, generator)
            log.update({f"{prefix}.{k}": v for k, v in sub.items()})
        prefix, last = pairs[-1]
        clean, targets, extra, sub = last.views(images, targets, generator)
        log.update({f"{prefix}.{k}": v for k, v in sub.items()})
        return clean, targets, extra, log

    def set_dataset_stats(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Forward the dataset statistics to every member."""
        for aug in self.augmentations:
            aug.set_dataset_stats(mean, std)

    def __repr__(self) -> str:
        return f"Compose({self.augmentations!r})"


def _valid_params(cls: type) -> dict[str, Any]:
    return AUGMENTATIONS.describe(cls.name)["params"]


def _build_one(i: int, item: Any) -> Augmentation:
    where = f"augmentation[{i}]"
    if isinstance(item, str):
        item = {"name": item}
    if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
        raise ConfigError(f"{where}: expected a mapping with a string 'name', got {item!r}")
    name = item["name"]
    cls = AUGMENTATIONS.get(name)  # unknown name: the registry's error listing valid names
    params = {k: v for k, v in item.items() if k != "name"}
    valid = _valid_params(cls)
    valid_txt = ", ".join(f"{k}={v!r}" for k, v in valid.items())
    for key in params:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"{where} '{name}': unknown parameter '{key}'{hint}; "
                f"valid parameters: {valid_txt}"
            )
    # YAML gives lists where the signature documents tuples.
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    try:
        return cls(**params)
    except ParameterError as e:
        raise ConfigError(
            f"{where} '{name}': invalid parameter '{e.field}': {e}; valid parameters: {valid_txt}"
        ) from None


def build_augmentation(
    spec: Sequence[Mapping[str, Any] | str] | Mapping[str, Any] | str | None,
) -> Augmentation:
    """Build from a spec: a list of ``{"name": str, **params}`` (or bare names), applied in order.

    ``[]``/``None`` -> identity (``none``); one item -> that augmentation; several -> ``Compose``.
    Unknown name -> ``AuglensError`` listing valid names; unknown or invalid parameter ->
    ``ConfigError`` naming the augmentation, the field and the valid parameters (with defaults).
    """
    if spec is None:
        spec = []
    if isinstance(spec, Mapping | str):
        spec = [spec]
    if not isinstance(spec, Sequence):
        raise ConfigError(f"augmentation spec must be a list of mappings, got {spec!r}")
    augs = [_build_one(i, item) for i, item in enumerate(spec)]
    if not augs:
        return NoAugmentation()
    if len(augs) == 1:
        return augs[0]
    return Compose(augs)
