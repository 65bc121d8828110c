"""ImageNet-style folders with Pascal VOC boxes, the lazy image container and its trainer path."""

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as TF

from auglens.cli import main
from auglens.config import CellConfig, ExperimentConfig, load_config
from auglens.data import DATASETS, BoxMasks, Geometry, LazyImages, check_source, iter_batches
from auglens.data import images as images_mod
from auglens.data.folder import read_voc, voc_boxes
from auglens.data.images import ImageFiles, load_image, pixel_range
from auglens.errors import AuglensError
from auglens.train import train_cell

CLASSES = ("n01440764", "n01443537", "n01484850")
PRESETS = Path(__file__).resolve().parents[1] / "src" / "auglens" / "presets"


def voc_xml(w: int, h: int, objects: list[tuple[str, tuple]], size: bool = True) -> str:
    objs = "".join(
        f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>0</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b in objects
    )
    sz = f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>" if size else ""
    return (f"<annotation><folder>val</folder><filename>x</filename><source><database>ILSVRC_2012"
            f"</database></source>{sz}<segmented>0</segmented>{objs}</annotation>")


def noise(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def make_folder(root: Path, n_train: int = 4, n_val: int = 2, boxes: bool = True) -> Path:
    """root/{train,val}/<wnid>/*.JPEG (sizes vary, a grey PNG among them) + boxes/<stem>.xml."""
    k = 0
    for split, n in (("train", n_train), ("val", n_val)):
        for c in CLASSES:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                k += 1
                w, h = 40 + 4 * (k % 5), 30 + 3 * (k % 4)
                if i == 1:
                    Image.fromarray(noise(h, w, k)[..., 0], "L").save(d / f"{c}_{i}.png")
                else:
                    Image.fromarray(noise(h, w, k)).save(d / f"{c}_{i}.JPEG", quality=90)
                if split == "val" and boxes:
                    bd = root / "boxes"
                    bd.mkdir(exist_ok=True)
                    objs = [(c, (2, 3, w - 10, h - 8)), ("n99999999", (0, 0, 5, 5))]
                    stem = f"{c}_{i}"
                    (bd / f"{stem}.xml").write_text(voc_xml(w, h, objs))
    (root / "train" / CLASSES[0] / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("imgs"))


def build(root, **kw):
    kw = {"root": str(root), "val_size": 3, "image_size": 32, **kw}
    return DATASETS.get("imagefolder")(**kw)


# ----------------------------------------------------------------------------- geometry + boxes


def test_geometry_plan_matches_torchvision_resize_and_center_crop(tmp_path):
    g = Geometry(224, 256)
    assert g.plan(500, 375) == (341, 256, 58, 16)  # round(58.5) = 58 (banker's, as torchvision)
    assert g.plan(300, 400) == (256, 341, 16, 58)
    assert Geometry(64, 64, crop=False).plan(500, 375) == (64, 64, 0, 0)
    img = torch.from_numpy(noise(375, 500, 0)).permute(2, 0, 1).contiguous()
    ref = TF.center_crop(TF.resize(img, 256, antialias=True), [224, 224])
    assert torch.equal(g.apply(img), ref)
    # files go through Pillow: identical to torchvision's classic Resize(256) + CenterCrop(224)
    # on PIL images, and within ±1 of the tensor path
    f = tmp_path / "x.png"
    Image.fromarray(noise(375, 500, 0)).save(f)
    classic = T.Compose([T.Resize(256), T.CenterCrop(224)])(Image.open(f).convert("RGB"))
    got = load_image(f, g)
    assert torch.equal(got, torch.from_numpy(np.array(classic)).permute(2, 0, 1))
    assert (got.int() - ref.int()).abs().max() <= 1
    assert pixel_range(9.7 + 0.5, 146.6, 224) == (10, 147)
    assert pixel_range(-5.0, 0.4, 224) == (0, 0) and pixel_range(200.0, 300.0, 224) == (200, 224)


def test_box_rescaling_hand_computed(tmp_path):
    """500×375 → shorter side 256 (341×256), centre crop 224 at (58, 16); pixel i is inside when
    lo ≤ i + 0.5 < hi.  ImageNet box (0-based, inclusive) 100..299 × 50..249 → edges [100, 300) ×
    [50, 250) → ×0.682 − 58 = [10.2, 146.6), ×256/375 − 16 = [18.133, 154.667) → (10, 18, 147, 155).
    """
    x = tmp_path / "a.xml"
    x.write_text(voc_xml(500, 375, [("cat", (100, 50, 299, 249)), ("dog", (0, 0, 9, 9))]))
    g = Geometry(224, 256)
    assert voc_boxes(read_voc(x), "cat", (500, 375), g, origin=0) == ([(10, 18, 147, 155)], 0)
    # Pascal VOC (1-based) portrait 300×400: edges [30, 150) × [100, 300); 256×341, crop at
    # (16, 58): x ×256/300 − 16 → [9.6, 112), y ×341/400 − 58 → [27.25, 197.75)
    x.write_text(voc_xml(300, 400, [("cat", (31, 101, 150, 300))]))
    assert voc_boxes(read_voc(x), "cat", (300, 400), g, origin=1) == ([(10, 27, 112, 198)], 0)
    # direct resize to 64×64: [100, 300) × 0.128 = [12.8, 38.4); [50, 250) × 64/375
    x.write_text(voc_xml(500, 375, [("cat", (100, 50, 299, 249))]))
    sq = Geometry(64, 64, crop=False)
    assert voc_boxes(read_voc(x), "cat", (500, 375), sq) == ([(13, 9, 38, 43)], 0)
    # image re-saved at 250×188 (XML still says 500×375): boxes scale by the size ratio;
    # 340×256 resize, crop at (58, 16): x: [50, 150) × 1.36 − 58 = [10, 146)
    assert voc_boxes(read_voc(x), "cat", (250, 188), g) == ([(10, 18, 146, 155)], 0)
    # a box entirely cut away by the centre crop is dropped
    x.write_text(voc_xml(500, 375, [("cat", (0, 0, 30, 30))]))
    assert voc_boxes(read_voc(x), "cat", (500, 375), g) == ([], 0)


@pytest.mark.parametrize(
    "box, size, pattern",
    [
        ((100, 50, 500, 249), (500, 375), r"a.xml: box \(100, 50, 500, 249\) of 'cat' lies outside "
                                          r"the 500×375 image .*set clip_boxes: true"),
        ((100, 50, 90, 249), (500, 375), r"a.xml: box .* has xmax < xmin"),
        ((1, 1, 9, 9), (300, 375), r"a.xml is for a 500×375 image but the image is 300×375"),
    ],
)
def test_bad_boxes_name_the_file(tmp_path, box, size, pattern):
    x = tmp_path / "a.xml"
    x.write_text(voc_xml(500, 375, [("cat", box)]))
    with pytest.raises(AuglensError, match=pattern):
        voc_boxes(read_voc(x), "cat", size, Geometry(224, 256))


def test_clip_boxes_clips_and_counts(tmp_path):
    x = tmp_path / "a.xml"
    x.write_text(voc_xml(500, 375, [("cat", (100, 50, 520, 249))]))  # edges [100, 521) → 500
    out, clipped = voc_boxes(read_voc(x), "cat", (500, 375), Geometry(224, 256), clip=True)
    # x: 500 × 0.682 − 58 = 283 → clipped to the crop (224)
    assert out == [(10, 18, 224, 155)] and clipped == 1


def test_malformed_xml(tmp_path):
    x = tmp_path / "b.xml"
    x.write_text("<annotation><object><name>cat</name><bndbox><xmin>1</xmin></bndbox></object>")
    with pytest.raises(AuglensError, match=r"malformed annotation file .*b.xml"):
        read_voc(x)
    x.write_text("<annotation><object><name>cat</name><bndbox><xmin>1</xmin></bndbox></object>"
                 "</annotation>")
    with pytest.raises(AuglensError, match=r"b.xml: object 0 \('cat'\) has no complete <bndbox>"):
        read_voc(x)
    x.write_text(voc_xml(500, 375, [("cat", (1.5, 2, "x", 4))]))
    with pytest.raises(AuglensError, match=r"b.xml: <xmax> is not a number: 'x'"):
        read_voc(x)


# ----------------------------------------------------------------------------- the loader


def test_folder_dataset_eager(folder):
    ds = build(folder, boxes_dir="boxes")
    assert ds.class_names == list(CLASSES) and ds.num_classes == 3
    assert (len(ds.train), len(ds.val), len(ds.test)) == (9, 3, 6)
    assert sorted(ds.val.labels.tolist()) == [0, 1, 2]  # stratified
    assert isinstance(ds.train.images, torch.Tensor) and ds.train.images.shape == (9, 3, 32, 32)
    assert ds.test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    # each test image equals decode → resize (shorter side round(32·256/224) = 37) → crop 32
    g = Geometry(32, 37)
    paths = sorted((folder / "val" / CLASSES[1]).iterdir())
    assert [p.name for p in paths] == [f"{CLASSES[1]}_0.JPEG", f"{CLASSES[1]}_1.png"]
    classic = T.Compose([T.Resize(37), T.CenterCrop(32)])
    for j, p in enumerate(paths):
        ref = np.array(classic(Image.open(p).convert("RGB")))
        assert torch.equal(ds.test.images[2 + j], torch.from_numpy(ref).permute(2, 0, 1))
    grey = ds.test.images[3]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])  # L → RGB
    # boxes: (N, M=1, 4) for the image's own class (the other object is ignored), masks = union
    assert ds.test.boxes.shape == (6, 1, 4) and ds.test.masks.dtype == torch.bool
    for i, c in enumerate(ds.test.labels.tolist()):
        p = sorted((folder / "val" / CLASSES[c]).iterdir())[i % 2]
        ann = read_voc(folder / "boxes" / f"{p.stem}.xml")
        w, h = Image.open(p).size
        want, _ = voc_boxes(ann, CLASSES[c], (w, h), g)
        assert ds.test.boxes[i].tolist() == [list(b) for b in want]
        x1, y1, x2, y2 = want[0]
        m = torch.zeros(32, 32, dtype=torch.bool)
        m[y1:y2, x1:x2] = True
        assert torch.equal(ds.test.masks[i], m)
    assert ds.mean == (0.485, 0.456, 0.406) and ds.info["boxes"]["boxes"] == 6
    assert ds.train.masks is None and ds.train.boxes is None


