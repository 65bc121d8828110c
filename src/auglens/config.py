"""Validated configuration (pydantic): YAML files, ``--set key=value`` overrides, content hashes.

Error messages name the field path, the bad value and the allowed values.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

# --------------------------------------------------------------------------- sections


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class _WithParams(BaseModel):
    """A registry name plus free keyword parameters checked against the factory's signature."""

    model_config = ConfigDict(extra="allow")
    name: str

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def _check(self, registry: Any, fixed: set[str]) -> None:
        registry.get(self.name)  # unknown name -> error listing valid names
        valid = set(registry.describe(self.name)["params"])
        bad = [k for k in self.params() if k not in valid]
        if bad:
            raise ValueError(
                f"unknown parameter '{bad[0]}' for {registry.kind} '{self.name}'; valid: "
                + ", ".join(sorted(valid | fixed))
            )


class DataConfig(_WithParams):
    """``name`` of a registered dataset; other keys go to its builder (e.g. ``image_size``)."""

    name: str = "shapes"

    @model_validator(mode="after")
    def _valid(self) -> DataConfig:
        from .data import DATASETS

        self._check(DATASETS, {"name"})
        return self


class ModelConfig(_WithParams):
    """``name`` of a registered model; ``input_size`` resizes inputs (e.g. 32 → 224);
    ``target_layer`` overrides the default Grad-CAM layer; ``checkpoint`` loads local weights."""

    name: str = "small_resnet"
    input_size: int | None = Field(default=None, gt=0)
    target_layer: str | None = None
    checkpoint: Path | None = None

    @model_validator(mode="after")
    def _valid(self) -> ModelConfig:
        from .models import MODELS

        self._check(MODELS, {"name", "input_size", "target_layer", "checkpoint"})
        return self


