"""Tests for the synthetic ``shapes`` dataset (small splits; every test checks real content)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from auglens.data import DATASETS, Dataset, build_shapes
from auglens.data.base import CONCEPT_CATEGORIES
from auglens.data.shapes import (
    BACKGROUND_COLORS,
    CONCEPT_LAYERS,
    CONCEPT_NAMES,
    CONCEPT_OFFSETS,
    GENERATOR_VERSION,
    OBJECT_COLORS,
    SHAPES,
    TEXTURE_DARKEN,
    TEXTURES,
    sample_scenes,
    shape_inside,
)
from auglens.errors import AuglensError, ConfigError

SMALL = {"n_train": 200, "n_val": 100, "n_test": 100}
OBJ_RGB = np.array(list(OBJECT_COLORS.values()))
BG_RGB = np.array(list(BACKGROUND_COLORS.values()), dtype=np.float64)
SPLITS = ("train", "val", "test")
FIELDS = ("images", "labels", "masks", "boxes", "concepts")


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return build_shapes(**SMALL, root=tmp_path_factory.mktemp("cache"))


def assert_same(a: Dataset, b: Dataset, splits: tuple[str, ...] = SPLITS) -> None:
    for split in splits:
        for f in FIELDS:
            assert torch.equal(getattr(getattr(a, split), f), getattr(getattr(b, split), f)), (
                split,
                f,
            )


def test_contract_dtypes_and_shapes(ds: Dataset) -> None:
    assert ds.name == "shapes" and ds.class_names == list(SHAPES) and ds.num_classes == 10
    assert ds.image_size == (32, 32)
    for split, n in zip(SPLITS, SMALL.values(), strict=True):
        s = getattr(ds, split)
        assert len(s) == n
        assert s.images.dtype == torch.uint8 and s.images.shape == (n, 3, 32, 32)
        assert s.labels.dtype == torch.int64 and s.labels.shape == (n,)
        assert s.masks.dtype == torch.bool and s.masks.shape == (n, 32, 32)
        assert s.boxes.dtype == torch.int64 and s.boxes.shape == (n, 4)
        assert s.concepts.dtype == torch.int16 and s.concepts.shape == (n, 4, 32, 32)
    assert DATASETS.get("shapes") is build_shapes
    assert DATASETS.describe("shapes")["params"]["image_size"] == 32


def test_mean_std_are_train_channel_stats(ds: Dataset) -> None:
    x = ds.train.images.double() / 255.0
    assert np.allclose(ds.mean, x.mean(dim=(0, 2, 3)).numpy(), atol=1e-9)
    assert np.allclose(ds.std, x.std(dim=(0, 2, 3), correction=0).numpy(), atol=1e-9)


def test_determinism(ds: Dataset, tmp_path: Path) -> None:
    again = build_shapes(**SMALL, root=tmp_path / "a")  # fresh cache dir: really regenerated
    assert not again.info["from_cache"]
    assert_same(ds, again)
    other = build_shapes(**SMALL, seed=1, root=tmp_path / "b")
    assert not torch.equal(other.train.images, ds.train.images)
    assert not torch.equal(other.train.labels, ds.train.labels)
    assert not torch.equal(other.test.masks, ds.test.masks)


def test_splits_independent_and_prefix_stable(ds: Dataset, tmp_path: Path) -> None:
    smaller = build_shapes(n_train=150, n_val=100, n_test=60, root=tmp_path)
    assert_same(ds, smaller, splits=("val",))
    for split, n in (("train", 150), ("test", 60)):
        full, part = getattr(ds, split), getattr(smaller, split)
        for f in FIELDS:
            assert torch.equal(getattr(full, f)[:n], getattr(part, f)), (split, f)
    # the splits themselves are different images
    assert not torch.equal(ds.val.images, ds.test.images)


def test_cache_round_trip_and_corruption(tmp_path: Path) -> None:
    params = {"n_train": 40, "n_val": 20, "n_test": 20}
    first = build_shapes(**params, root=tmp_path)
    path = Path(first.info["cache_file"])
    assert path.parent == tmp_path and path.suffix == ".npz" and path.is_file()
    assert os.listdir(tmp_path) == [path.name]  # no temp file left behind
    assert not first.info["from_cache"]
    assert first.info["params"] == {
        "generator_version": GENERATOR_VERSION,
        **params,
        "image_size": 32,
        "seed": 0,
        "spurious_strength": 0.0,
    }
    second = build_shapes(**params, root=tmp_path)
    assert second.info["from_cache"] and second.info["cache_file"] == str(path)
    assert_same(first, second)
    assert second.mean == first.mean and second.std == first.std
    # other parameters -> other file
    third = build_shapes(**{**params, "n_val": 21}, root=tmp_path)
    assert third.info["cache_file"] != str(path) and not third.info["from_cache"]

    data = path.read_bytes()
    for corrupt in (data[: len(data) // 2], data[:1000] + b"\x55" * 5000 + data[6000:]):
        path.write_bytes(corrupt)
        with pytest.warns(UserWarning, match="rebuilding"):
            rebuilt = build_shapes(**params, root=tmp_path)
        assert not rebuilt.info["from_cache"]
        assert_same(first, rebuilt)
        assert path.read_bytes() == data  # the rebuilt cache replaced the corrupt file
    assert build_shapes(**params, root=tmp_path).info["from_cache"]


def test_default_cache_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUGLENS_CACHE", str(tmp_path / "env"))
    d = build_shapes(n_train=10, n_val=10, n_test=10)
    assert Path(d.info["cache_file"]).parent == tmp_path / "env"
    assert Path(d.info["cache_file"]).is_file()


def reference_mask(scenes, i: int, size: int) -> np.ndarray:
    """The documented inside test for scene ``i`` alone (scalar trig, not batched)."""
    coord = (np.arange(size, dtype=np.float64) + 0.5) * (32 / size)
    x, y = np.meshgrid(coord, coord, indexing="xy")
    dx, dy = x - scenes.center[i, 0], y - scenes.center[i, 1]
    c, s = math.cos(scenes.angle[i]), math.sin(scenes.angle[i])
    u = (dx * c + dy * s) / scenes.radius[i]
    v = (-dx * s + dy * c) / scenes.radius[i]
    return shape_inside(int(scenes.labels[i]), u, v)


@pytest.mark.parametrize("split", ["train", "test"])
def test_mask_is_exactly_the_object_and_its_colour(ds: Dataset, split: str) -> None:
    s = getattr(ds, split)
    scenes = sample_scenes(len(s), split, seed=0)
    assert np.array_equal(scenes.labels, s.labels.numpy())
    images, masks = s.images.numpy(), s.masks.numpy()
    for i in range(len(s)):
        mask = masks[i]
        assert np.array_equal(mask, reference_mask(scenes, i, 32)), i
        assert mask.sum() > 0.05 * mask.size  # the object is not tiny
        colour = OBJ_RGB[scenes.color[i]]
        pix = images[i].reshape(3, -1).T  # (H*W, 3)
        is_colour = (pix == colour).all(axis=1).reshape(32, 32)
        assert np.array_equal(is_colour, mask), i  # colour on the mask, and nowhere else
    assert masks.reshape(len(s), -1).any(axis=1).all()


def test_boxes_are_tight_boxes_of_masks(ds: Dataset) -> None:
    for s in (ds.train, ds.test):
        for mask, (x1, y1, x2, y2) in zip(s.masks.numpy(), s.boxes.tolist(), strict=True):
            assert 0 <= x1 < x2 <= 32 and 0 <= y1 < y2 <= 32
            assert mask[y1:y2, x1:x2].sum() == mask.sum()
            # every border row / column of the box touches the mask
            assert mask[y1, x1:x2].any() and mask[y2 - 1, x1:x2].any()
            assert mask[y1:y2, x1].any() and mask[y1:y2, x2 - 1].any()


def test_concept_tables() -> None:
    n = 1 + len(SHAPES) + len(OBJECT_COLORS) + len(TEXTURES) + len(BACKGROUND_COLORS)
    assert len(CONCEPT_NAMES) == n and len(set(CONCEPT_NAMES)) == n
    assert CONCEPT_LAYERS == ("shape", "object_color", "bg_texture", "bg_color")


def test_concept_layers_consistent(ds: Dataset) -> None:
    assert ds.concept_names == list(CONCEPT_NAMES) and ds.concept_names[0] == "unlabelled"
    assert all(c in CONCEPT_CATEGORIES for c in ds.concept_categories[1:])
    cat = ds.concept_categories
    for layer, want in zip(CONCEPT_LAYERS, ("object", "color", "texture", "color"), strict=True):
        assert cat[CONCEPT_OFFSETS[layer]] == want
    assert cat[CONCEPT_OFFSETS["bg_texture"] - 1] == "color"  # last object colour
    present = {cat[c] for c in torch.unique(ds.test.concepts).tolist() if c}
    assert present == {"object", "color", "texture"}

    s = ds.train
    scenes = sample_scenes(len(s), "train", seed=0)
    conc, masks = s.concepts.numpy().astype(np.int64), s.masks.numpy()
    images = s.images.numpy().astype(np.int64)
    off = {k: CONCEPT_OFFSETS[k] for k in CONCEPT_LAYERS}
    for i in range(len(s)):
        m, c = masks[i], conc[i]
        assert (c[0][m] == off["shape"] + s.labels[i].item()).all()
        assert (c[1][m] == off["object_color"] + scenes.color[i]).all()
        assert (c[:2, ~m] == 0).all() and (c[2:, m] == 0).all()
        bg = c[2] != 0
        assert np.array_equal(bg, c[3] != 0)
        assert (c[2][bg] == off["bg_texture"] + scenes.texture[i]).all()
        assert (c[3][bg] == off["bg_color"] + scenes.bg_color[i]).all()
        assert bg.sum() > 0.3 * (~m).sum()  # clutter is small
        # labelled background pixels are the background colour (plain or darkened) up to noise
        pix = images[i][:, bg].T
        base = BG_RGB[scenes.bg_color[i]] * scenes.brightness[i]
        near = np.abs(pix - base).max(axis=1) <= 5
        near_dark = np.abs(pix - base * (1 - TEXTURE_DARKEN)).max(axis=1) <= 5
        assert (near | near_dark).all(), i
        if TEXTURES[scenes.texture[i]] == "plain":
            assert near.all()
        # unlabelled off-mask pixels are clutter: another object colour up to noise
        clutter = ~m & ~bg
        pix = images[i][:, clutter].T
        others = np.delete(OBJ_RGB, scenes.color[i], axis=0)
        dist = np.abs(pix[:, None, :] - others[None]).max(axis=2).min(axis=1)
        assert (dist <= 4).all(), i


def test_class_balance(ds: Dataset) -> None:
    for s in (ds.train, ds.val, ds.test):
        counts = torch.bincount(s.labels, minlength=10)
        assert (counts == len(s) // 10).all()


def test_size_64_scales_geometry(ds: Dataset, tmp_path: Path) -> None:
    big = build_shapes(n_train=30, n_val=10, n_test=10, image_size=64, root=tmp_path)
    assert big.image_size == (64, 64) and big.train.images.shape == (30, 3, 64, 64)
    assert big.train.concepts.shape == (30, 4, 64, 64)
    assert torch.equal(big.train.labels, ds.train.labels[:30])  # same scenes, finer sampling
    frac64 = big.train.masks.flatten(1).float().mean(1)
    frac32 = ds.train.masks[:30].flatten(1).float().mean(1)
    assert (frac64 - frac32).abs().max() < 0.03
    assert (big.train.boxes - 2 * ds.train.boxes[:30]).abs().max() <= 2
    scenes = sample_scenes(30, "train")
    for i in range(30):
        assert np.array_equal(big.train.masks[i].numpy(), reference_mask(scenes, i, 64))
        colour = torch.tensor(OBJ_RGB[scenes.color[i]], dtype=torch.uint8)
        assert (big.train.images[i][:, big.train.masks[i]] == colour[:, None]).all()


def bg_texture(s) -> np.ndarray:
    """Per image: the single background-texture index in its concept layer."""
    layer = s.concepts[:, 2].flatten(1).long()
    hi = layer.max(dim=1).values
    lo = torch.where(layer > 0, layer, 10**6).min(dim=1).values
    assert torch.equal(lo, hi)  # one texture per image
    return hi.numpy() - CONCEPT_OFFSETS["bg_texture"]


def test_spurious_cue_train_only(ds: Dataset, tmp_path: Path) -> None:
    cued = build_shapes(**SMALL, spurious_strength=1.0, root=tmp_path)
    labels = cued.train.labels.numpy()
    assert (bg_texture(cued.train) == labels % len(TEXTURES)).all()
    for split in ("val", "test"):
        s = getattr(cued, split)
        match = (bg_texture(s) == s.labels.numpy() % len(TEXTURES)).mean()
        assert match < 0.5  # ~1/6 by chance
    assert_same(ds, cued, splits=("val", "test"))  # the cue never touches val/test
    # without the cue, train textures are not determined by the class either
    assert (bg_texture(ds.train) == ds.train.labels.numpy() % len(TEXTURES)).mean() < 0.5
    # objects are the same; only the background changes
    assert torch.equal(cued.train.masks, ds.train.masks)
    half = build_shapes(**SMALL, spurious_strength=0.5, root=tmp_path)
    match = (bg_texture(half.train) == labels % len(TEXTURES)).mean()
    assert 0.4 < match < 0.8  # 0.5 + 0.5 / 6 expected


@pytest.mark.parametrize(
    ("field", "value", "valid"),
    [
        ("n_train", 0, r"integer in \[1, 1000000\]"),
        ("n_val", -3, r"integer in \[1, 1000000\]"),
        ("n_test", 2.5, r"integer in \[1, 1000000\]"),
        ("image_size", 8, r"integer in \[16, 512\]"),
        ("image_size", "32", r"integer in \[16, 512\]"),
        ("seed", -1, r"integer in \[0, 4294967295\]"),
        ("seed", True, r"integer in \[0, 4294967295\]"),
        ("spurious_strength", 1.5, r"number in \[0, 1\]"),
        ("spurious_strength", float("nan"), r"number in \[0, 1\]"),
        ("root", 3, r"directory path or None"),
    ],
)
def test_bad_parameters_raise_config_error(
    field: str, value: object, valid: str, tmp_path: Path
) -> None:
    params = {**SMALL, "root": tmp_path, field: value}
    with pytest.raises(ConfigError, match=rf"\b{field} must be an? {valid}"):
        build_shapes(**params)
    assert issubclass(ConfigError, AuglensError)
    assert not any(tmp_path.iterdir())  # nothing written


def test_shapes_fit_unit_disc_and_differ_under_rotation() -> None:
    g = (np.arange(96) + 0.5) / 48 - 1.0
    u, v = np.meshgrid(g, g, indexing="xy")
    outside = u * u + v * v > 1.0
    angles = np.linspace(0, 2 * math.pi, 72, endpoint=False)
    rotated = {}
    for k in range(len(SHAPES)):
        base = shape_inside(k, u, v)
        assert base.mean() > 0.15, SHAPES[k]  # substantial area
        assert not base[outside].any(), SHAPES[k]
        rotated[k] = np.stack(
            [shape_inside(k, u * math.cos(a) + v * math.sin(a), v * math.cos(a) - u * math.sin(a))
             for a in angles]
        )  # fmt: skip
    for a in range(len(SHAPES)):
        for b in range(a + 1, len(SHAPES)):
            ref = rotated[a][0]
            inter = (rotated[b] & ref).sum(axis=(1, 2))
            union = (rotated[b] | ref).sum(axis=(1, 2))
            assert (inter / union).max() < 0.8, (SHAPES[a], SHAPES[b])