def test_lazy_equals_eager_and_indexes_like_a_tensor(folder):
    eager = build(folder, boxes_dir="boxes", lazy=False)
    lazy = build(folder, boxes_dir="boxes", lazy=True, workers=2)
    li = lazy.train.images
    assert isinstance(li, LazyImages) and isinstance(lazy.test.masks, BoxMasks)
    assert li.shape == (9, 3, 32, 32) and len(li) == 9 and li.dtype == torch.uint8
    ref = eager.train.images
    assert torch.equal(li[:], ref) and torch.equal(li.materialize(), ref)
    assert torch.equal(li[3], ref[3]) and torch.equal(li[-1], ref[-1])
    assert torch.equal(li[torch.tensor([5, 0, 5])], ref[[5, 0, 5]])
    assert torch.equal(li[np.array([2, 1])], ref[[2, 1]]) and torch.equal(li[[4]], ref[[4]])
    mask = torch.zeros(9, dtype=torch.bool)
    mask[[1, 7]] = True
    assert torch.equal(li[mask], ref[mask]) and torch.equal(li[2:8:3], ref[2:8:3])
    view = li.select([8, 2])
    assert isinstance(view, LazyImages) and torch.equal(view[:], ref[[8, 2]])
    sub = lazy.test.subset(torch.tensor([4, 1]))
    assert isinstance(sub.images, LazyImages) and isinstance(sub.masks, BoxMasks)
    assert torch.equal(sub.images[:], eager.test.images[[4, 1]])
    assert torch.equal(sub.masks[:], eager.test.masks[[4, 1]])
    assert torch.equal(lazy.test.masks[2], eager.test.masks[2])
    assert torch.equal(lazy.test.boxes, eager.test.boxes)
    with pytest.raises(IndexError):
        li[9]
    with pytest.raises(TypeError, match="indexes images only"):
        li[0, 1]