class TrainConfig(_Strict):
    """Optimisation. ``epochs``/``milestones`` in epochs; lr schedules step once per batch.

    ``stop``: ``fixed`` trains ``epochs`` epochs; ``converged`` trains until the monitored
    validation quantity (``monitor``) has not improved by more than ``min_delta`` for
    ``patience`` epochs at the lowest learning rate (the ``plateau`` schedule first divides the
    learning rate by 1/``gamma`` ``lr_decays`` times), at most ``max_epochs`` (SPEC §10). Either
    way ``converged`` is recorded per cell and the weights of the best validation epoch are kept.
    The default monitor is the validation loss: on a few hundred validation images the accuracy
    jumps by more than ``min_delta`` from epoch to epoch at a high learning rate, and a plateau
    rule on it decays (or stops) too early.
    ``schedule`` ``auto``: ``onecycle`` for fixed epochs, ``plateau`` for ``stop: converged``;
    ``exponential`` multiplies the learning rate by ``decay_rate`` per epoch after the warm-up
    (the same schedule for every cell, whatever its length).
    ``precision`` ``auto``: bfloat16 autocast on CUDA and on CPUs with native bfloat16
    (AVX-512-BF16 / AMX), float32 elsewhere; the model always runs channels-last.
    ``threads``: torch threads of every CPU task of the cell (default 1), pinned whatever the
    executor or worker count, so that results never depend on how a run was scheduled.
    ``loader_workers`` / ``prefetch_factor``: DataLoader worker processes feeding the
    precomputed batches (`auglens.train.feeding`; same batches, so not part of the key);
    ``gpu_decode``: decode JPEG folders on the GPU (nvJPEG; pixels differ slightly from Pillow);
    ``compile``: ``torch.compile`` the training forward (off by default).
    """

    #: fields that change how fast a cell trains, never what it computes (left out of its key)
    SCHEDULING: ClassVar[tuple[str, ...]] = ("loader_workers", "prefetch_factor")

    epochs: int = Field(default=6, ge=1)
    stop: Literal["fixed", "converged"] = "fixed"
    max_epochs: int = Field(default=60, ge=1)
    patience: int = Field(default=2, ge=1)
    min_delta: float = Field(default=0.01, ge=0, lt=1)
    monitor: Literal["val_accuracy", "val_loss"] = "val_loss"
    lr_decays: int = Field(default=2, ge=0)
    warmup_epochs: float = Field(default=1.0, ge=0)
    batch_size: int = Field(default=128, ge=2)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(default=0.1, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(default=5e-4, ge=0)
    schedule: Literal["auto", "onecycle", "cosine", "step", "constant", "plateau",
                      "exponential"] = "auto"
    decay_rate: float = Field(default=0.85, gt=0, le=1)
    milestones: list[float] = Field(default_factory=list)
    gamma: float = Field(default=0.1, gt=0, le=1)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    eval_batch_size: int = Field(default=500, ge=1)
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    threads: int | None = Field(default=None, ge=1)
    loader_workers: int = Field(default=0, ge=0)
    prefetch_factor: int = Field(default=2, ge=1)
    gpu_decode: bool = False
    compile: bool = False

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu") and not v.startswith("cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got '{v}'")
        return v

    @model_validator(mode="after")
    def _valid(self) -> TrainConfig:
        if self.stop == "converged" and self.max_epochs <= self.patience:
            raise ValueError(f"max_epochs ({self.max_epochs}) must be larger than patience "
                             f"({self.patience}) when stop is 'converged'")
        return self

    @property
    def epoch_cap(self) -> int:
        """Epochs trained at most: ``epochs`` (fixed) or ``max_epochs`` (converged)."""
        return self.epochs if self.stop == "fixed" else self.max_epochs

    @property
    def resolved_schedule(self) -> str:
        if self.schedule != "auto":
            return self.schedule
        return "onecycle" if self.stop == "fixed" else "plateau"


class ExplainConfig(_Strict):
    """Which attribution methods explain every cell, on how many test images.

    ``n_images`` None: the whole test split. ``limit`` caps one method (e.g. ``iba: 200``: IBA
    optimises per image, so it is costlier). ``params`` holds explainer keyword arguments per
    method (e.g. ``iba: {steps: 10}``). ``estimator_images``: un-augmented training images used to
    fit IBA's per-model activation statistics (cached next to the weights).
    """

    methods: list[str] = Field(default_factory=lambda: ["gradcam"])
    n_images: int | None = Field(default=None, ge=1)
    limit: dict[str, int] = Field(default_factory=dict)
    params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    estimator_images: int = Field(default=1000, ge=2)
    batch_size: int = Field(default=500, ge=1)

    @model_validator(mode="after")
    def _valid(self) -> ExplainConfig:
        from .schemas import EXPLAINER_SCHEMA

        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods must be a non-empty list of distinct names, got "
                             f"{self.methods}")
        for m in [*self.methods, *self.limit, *self.params]:
            EXPLAINER_SCHEMA.check(m)  # unknown name -> error listing the valid ones
        for m, kw in self.params.items():
            known = EXPLAINER_SCHEMA.check(m)
            if known is None:  # a family member (captum:…, pgc:…): checked by check_inputs
                continue
            valid = set(known) - {"target_layer", "estimator"}
            bad = [k for k in kw if k not in valid]
            if bad:
                raise ValueError(f"unknown parameter '{bad[0]}' for explainer '{m}'; valid: "
                                 + ", ".join(sorted(valid)))
        for m, n in self.limit.items():
            if n < 1:
                raise ValueError(f"limit.{m} must be >= 1, got {n}")
        return self

    def images_for(self, method: str) -> int | None:
        """Image count for ``method`` (None = all test images)."""
        caps = [n for n in (self.n_images, self.limit.get(method)) if n is not None]
        return min(caps) if caps else None


