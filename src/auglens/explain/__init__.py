"""Attribution maps (SPEC §2): one registry of explainers on a thin, state-preserving base.

    from auglens.explain import EXPLAINERS, explain_images
    exp = EXPLAINERS.get("gradcam")(model)(x)          # Explanation: maps (B, h, w), logits, ...
    exp = explain_images(model, images_uint8, data.normalize, method="gradcam")

Transformers: token layers are read as patch grids through the model's ``cam_reshape``
(`feature_grid`); ``rollout`` is attention rollout. Maps are raw at the target layer's resolution
(input resolution for input methods: ``rise``, most ``captum:`` ones); `upsample` (bilinear,
align_corners=False) only when a metric needs input resolution. ``captum:<Attribution>`` and
``pgc:<CAM>`` name any Captum / pytorch-grad-cam method (`adapters`).
"""

from .adapters import CaptumExplainer, PgcExplainer, captum_explainer, pgc_explainer
from .base import (
    EXPLAINERS,
    Explainer,
    Explanation,
    explain_images,
    feature_grid,
    model_device,
    preserved_state,
    register_explainer,
    resolve_targets,
    upsample,
)
from .cam import GradCAM, GradCAMPlusPlus, GradientCAM, LayerCAM
from .iba import IBA, Estimator, IBAEstimator, fit_estimator
from .rise import RISE
from .rollout import AttentionRollout, rollout

__all__ = [
    "EXPLAINERS",
    "AttentionRollout",
    "CaptumExplainer",
    "PgcExplainer",
    "RISE",
    "captum_explainer",
    "pgc_explainer",
    "Estimator",
    "Explainer",
    "Explanation",
    "GradCAM",
    "GradCAMPlusPlus",
    "GradientCAM",
    "IBA",
    "IBAEstimator",
    "LayerCAM",
    "explain_images",
    "feature_grid",
    "fit_estimator",
    "model_device",
    "preserved_state",
    "register_explainer",
    "resolve_targets",
    "rollout",
    "upsample",
]
