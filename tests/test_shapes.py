"""The built-in `shapes` dataset: determinism, cache, exact masks/boxes/concepts, options."""

import math

import numpy as np
import pytest
import torch

from auglens.data import DATASETS, build_shapes
from auglens.data.shapes import (
    BASE_SIZE,
    CONCEPT_OFFSETS,
    OBJECT_COLORS,
    SHAPES,
    TEXTURES,
    sample_scenes,
    shape_inside,
)
from auglens.errors import AuglensError, ConfigError

SMALL = {"n_train": 120, "n_val": 30, "n_test": 60}


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return build_shapes(**SMALL, root=tmp_path_factory.mktemp("c"))


def test_registered_and_shapes(ds):
    assert DATASETS.get("shapes") is build_shapes
    t = ds.test
    assert t.images.shape == (60, 3, 32, 32) and t.images.dtype == torch.uint8
    assert t.labels.dtype == torch.int64 and t.masks.dtype == torch.bool
    assert t.boxes.shape == (60, 4) and t.concepts.shape == (60, 4, 32, 32)
    assert t.concepts.dtype == torch.int16
    assert ds.class_names == list(SHAPES) and len(SHAPES) == 10
    assert len(ds.concept_names) == len(ds.concept_categories)
    # roughly balanced classes
    counts = np.bincount(sample_scenes(1000, "train").labels, minlength=10)
    assert (counts == 100).all()  # balanced within each block of 1000 scenes


def test_deterministic_and_seed_dependent(tmp_path):
    a = build_shapes(**SMALL, root=tmp_path / "a")
    b = build_shapes(**SMALL, root=tmp_path / "b")
    c = build_shapes(**SMALL, seed=1, root=tmp_path / "c")
    for split in ("train", "val", "test"):
        for f in ("images", "labels", "masks", "boxes", "concepts"):
            assert torch.equal(getattr(getattr(a, split), f), getattr(getattr(b, split), f))
    assert not torch.equal(a.train.images, c.train.images)
    assert a.mean == b.mean


def test_cache_roundtrip_and_corrupt_cache_rebuilt(tmp_path):
    a = build_shapes(**SMALL, root=tmp_path)
    assert not a.info["from_cache"]
    b = build_shapes(**SMALL, root=tmp_path)
    assert b.info["from_cache"] and torch.equal(a.test.images, b.test.images)
    path = a.info["cache_file"]
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"\x00" * 200)
    with pytest.warns(UserWarning):
        c = build_shapes(**SMALL, root=tmp_path)
    assert not c.info["from_cache"] and torch.equal(a.test.images, c.test.images)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def _inside_reference(n: int, split: str, size: int) -> np.ndarray:
    """The documented inside test at pixel centres, one image at a time."""
    sc = sample_scenes(n, split)
    out = np.zeros((n, size, size), bool)
    c = (np.arange(size) + 0.5) * BASE_SIZE / size
    x, y = np.meshgrid(c, c)
    for i in range(n):
        dx, dy = x - sc.center[i, 0], y - sc.center[i, 1]
        a, r = sc.angle[i], sc.radius[i]
        u = (dx * math.cos(a) + dy * math.sin(a)) / r
        v = (-dx * math.sin(a) + dy * math.cos(a)) / r
        out[i] = shape_inside(int(sc.labels[i]), u, v)
    return out


@pytest.mark.parametrize("size", [32, 64])
def test_mask_is_exactly_the_drawn_object(tmp_path, size):
    d = build_shapes(**SMALL, image_size=size, root=tmp_path)
    t = d.test
    ref = _inside_reference(len(t), "test", size)
    assert np.array_equal(t.masks.numpy(), ref)
    sc = sample_scenes(len(t), "test")
    palette = np.array(list(OBJECT_COLORS.values()))
    for i in range(len(t)):
        img = t.images[i].numpy()
        m = t.masks[i].numpy()
        assert m.sum() > 0.05 * size * size  # the object is not tiny
        colour = palette[sc.color[i]]
        assert (img[:, m] == colour[:, None]).all()  # exactly the object colour on the mask
        off = img[:, ~m]
        assert not (off == colour[:, None]).all(axis=0).any()  # never off the mask


def test_boxes_are_tight_boxes_of_masks(ds):
    for m, (x1, y1, x2, y2) in zip(ds.test.masks, ds.test.boxes.tolist(), strict=True):
        ys, xs = torch.nonzero(m, as_tuple=True)
        assert (x1, y1, x2, y2) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        inside = torch.zeros_like(m)
        inside[y1:y2, x1:x2] = True
        assert not (m & ~inside).any()


def test_concept_layers_consistent_with_mask_and_labels(ds):
    t = ds.test
    sc = sample_scenes(len(t), "test")
    for i in range(len(t)):
        m = t.masks[i]
        shape, ocol, tex, bcol = t.concepts[i].long()
        assert (shape[m] == CONCEPT_OFFSETS["shape"] + t.labels[i]).all()
        assert (shape[~m] == 0).all() and (ocol[~m] == 0).all()
        assert (ocol[m] == CONCEPT_OFFSETS["object_color"] + int(sc.color[i])).all()
        assert (tex[m] == 0).all() and (bcol[m] == 0).all()
        bg = tex > 0
        assert (tex[bg] == CONCEPT_OFFSETS["bg_texture"] + int(sc.texture[i])).all()
        assert torch.equal(bg, bcol > 0)
        assert bg.sum() >= 0.5 * (~m).sum()  # most background is labelled (clutter is not)
    cats = {ds.concept_categories[c] for c in torch.unique(t.concepts).tolist() if c}
    assert cats == {"object", "color", "texture"}


def test_spurious_cue_in_train_only(tmp_path):
    d = build_shapes(n_train=300, n_val=30, n_test=300, spurious_strength=1.0, root=tmp_path)
    tex_id = d.train.concepts[:, 2].flatten(1).max(1).values.long() - CONCEPT_OFFSETS["bg_texture"]
    assert torch.equal(tex_id, d.train.labels % len(TEXTURES))
    tex_test = d.test.concepts[:, 2].flatten(1).max(1).values.long() - CONCEPT_OFFSETS["bg_texture"]
    assert (tex_test == d.test.labels % len(TEXTURES)).float().mean() < 0.4


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"image_size": 8}, "image_size must be an integer in \\[16, 512\\]"),
        ({"n_train": 0}, "n_train must be an integer"),
        ({"spurious_strength": 1.5}, "spurious_strength must be a number in \\[0, 1\\]"),
    ],
)
def test_bad_parameters_name_the_field(kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build_shapes(**kwargs)
    assert issubclass(ConfigError, AuglensError)