class EvaluateConfig(_Strict):
    """Study B's alignment (SPEC §4) and faithfulness (SPEC §5) of every explained cell.

    Alignment runs on every explained image that has a ground-truth mask or boxes; the reference
    filters (``max_box_fraction`` 0.33, ``min_probability`` 0.6) are off unless set; with
    ``common_images`` every model is scored on the intersection of the images each one keeps.
    Faithfulness runs on the first ``n_images`` explained images (None: all): ``n_steps`` steps,
    ``n_random`` random orders per image, deletion to 0 in normalised space, insertion from a
    Gaussian blur (kernel ``blur_kernel``, σ ``blur_sigma``).
    """

    enabled: bool = True
    alignment: bool = True
    faithfulness: bool = True
    max_box_fraction: float | None = Field(default=None, gt=0, le=1)
    min_probability: float | None = Field(default=None, ge=0, le=1)
    common_images: bool = True
    n_images: int | None = Field(default=500, ge=1)
    n_steps: int = Field(default=16, ge=1)
    n_random: int = Field(default=4, ge=1)
    blur_kernel: int = Field(default=11, ge=1)
    blur_sigma: float = Field(default=5.0, gt=0)
    max_batch: int = Field(default=512, ge=1)
    seed: int = 0
    road: bool = True
    road_percentages: list[float] = Field(default_factory=lambda: [10.0, 20.0, 30.0, 40.0, 50.0,
                                                                    60.0, 70.0, 80.0, 90.0])
    road_noise: float = Field(default=0.01, ge=0)

    @field_validator("road_percentages")
    @classmethod
    def _percentages(cls, v: list[float]) -> list[float]:
        if not v or any(not 0 < k < 100 for k in v) or sorted(set(v)) != list(v):
            raise ValueError(f"road_percentages must be strictly increasing values in (0, 100), "
                             f"got {v}")
        return v


class DissectConfig(_Strict):
    """Network Dissection (SPEC §6) of every cell's target layer, units detecting a concept at
    IoU > threshold. ``probe``: ``dataset`` = the dataset's own concept labels (test split, first
    ``n_images``; None: all); ``broden`` = a Broden-layout folder ``broden_root`` (a fixed random
    sample of ``n_images``, resized to the dataset's image size)."""

    enabled: bool = True
    probe: Literal["dataset", "broden"] = "dataset"
    broden_root: Path | None = None
    n_images: int | None = Field(default=2000, ge=1)
    quantile: float = Field(default=0.995, gt=0, lt=1)
    iou_threshold: float = Field(default=0.04, ge=0, lt=1)
    batch_size: int = Field(default=256, ge=1)

    @model_validator(mode="after")
    def _valid(self) -> DissectConfig:
        if self.probe == "broden" and self.broden_root is None:
            raise ValueError("probe 'broden' needs broden_root (the folder with index.csv)")
        return self


class SanityConfig(_Strict):
    """Sanity checks of the attribution methods (SPEC §11): the cascading model-parameter
    randomisation (layers re-initialised from the output towards the input, ``granularity``
    "block" or "layer") and the random-logit test, on the first ``n_images`` test images of the
    baseline cells (``cells: all``: every cell), for ``methods`` (None: the explained ones but
    rollout). A method whose maps stay far above the random-map level once the output layer is
    randomised fails the check (the report flags it)."""

    enabled: bool = True
    methods: list[str] | None = None
    cells: Literal["baseline", "all"] = "baseline"
    n_images: int = Field(default=64, ge=2)
    granularity: Literal["block", "layer"] = "block"
    seed: int = 0


class AnalysisConfig(_Strict):
    """Statistics over models (SPEC §9–10). Intervals: two-way (seed × image) bootstrap with
    ``n_boot`` resamples (seed ``seed``) at ``level``; verdicts use the equivalence ``margin`` as a
    fraction of the reference's value (the noise floor in Study A, the baseline in Study B);
    ``power`` sizes the seeds-needed estimate. ``matched``: also compare every variant with the
    baseline checkpoint of the same seed whose validation accuracy is closest to the variant's
    (the baseline keeps one checkpoint per epoch). ``failed_margin``: a converged cell whose best
    validation accuracy is more than this below the median of its variant's other seeds is a
    failed run. ``exclude``: cells (``variant/seed<k>``) left out of the whole run, e.g. a failed
    run (its files stay on disk)."""

    n_boot: int = Field(default=2000, ge=100)
    level: float = Field(default=0.95, gt=0.5, lt=1)
    margin: float = Field(default=0.1, ge=0)
    power: float = Field(default=0.8, gt=0, lt=1)
    seed: int = 0
    matched: bool = True
    failed_margin: float = Field(default=0.05, ge=0, le=1)
    exclude: list[str] = Field(default_factory=list)


