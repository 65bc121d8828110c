"""Parameter schemas of the runtime registries that `auglens.config` validates against without
importing them (`auglens.registry.Schema`); `tests/test_config.py` checks each equals the
registry it declares (add a parameter there and here)."""

from __future__ import annotations

from .registry import Schema

_COMMON = ("channels_last", "target_layer")

#: `auglens.explain.EXPLAINERS`: explainer → keyword parameters (``estimator`` excluded: fitted
#: by the pipeline)
EXPLAINER_SCHEMA = Schema(
    "explainer",
    {
        "gradcam": _COMMON,
        "gradcam++": _COMMON,
        "layercam": _COMMON,
        "iba": (*_COMMON, "active_threshold", "batch_noise", "beta", "check_estimator",
                "head_only", "init_alpha", "lr", "min_std", "saliency_from", "seed",
                "smooth_sigma", "steps"),
        "rise": (*_COMMON, "cache_mb", "grid_size", "max_batch", "n_masks", "p", "seed"),
        "rollout": (*_COMMON, "discard_ratio", "head_fusion"),
    },
    {"captum": "captum:<Attribution>", "pgc": "pgc:<CAM>"},
)
