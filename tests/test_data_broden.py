"""Broden (broden1_224 layout) concept data: index parsing, label decoding, streaming, dissect."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from auglens.data import iter_broden, load_broden, read_broden_index
from auglens.data.base import DATASETS
from auglens.errors import AuglensError
from auglens.metrics.dissection import dissect
from auglens.models import build_model

CATEGORIES = ["color", "object", "part", "material", "scene", "texture"]
# number, name, category field (name(count);...), frequency, coverage, syns
LABELS = [
    (1, "black-c", "color(3)", 3, 1.5, ""),
    (2, "red-c", "color(2)", 2, 0.4, ""),
    (3, "wall", "object(2)", 2, 0.9, "walls"),
    (4, "floor", "object(2)", 2, 0.5, "flooring;ground"),
    (5, "window", "part(1)", 1, 0.1, ""),
    (6, "fabric", "material(36);object(3)", 39, 4.225474, "cloth"),
    (7, "street-s", "scene(1)", 1, 1.0, ""),
    (8, "banded", "texture(1)", 1, 1.0, ""),
    (9, "person", "object(5);part(2)", 7, 0.8, ""),
    (10, "dotted", "texture(1)", 1, 1.0, ""),
    (300, "sky", "object(1)", 1, 0.05, ""),
]
# per-category coverage in c_<cat>.csv (NetDissect-Lite's primary category: max coverage)
COVERAGE = {("material", 6): 4.2, ("object", 6): 0.5, ("object", 9): 0.3, ("part", 9): 0.9}
S, L = 224, 112


def _png(path: Path, ids: np.ndarray) -> None:
    """Label image: R + 256 * G = global label number (B unused), as in Broden."""
    rgb = np.zeros((*ids.shape, 3), dtype=np.uint8)
    rgb[..., 0] = ids % 256
    rgb[..., 1] = ids // 256
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def _jpg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (S, S, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, quality=95)


def make_broden(root: Path, coverage_files: bool = True) -> dict:
    """A 4-image Broden folder; returns the expected concept layers per image (id arrays)."""
    img = root / "images"
    yy, xx = np.mgrid[0:L, 0:L]
    color1 = np.where(xx < 40, 1, 2)
    obj1 = np.where(yy < 56, 3, 4)
    part1a = np.where((yy < 20) & (xx < 30), 5, 0)
    part1b = np.where((yy >= 90) & (xx >= 90), 9, 0)
    obj2 = np.where(yy < 56, 3, 9)
    obj2[:10, :10] = 300
    color3 = np.ones((L, L), dtype=np.int64)
    mat4 = np.where(xx >= 56, 6, 0)
    color4 = np.where(yy < 10, 2, 0)
    rows = [
        ("ade20k/ADE_train_00000001.jpg", "train",
         {"color": ["ade20k/ADE_train_00000001_color.png"],
          "object": ["ade20k/ADE_train_00000001_object.png"],
          "part": ["ade20k/ADE_train_00000001_part_1.png", "ade20k/ADE_train_00000001_part_2.png"],
          "scene": ["7"]}),
        ("ade20k/ADE_train_00000002.jpg", "val",
         {"object": ["ade20k/ADE_train_00000002_object.png"], "scene": ["7"]}),
        ("dtd/banded_0001.jpg", "train", {"color": ["dtd/banded_0001_color.png"],
                                          "texture": ["8", "10"]}),
        ("opensurfaces/100963.jpg", "val", {"color": ["opensurfaces/100963_color.png"],
                                            "material": ["opensurfaces/100963_material.png"]}),
    ]  # fmt: skip
    pngs = {
        "ade20k/ADE_train_00000001_color.png": color1,
        "ade20k/ADE_train_00000001_object.png": obj1,
        "ade20k/ADE_train_00000001_part_1.png": part1a,
        "ade20k/ADE_train_00000001_part_2.png": part1b,
        "ade20k/ADE_train_00000002_object.png": obj2,
        "dtd/banded_0001_color.png": color3,
        "opensurfaces/100963_color.png": color4,
        "opensurfaces/100963_material.png": mat4,
    }
    for name, ids in pngs.items():
        _png(img / name, ids)
    for k, (image, *_rest) in enumerate(rows):
        _jpg(img / image, k)
    with open(root / "index.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "split", "ih", "iw", "sh", "sw", "color", "object", "part",
                    "material", "scene", "texture"])  # fmt: skip
        for image, split, lab in rows:
            w.writerow([image, split, S, S, L, L, *(";".join(lab.get(c, [])) for c in
                                                     ["color", "object", "part", "material",
                                                      "scene", "texture"])])  # fmt: skip
    with open(root / "category.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "first", "last", "count", "frequency"])
        for c in CATEGORIES:
            w.writerow([c, 1, 300, 3, 4])
    with open(root / "label.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "name", "category", "frequency", "coverage", "syns"])
        w.writerows(LABELS)
    if coverage_files:
        for c in CATEGORIES:
            with open(root / f"c_{c}.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["code", "number", "name", "frequency", "coverage"])
                code = 0
                for num, name, cat, freq, cov, _ in LABELS:
                    if f"{c}(" in cat:
                        code += 1
                        w.writerow([code, num, name, freq, COVERAGE.get((c, num), cov)])
    full = lambda v: np.full((L, L), v)  # noqa: E731
    return {
        0: [color1, obj1, part1a, part1b, full(7)],
        1: [obj2, full(7)],
        2: [color3, full(8), full(10)],
        3: [color4, mat4],
    }


@pytest.fixture(scope="module")
def broden(tmp_path_factory):
    root = tmp_path_factory.mktemp("broden1_224")
    return root, make_broden(root)


def test_index_names_and_primary_categories(broden):
    root, _ = broden
    idx = read_broden_index(root)
    assert idx.categories == CATEGORIES and len(idx.records) == 4
    assert len(idx.concept_names) == 301 and idx.concept_names[0] == "unlabelled"
    assert idx.concept_names[300] == "sky" and idx.concept_names[6] == "fabric"
    cat = idx.concept_categories
    assert (cat[0], cat[1], cat[3], cat[5], cat[7], cat[8], cat[300]) == (
        "", "color", "object", "part", "scene", "texture", "object")
    assert cat[6] == "material" and cat[9] == "part"  # max coverage in c_*.csv
    assert cat[150] == "" and idx.concept_names[150] == ""  # unused numbers
    rec = idx.records[0]
    assert (rec.image, rec.split, rec.ih, rec.sw) == ("ade20k/ADE_train_00000001.jpg", "train",
                                                       224, 112)
    assert rec.labels["scene"] == [7] and len(rec.labels["part"]) == 2
    assert [r.image for r in read_broden_index(root, split="val").records] == [
        "ade20k/ADE_train_00000002.jpg", "opensurfaces/100963.jpg"]
    only = read_broden_index(root, categories=["texture"])
    assert [r.image for r in only.records] == ["dtd/banded_0001.jpg"]


def test_primary_category_from_label_counts_without_c_files(tmp_path):
    make_broden(tmp_path, coverage_files=False)
    cat = read_broden_index(tmp_path).concept_categories
    assert cat[6] == "material" and cat[9] == "object"  # largest count in label.csv


def test_load_broden_concepts_exact(broden):
    root, want = broden
    probe = load_broden(root, max_images=None)
    assert probe.images.shape == (4, 3, S, S) and probe.images.dtype == torch.uint8
    assert probe.concepts.shape == (4, 5, L, L) and probe.concepts.dtype == torch.int16
    for i, layers in want.items():
        for j in range(5):
            ref = layers[j] if j < len(layers) else np.zeros((L, L))
            assert np.array_equal(probe.concepts[i, j].numpy(), ref), (i, j)
    assert int(probe.concepts[1, 0, 0, 0]) == 300  # R=44, G=1 → 44 + 256
    ref = np.array(Image.open(root / "images" / "dtd" / "banded_0001.jpg").convert("RGB"))
    assert torch.equal(probe.images[2], torch.from_numpy(ref).permute(2, 0, 1))
    assert probe.info["n_images"] == 4 and probe.info["categories"] == CATEGORIES


def test_sampling_streaming_and_resizing(broden):
    root, want = broden
    a = load_broden(root, max_images=2, seed=0)
    b = load_broden(root, max_images=2, seed=0)
    assert torch.equal(a.concepts, b.concepts) and a.info["n_images"] == 2
    first = load_broden(root, max_images=2, seed=None)
    assert first.info["images"] == ["ade20k/ADE_train_00000001.jpg",
                                    "ade20k/ADE_train_00000002.jpg"]
    batches = list(iter_broden(root, batch_size=3, seed=None, workers=2))
    assert [len(x.index) for x in batches] == [3, 1]
    assert [x.index.tolist() for x in batches] == [[0, 1, 2], [3]]
    assert all(x.concepts.shape[1] == 5 for x in batches)  # layers fixed over the stream
    full = load_broden(root, max_images=None)
    assert torch.equal(torch.cat([x.concepts for x in batches]), full.concepts)
    small = next(iter_broden(root, batch_size=4, image_size=64, label_size=56, layers=2))
    assert small.images.shape == (4, 3, 64, 64) and small.concepts.shape == (4, 2, 56, 56)
    # nearest downsampling by 2 picks every other pixel
    assert np.array_equal(small.concepts[0, 1].numpy(), want[0][1][::2, ::2])


def test_dissect_takes_the_probe(broden):
    root, want = broden
    probe = load_broden(root, max_images=None)
    torch.manual_seed(0)
    model = build_model("small_resnet", 10, width=4).eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    res = dissect(model, probe.images, probe.concepts, lambda x: (x - mean) / 0.226,
                  probe.concept_names, probe.concept_categories, batch_size=2)  # fmt: skip
    # Σ|L_c| over the probe set: pixels where any layer holds c, from the fixture's arrays
    expect = np.zeros(301, dtype=np.int64)
    for layers in want.values():
        stack = np.stack(layers)
        for c in np.unique(stack):
            if c:
                expect[c] += int((stack == c).any(0).sum())
    assert res.label_pixels.tolist() == expect.tolist()
    assert res.thresholds.shape == (16,)  # layer3 of width 4: 4 * 4 channels
    assert set(res.table().category) <= set(CATEGORIES)


@pytest.mark.parametrize(
    "damage, pattern",
    [
        ("index", r"broden: data not found: .*index.csv is missing; expected index.csv, "
                  r"category.csv, label.csv"),
        ("png", r"broden: label image not found: .*ADE_train_00000002_object.png"),
        ("id", r"label image .*banded_0001_color.png holds label 999, but label.csv lists ids "
               r"up to 300"),
        ("category", r"label.csv: row 3: category entry 'color' is not name\(count\)"),
        ("column", r"index.csv: no 'texture' column"),
        ("jpg", r"corrupt image .*100963.jpg"),
    ],
)
def test_bad_broden_input(tmp_path, damage, pattern):
    make_broden(tmp_path)
    if damage == "index":
        (tmp_path / "index.csv").unlink()
    elif damage == "png":
        (tmp_path / "images" / "ade20k" / "ADE_train_00000002_object.png").unlink()
    elif damage == "id":
        _png(tmp_path / "images" / "dtd" / "banded_0001_color.png", np.full((L, L), 999))
    elif damage == "category":
        text = (tmp_path / "label.csv").read_text().replace("red-c,color(2)", "red-c,color")
        (tmp_path / "label.csv").write_text(text)
    elif damage == "column":
        text = (tmp_path / "index.csv").read_text().replace(",texture", ",textures", 1)
        (tmp_path / "index.csv").write_text(text)
    elif damage == "jpg":
        (tmp_path / "images" / "opensurfaces" / "100963.jpg").write_bytes(b"\xff\xd8garbage")
    with pytest.raises(AuglensError, match=pattern):
        load_broden(tmp_path, max_images=None)


def test_unknown_category_and_broden_is_not_a_classification_dataset(broden):
    root, _ = broden
    with pytest.raises(AuglensError, match="unknown category 'colour'; .*lists color, object"):
        read_broden_index(root, categories=["colour"])
    assert "broden" not in DATASETS  # a probe set for dissect, not a training dataset


def test_auglens_run_dissects_on_a_broden_probe(tmp_path):
    import yaml

    from auglens.cli import main

    make_broden(tmp_path / "broden")
    exp = {
        "name": "broden-run",
        "data": {"name": "shapes", "n_train": 128, "n_val": 32, "n_test": 16},
        "model": {"name": "small_resnet", "width": 4},
        "train": {"epochs": 1, "batch_size": 64},
        "seeds": [0],
        "variants": {"baseline": [], "cutmix": [{"name": "cutmix"}]},
        "evaluate": {"enabled": False},
        "dissect": {"probe": "broden", "broden_root": str(tmp_path / "broden"),
                    "n_images": None},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--quiet", "--workers", "1"]) == 0
    import pandas as pd

    table = pd.read_parquet(out / "tables" / "dissection.parquet")
    assert len(table) == 2 * 16  # two cells × 16 units of layer3 at width 4
    assert set(table.category) <= set(CATEGORIES)
    names = {row[1] for row in LABELS}
    assert set(table.concept) <= names
    # a missing Broden folder stops the run before anything is trained
    exp["dissect"]["broden_root"] = str(tmp_path / "nope")
    path.write_text(yaml.safe_dump(exp))
    assert main(["run", str(path), "--out", str(tmp_path / "run2"), "--quiet"]) == 2
    assert not (tmp_path / "run2" / "cells").exists()