AugSpec = dict[str, Any]


def _check_augment(spec: list[AugSpec]) -> list[AugSpec]:
    from .augment import build_augmentation

    for i, s in enumerate(spec):
        if not isinstance(s, dict) or "name" not in s:
            raise ValueError(f"item {i} must be a mapping with a 'name', got {s!r}")
    build_augmentation(spec)  # raises ConfigError / AuglensError naming the problem
    return spec


class CellConfig(_Strict):
    """One grid cell: everything that determines one trained model."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    augment: list[AugSpec] = Field(default_factory=list)
    seed: int = 0

    @field_validator("augment")
    @classmethod
    def _augment(cls, v: list[AugSpec]) -> list[AugSpec]:
        return _check_augment(v)

    @model_validator(mode="after")
    def _one_smoothing(self) -> CellConfig:
        if self.train.label_smoothing and any(a.get("name") == "label_smoothing"
                                              for a in self.augment):
            raise ValueError("train.label_smoothing and the label_smoothing augmentation would "
                             "smooth the labels twice; use one of them")
        return self

    def content_hash(self) -> str:
        """Hash of everything that determines the trained model (scheduling-only fields out)."""
        return config_hash(self.model_dump(mode="json",
                                           exclude={"train": set(TrainConfig.SCHEDULING)}))


class ExperimentConfig(_Strict):
    """A grid: every variant (a named augmentation list; [] = baseline) × every seed."""

    name: str = "experiment"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    variants: dict[str, list[AugSpec]] = Field(default_factory=lambda: {"baseline": []})
    seeds: list[int] = Field(default_factory=lambda: [0])
    baseline: str = "baseline"
    explain: ExplainConfig = Field(default_factory=ExplainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    dissect: DissectConfig = Field(default_factory=DissectConfig)
    sanity: SanityConfig = Field(default_factory=SanityConfig)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)

    @field_validator("variants")
    @classmethod
    def _variants(cls, v: dict[str, list[AugSpec]]) -> dict[str, list[AugSpec]]:
        for name, spec in v.items():
            if not name or "/" in name or name.startswith("."):
                raise ValueError(f"variant name '{name}' must be non-empty and contain no '/'")
            try:
                _check_augment(spec)
            except Exception as e:
                raise ValueError(f"variant '{name}': {e}") from e
        return v

    @model_validator(mode="after")
    def _has_baseline(self) -> ExperimentConfig:
        if self.baseline not in self.variants:
            raise ValueError(
                f"baseline variant '{self.baseline}' is not among variants: "
                + ", ".join(self.variants)
            )
        if len(set(self.seeds)) != len(self.seeds) or not self.seeds:
            raise ValueError(
                f"seeds must be a non-empty list of distinct integers, got {self.seeds}"
            )
        for name, spec in self.variants.items():
            if self.train.label_smoothing and any(a.get("name") == "label_smoothing"
                                                  for a in spec):
                raise ValueError(f"variant '{name}': train.label_smoothing and the "
                                 "label_smoothing augmentation would smooth the labels twice")
        valid = {f"{v}/seed{s}" for v in self.variants for s in self.seeds}
        bad = [c for c in self.analysis.exclude if c not in valid]
        if bad:
            raise ValueError(f"analysis.exclude: unknown cell '{bad[0]}'; cells are named "
                             f"variant/seed<k>, e.g. {self.baseline}/seed{self.seeds[0]}")
        return self

    def cells(self) -> list[tuple[str, int, CellConfig]]:
        """(variant, seed, cell config) for the whole grid, variants in file order, without the
        cells in ``analysis.exclude``."""
        out = []
        excluded = set(self.analysis.exclude)
        for seed in self.seeds:
            for variant, spec in self.variants.items():
                if f"{variant}/seed{seed}" in excluded:
                    continue
                cell = CellConfig(
                    data=self.data, model=self.model, train=self.train, augment=spec, seed=seed
                )
                out.append((variant, seed, cell))
        return out


# --------------------------------------------------------------------------- helpers


def config_hash(obj: Any) -> str:
    """sha256 (first 16 hex digits) of the canonical JSON of ``obj``."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def parse_value(text: str) -> Any:
    """A ``--set`` value as YAML (``1`` → int, ``[1,2]`` → list, ``true`` → bool, else str)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` strings to a nested dict/list (list items by index)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set key '{key}' is not a dotted path like train.epochs")
        node: Any = raw
        for i, part in enumerate(parts[:-1]):
            nxt = parts[i + 1]
            if isinstance(node, list):
                if not part.isdigit() or int(part) > len(node):
                    raise ConfigError(f"--set {key}: index '{part}' out of range (0..{len(node)})")
                if int(part) == len(node):  # one past the end appends a new item
                    node.append([] if nxt.isdigit() else {})
                node = node[int(part)]
            else:
                if part not in node or node[part] is None:
                    node[part] = [] if nxt.isdigit() else {}
                node = node[part]
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) > len(node):
                raise ConfigError(f"--set {key}: index '{last}' out of range (0..{len(node)})")
            if int(last) == len(node):
                node.append(parse_value(value))
            else:
                node[int(last)] = parse_value(value)
        elif isinstance(node, dict):
            node[last] = parse_value(value)
        else:
            raise ConfigError(f"--set {key}: '{'.'.join(parts[:-1])}' is not a section")
    return raw


def _format_validation_error(e: ValidationError, source: str) -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"] if p not in ("function-after[_valid()]",))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
            parent = err["loc"][:-1]
            msg += f"; valid fields here: {_valid_fields(e.title, parent)}"
        bad = err.get("input")
        shown = (
            "" if isinstance(bad, dict) or err["type"] == "extra_forbidden" else f" (got {bad!r})"
        )
        lines.append(f"{source}: {loc or '<root>'}: {msg}{shown}")
    return "\n".join(lines)


def _valid_fields(title: str, loc: tuple) -> str:
    model: Any = {"CellConfig": CellConfig, "ExperimentConfig": ExperimentConfig,
                  "ExplainConfig": ExplainConfig, "EvaluateConfig": EvaluateConfig,
                  "DissectConfig": DissectConfig, "AnalysisConfig": AnalysisConfig,
                  "SanityConfig": SanityConfig,
                  "TrainConfig": TrainConfig}.get(title)
    for part in loc:
        if model is None:
            break
        field = model.model_fields.get(part)
        ann = field.annotation if field else None
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return ", ".join(model.model_fields) if model else "?"


def load_config(
    cls: type[BaseModel],
    raw: dict[str, Any] | None,
    overrides: list[str] = (),
    source: str = "config",
) -> Any:
    """Validate ``raw`` (+ overrides) as ``cls``; a ConfigError lists each problem with its path."""
    import copy

    from .errors import AuglensError

    data = apply_overrides(copy.deepcopy(raw or {}), list(overrides))
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source)) from None
    except AuglensError as e:
        raise ConfigError(f"{source}: {e}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with the same key twice (YAML would keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' (first at line "
                    f"{seen[key].start_mark.line + 1}); YAML would silently keep only the last",
                    key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; missing file, bad YAML or a key given twice (e.g. two variants of the
    same name) gives a ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment file not found: {path}")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        what = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ConfigError(f"{path}: not valid YAML: {what}{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data