def test_iter_batches_prefetch_matches_indexing(folder):
    lazy = build(folder, lazy=True)
    batches = [torch.tensor([3, 1]), torch.tensor([0, 8]), torch.tensor([5, 6]), torch.tensor([2])]
    got = list(iter_batches(lazy.train.images, batches, torch.device("cpu"), prefetch=2))
    ref = lazy.train.images[:]
    assert len(got) == 4 and all(torch.equal(g, ref[b]) for g, b in zip(got, batches, strict=True))
    it = iter_batches(lazy.train.images, batches, torch.device("cpu"))
    next(it)
    it.close()  # stopping early shuts the prefetch thread down


def test_disk_cache_reused_without_decoding(folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    a = build(folder, lazy=True, cache_dir=str(cache))
    files = a.train.images.files
    assert files.cache_path is not None and files.cache_path.parent == cache
    assert not files.cached().any()
    first = a.train.images[:]
    assert files.cached()[a.train.images.index].all()
    b = build(folder, lazy=True, cache_dir=str(cache))  # same files + geometry → same cache file
    assert b.train.images.files.cache_path == files.cache_path

    def no_decoding(path):
        raise AssertionError(f"decoded {path} despite the cache")

    monkeypatch.setattr(images_mod, "_open_rgb", no_decoding)
    assert torch.equal(b.train.images[:], first)
    with pytest.raises(AssertionError, match="despite the cache"):  # the guard is live
        LazyImages(ImageFiles(files.paths, files.geometry, 0))[0]
    assert len(list(cache.glob("images-*.u8"))) == 2  # train (with val) and test file lists
    c = build(folder, lazy=True, cache_dir=str(cache), image_size=24)  # other geometry
    assert c.train.images.files.cache_path != files.cache_path


def test_lazy_training_is_bit_identical_to_in_memory(folder):
    def cell(lazy):
        return load_config(
            CellConfig,
            {
                "data": {"name": "imagefolder", "root": str(folder), "val_size": 3,
                         "image_size": 32, "lazy": lazy},
                "model": {"name": "small_resnet", "width": 4},
                "train": {"epochs": 2, "batch_size": 4, "device": "cpu"},
                "augment": [{"name": "cutmix"}],
            },
        )  # fmt: skip

    a = train_cell(cell(False)).record
    b = train_cell(cell(True)).record
    assert a["batch_order_sha256"] == b["batch_order_sha256"]
    assert a["history"][-1]["train_loss"] == b["history"][-1]["train_loss"]
    assert a["test"] == b["test"]
    ma, mb = train_cell(cell(False)).model, train_cell(cell(True)).model
    for (k, x), y in zip(ma.state_dict().items(), mb.state_dict().values(), strict=True):
        assert torch.equal(x, y), k


def test_options_val_dir_classes_max_per_class_and_train_stats(folder, tmp_path):
    ds = build(folder, val_dir="val", test_dir="val", classes=[CLASSES[2], CLASSES[0]],
               max_per_class=3, normalization="train")  # fmt: skip
    assert ds.class_names == [CLASSES[2], CLASSES[0]]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (6, 4, 4)
    assert ds.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    x = ds.train.images.double() / 255
    np.testing.assert_allclose(ds.mean, x.mean(dim=(0, 2, 3)).numpy(), atol=1e-12)
    sq = build(folder, crop=False, image_size=20, val_size=0.34)
    assert sq.image_size == (20, 20) and len(sq.val) == 4


def test_cli_run_and_train_on_folder(folder, tmp_path):
    exp = {
        "name": "folder",
        "data": {"name": "imagefolder", "root": str(folder), "val_size": 3, "image_size": 32,
                 "boxes_dir": "boxes", "lazy": True},
        "model": {"name": "small_resnet", "width": 8},
        "train": {"epochs": 1, "batch_size": 4},
        "seeds": [0],
        "variants": {"baseline": [], "cutmix": [{"name": "cutmix"}]},
        "explain": {"methods": ["gradcam", "iba"], "estimator_images": 6,
                    "params": {"iba": {"steps": 2, "batch_noise": 2}}},
        "evaluate": {"n_images": 4, "n_steps": 4, "n_random": 2},
        "analysis": {"n_boot": 100},
    }  # fmt: skip
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    rec = json.loads((out / "cells" / "baseline" / "seed0" / "record.json").read_text())
    assert rec["dataset"]["name"] == "imagefolder"
    assert rec["dataset"]["class_names"] == list(CLASSES)
    assert rec["dataset"]["info"]["sizes"] == {"train": 9, "val": 3, "test": 6}
    assert (out / "explanations" / "gradcam" / "baseline" / "seed0.safetensors").is_file()
    assert rec["dataset"]["info"]["lazy"] is True
    # Study B on lazy data with boxes: alignment against the boxes, IBA, dissection skipped
    interp = pd.read_parquet(out / "tables" / "interpretability.parquet")
    align = interp[interp.metric == "energy_pointing_game"]
    models = align[align.method != "random"]
    assert set(models.method) == {"gradcam", "iba"} and len(models) == 2 * 2 * 6
    # the chance level is scored on the baseline's images the models are scored on
    rand = align[align.method == "random"]
    assert set(rand.variant) == {"baseline"}
    assert set(rand.image_id) <= set(models[models.variant == "baseline"].image_id)
    html = (out / "report" / "index.html").read_text()
    assert "has no concept labels" in html and "CAM gallery" in html
    # lazy data through `auglens train`
    args = ["train", "--dataset", "imagefolder", "--out", str(tmp_path / "t"), "--quiet",
            "--set", f"data.root={folder}", "--set", "data.val_size=3", "--set",
            "data.image_size=32", "--set", "data.lazy=true", "--set", "model.width=4",
            "--set", "train.epochs=1", "--set", "train.batch_size=4"]  # fmt: skip
    assert main(args) == 0
    rec = json.loads((tmp_path / "t" / "record.json").read_text())
    assert rec["dataset"]["info"]["lazy"] is True and len(rec["history"]) == 1


# ----------------------------------------------------------------------------- bad input


def test_missing_and_wrong_layout(tmp_path):
    with pytest.raises(AuglensError, match=r"imagefolder: data not found: .*nope does not exist; "
                                           r"expected <root>/train/<class>/<image>"):
        build(tmp_path / "nope")
    with pytest.raises(AuglensError, match=r"data not found: .*nope does not exist"):
        check_source("imagefolder", {"root": str(tmp_path / "nope")})
    (tmp_path / "a" / "train" / "cat").mkdir(parents=True)
    with pytest.raises(AuglensError, match=r"evaluation \(test_dir\) folder not found: .*a/val"):
        build(tmp_path / "a")
    (tmp_path / "a" / "val").mkdir()
    Image.fromarray(noise(10, 10, 0)).save(tmp_path / "a" / "val" / "ILSVRC2012_val_1.JPEG")
    Image.fromarray(noise(10, 10, 0)).save(tmp_path / "a" / "train" / "cat" / "c.JPEG")
    with pytest.raises(AuglensError, match=r"a/val has no class folders \(it holds 1 images "
                                           r"directly: sort them into one folder per class"):
        build(tmp_path / "a")
    (tmp_path / "a" / "train" / "dog").mkdir()
    with pytest.raises(AuglensError, match=r"class folder .*train/dog holds no images"):
        build(tmp_path / "a")
    with pytest.raises(AuglensError, match=r"boxes folder not found: .*a/bx"):
        check_source("imagefolder", {"root": str(tmp_path / "a"), "boxes_dir": "bx"})


def test_class_count_mismatch_between_splits(folder, tmp_path):
    import shutil

    root = tmp_path / "r"
    shutil.copytree(folder, root)
    (root / "val" / "n09999999").mkdir()
    Image.fromarray(noise(10, 10, 0)).save(root / "val" / "n09999999" / "x.JPEG")
    with pytest.raises(AuglensError, match=r"val/n09999999 is not a training class \(the training "
                                           r"folder has 3 classes.*class-count mismatch"):
        build(root)


def corrupt_copy(folder: Path, tmp_path: Path) -> tuple[Path, Path]:
    import shutil

    root = tmp_path / "r"
    shutil.copytree(folder, root)
    bad = root / "train" / CLASSES[1] / f"{CLASSES[1]}_2.JPEG"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    return root, bad


def test_corrupt_image_error_and_skip(folder, tmp_path):
    root, bad = corrupt_copy(folder, tmp_path)
    with pytest.raises(AuglensError, match=rf"corrupt image {bad}"):
        build(root)
    for lazy in (False, True):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            ds = build(root, skip_corrupt=True, lazy=lazy)
        msgs = [str(x.message) for x in w if "corrupt" in str(x.message)]
        assert len(msgs) == 1 and "skipped 1 corrupt" in msgs[0] and str(bad) in msgs[0]
        n = len(ds.train) + len(ds.val)
        assert n == 11 and sum(ds.info["skipped_corrupt"].values()) == 1
        assert ds.info["corrupt_files"] == [str(bad)]
        imgs = ds.train.images[:] if lazy else ds.train.images
        assert imgs.shape[0] == len(ds.train) == len(ds.train.labels)
    # lazy without skip: the error comes when the image is first decoded, naming the file
    ds = build(root, lazy=True)
    with pytest.raises(AuglensError, match=rf"corrupt image {bad}"):
        ds.train.images[:]
        ds.val.images[:]


def test_missing_boxes_policies(folder, tmp_path):
    import shutil

    root = tmp_path / "r"
    shutil.copytree(folder, root)
    gone = root / "boxes" / f"{CLASSES[2]}_1.xml"
    gone.unlink()
    no_size = voc_xml(0, 0, [("n00", (1, 1, 5, 5))], size=False)  # no <size>: the image's own
    (root / "boxes" / f"{CLASSES[0]}_0.xml").write_text(no_size)
    with pytest.raises(AuglensError, match=r"2 of 6 evaluation images have no usable box, e.g. "
                                           r".*n01440764_0.JPEG \(no box of class 'n01440764'"):
        build(root, boxes_dir="boxes")
    d = build(root, boxes_dir="boxes", no_box="drop")
    assert len(d.test) == 4 and d.info["boxes"]["dropped"] == 2 and d.test.masks.shape[0] == 4
    assert d.test.labels.tolist() == [0, 1, 1, 2]
    k = build(root, boxes_dir="boxes", no_box="keep")
    assert len(k.test) == 6 and int(k.test.masks[0].sum()) == 0 and k.test.masks[1].any()


def test_bad_parameters(folder):
    with pytest.raises(AuglensError, match="resize_size must be an integer >= image_size"):
        build(folder, resize_size=16)
    with pytest.raises(AuglensError, match="no_box must be error, drop or keep"):
        build(folder, no_box="ignore")
    with pytest.raises(AuglensError, match="val_size gives 12 validation images, need 1 to 11"):
        build(folder, val_size=12)
    with pytest.raises(AuglensError, match="class folder .*train/n0 not found"):
        build(folder, classes=["n0"])


def test_paper_b_preset_valid_and_clear_error_without_data(tmp_path, monkeypatch):
    raw = yaml.safe_load((PRESETS / "paper-b.yaml").read_text())
    exp = load_config(ExperimentConfig, raw, source="paper-b")
    assert exp.data.name == "imagefolder" and exp.model.name == "resnet50"
    assert exp.train.milestones == [75, 150, 225] and exp.train.batch_size == 256
    assert set(exp.variants) == {
        "baseline", "cutout", "mixup", "mixup_no_label_mixing", "cutmix",
        "cutmix_no_label_mixing", "saliencymix", "saliencymix_no_label_mixing",
    }  # fmt: skip
    assert exp.variants["cutmix_no_label_mixing"] == [
        {"name": "random_resized_crop"}, {"name": "hflip"},
        {"name": "cutmix", "label_mixing": False}]
    assert all(spec[:2] == [{"name": "random_resized_crop"}, {"name": "hflip"}]
               for spec in exp.variants.values())  # ImageNet's crop + flip in every variant
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AuglensError, match=r"imagefolder: data not found: data/imagenet does not "
                                           r"exist; expected <root>/train/<class>/<image> and "
                                           r"<root>/val/<class>/<image>"):
        check_source(exp.data.name, exp.data.params())
    assert main(["run", str(PRESETS / "paper-b.yaml"), "--out", str(tmp_path / "r"),
                 "--quiet"]) == 2


def test_image_files_pickle_roundtrip(folder):
    import pickle

    files = ImageFiles(sorted((folder / "val" / CLASSES[0]).iterdir()), Geometry(16, 16))
    clone = pickle.loads(pickle.dumps(files))
    assert torch.equal(clone.load_many([0, 1]), files.load_many([0, 1]))
