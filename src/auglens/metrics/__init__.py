"""Metrics comparing attribution maps of two models, image by image (SPEC §3); human alignment
(SPEC §4, :mod:`.alignment`), faithfulness (SPEC §5, :mod:`.faithfulness`) and ROAD (SPEC §11,
:mod:`.road`) of a model's maps."""

from . import similarity
from .alignment import (
    alignment_scores,
    box_fraction,
    boxes_to_mask,
    common_image_set,
    effective_heat_ratio,
    energy_pointing_game,
    filter_images,
)
from .dissection import (
    DissectionResult,
    dissect,
    dissect_cached,
    load_dissection,
    save_dissection,
)
from .faithfulness import (
    FaithfulnessCurves,
    ScoreSummary,
    auc,
    deletion_insertion_curves,
    faithfulness_scores,
    random_orders,
    summarize_scores,
)
from .road import RoadCurves, road_curves, road_scores
from .similarity import *  # noqa: F403  (exactly similarity.__all__)

__all__ = [
    "DissectionResult",
    "dissect",
    "dissect_cached",
    "load_dissection",
    "save_dissection",
    "FaithfulnessCurves",
    "ScoreSummary",
    "alignment_scores",
    "auc",
    "box_fraction",
    "boxes_to_mask",
    "common_image_set",
    "deletion_insertion_curves",
    "effective_heat_ratio",
    "energy_pointing_game",
    "faithfulness_scores",
    "filter_images",
    "random_orders",
    "RoadCurves",
    "road_curves",
    "road_scores",
    "summarize_scores",
]
__all__ += similarity.__all__
