"""CIFAR-10/100 loaders on tiny fixtures written in the official python-pickle format."""

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from auglens.cli import main
from auglens.config import ExperimentConfig, load_config
from auglens.data import DATASETS, check_source
from auglens.data import cifar as cifar_mod
from auglens.data.cifar import read_batch, stratified_order
from auglens.errors import AuglensError

NAMES10 = "airplane automobile bird cat deer dog frog horse ship truck".split()
PRESETS = Path(__file__).resolve().parents[1] / "src" / "auglens" / "presets"


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path, per_batch: int = 20, n_test: int = 30, seed: int = 0) -> dict:
    """Official layout: cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for i in range(1, 6):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in np.arange(per_batch) % 10]  # balanced: 2 per class per batch
        _dump(
            d / f"data_batch_{i}",
            {
                b"batch_label": f"training batch {i} of 5".encode(),
                b"labels": labels,
                b"data": data,
                b"filenames": [f"img_{i}_{j}.png".encode() for j in range(per_batch)],
            },
        )
        xs.append(data)
        ys += labels
    test = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    test_y = [int(v) for v in rng.integers(0, 10, n_test)]
    _dump(
        d / "test_batch",
        {b"batch_label": b"testing batch 1 of 1", b"labels": test_y, b"data": test,
         b"filenames": [b"t.png"] * n_test},
    )  # fmt: skip
    _dump(
        d / "batches.meta",
        {b"label_names": [n.encode() for n in NAMES10], b"num_cases_per_batch": per_batch,
         b"num_vis": 3072},
    )  # fmt: skip
    return {"train_x": np.concatenate(xs), "train_y": np.asarray(ys), "test_x": test,
            "test_y": np.asarray(test_y)}  # fmt: skip


def write_cifar100(root: Path, n_train: int = 60, n_test: int = 20) -> dict:
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    rng = np.random.default_rng(1)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        fine = [int(v) for v in np.arange(n) % 100]
        coarse = [f // 5 for f in fine]
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        _dump(
            d / split,
            {b"filenames": [b"f.png"] * n, b"batch_label": f"{split} batch".encode(),
             b"fine_labels": fine, b"coarse_labels": coarse, b"data": data},
        )  # fmt: skip
        out[split] = (data, np.asarray(fine), np.asarray(coarse))
    _dump(
        d / "meta",
        {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
         b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]},
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def c10(tmp_path_factory):
    root = tmp_path_factory.mktemp("c10")
    return root, write_cifar10(root)


def test_cifar10_images_labels_and_split(c10):
    root, ref = c10
    ds = DATASETS.get("cifar10")(root=str(root), val_size=10)
    assert ds.class_names == NAMES10 and ds.num_classes == 10
    assert (len(ds.train), len(ds.val), len(ds.test)) == (90, 10, 30)
    for s in (ds.train, ds.val, ds.test):
        assert s.images.dtype == torch.uint8 and s.labels.dtype == torch.int64
        assert s.masks is None and s.boxes is None and s.concepts is None
    assert ds.image_size == (32, 32)
    # test split = the test batch, pixel layout: 1024 R then G then B values, row-major 32x32
    assert torch.equal(ds.test.images, torch.from_numpy(ref["test_x"]).view(30, 3, 32, 32))
    x = ref["test_x"][7]
    assert ds.test.images[7, 1, 2, 5].item() == x[1024 + 2 * 32 + 5]
    assert ds.test.labels.tolist() == ref["test_y"].tolist()
    # val is stratified: 10 images, one per class; train + val = the 100 training images
    assert sorted(ds.val.labels.tolist()) == list(range(10))
    both = torch.cat([ds.train.images, ds.val.images]).view(100, -1).numpy()
    assert sorted(map(bytes, both)) == sorted(map(bytes, ref["train_x"]))
    # every image keeps its own label
    lookup = {bytes(row): y for row, y in zip(ref["train_x"], ref["train_y"], strict=True)}
    got = [lookup[bytes(r)] for r in ds.train.images.view(90, -1).numpy()]
    assert got == ds.train.labels.tolist()


def test_split_deterministic_and_seeded(c10):
    root, _ = c10
    a = DATASETS.get("cifar10")(root=str(root), val_size=20)
    b = DATASETS.get("cifar10")(root=str(root), val_size=20)
    c = DATASETS.get("cifar10")(root=str(root), val_size=20, split_seed=1)
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.train.images, b.train.images)
    assert not torch.equal(a.val.images, c.val.images)
    assert np.bincount(a.val.labels.numpy(), minlength=10).tolist() == [2] * 10
    small = DATASETS.get("cifar10")(root=str(root), val_size=20, train_size=30)
    assert len(small.train) == 30 and torch.equal(small.val.images, a.val.images)
    assert np.bincount(small.train.labels.numpy(), minlength=10).tolist() == [3] * 10


def test_stratified_order_prefixes_are_balanced():
    labels = np.repeat(np.arange(4), [5, 3, 6, 2])
    order = stratified_order(labels, 0)
    assert sorted(order.tolist()) == list(range(16))
    first = labels[order[:8]]  # two rounds: each class twice
    assert np.bincount(first, minlength=4).tolist() == [2, 2, 2, 2]
    assert labels[order[:4]].tolist() == [0, 1, 2, 3]  # within a round, classes in order


def test_mean_std_train_exact_and_standard(c10):
    root, _ = c10
    ds = DATASETS.get("cifar10")(root=str(root), val_size=10)
    x = ds.train.images.double() / 255
    mean = x.mean(dim=(0, 2, 3))
    std = x.permute(1, 0, 2, 3).reshape(3, -1).std(dim=1, unbiased=False)
    np.testing.assert_allclose(ds.mean, mean.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(ds.std, std.numpy(), rtol=0, atol=1e-12)
    st = DATASETS.get("cifar10")(root=str(root), val_size=10, normalization="standard")
    assert st.mean == (0.4914, 0.4822, 0.4465) and st.std == (0.2470, 0.2435, 0.2616)


def test_root_may_be_the_inner_folder(c10):
    root, ref = c10
    ds = DATASETS.get("cifar10")(root=str(root / "cifar-10-batches-py"), val_size=10)
    assert torch.equal(ds.test.images.view(30, -1), torch.from_numpy(ref["test_x"]))


def test_cifar100_fine_and_coarse(tmp_path):
    ref = write_cifar100(tmp_path)
    ds = DATASETS.get("cifar100")(root=str(tmp_path), val_size=5)
    assert ds.num_classes == 100 and ds.class_names[3] == "fine3"
    assert ds.test.labels.tolist() == ref["test"][1].tolist()
    assert torch.equal(ds.test.images.view(20, -1), torch.from_numpy(ref["test"][0]))
    co = DATASETS.get("cifar100")(root=str(tmp_path), val_size=5, label_type="coarse")
    assert co.num_classes == 20 and co.test.labels.tolist() == ref["test"][2].tolist()
    with pytest.raises(AuglensError, match="label_type must be 'fine' or 'coarse'"):
        DATASETS.get("cifar100")(root=str(tmp_path), label_type="medium")


def test_python2_era_numpy_pickle_is_read(tmp_path):
    arr = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    blob = pickle.dumps({b"data": arr, b"labels": [1, 2]}, protocol=2)
    assert b"numpy._core.multiarray" in blob or b"numpy.core.multiarray" in blob
    old = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    (tmp_path / "b").write_bytes(old)
    b = read_batch(tmp_path / "b")
    assert set(b) == {"data", "labels"} and np.array_equal(b["data"], arr)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.mkdir, (self.marker,))


def test_unsafe_pickle_in_a_cifar_file_is_refused_and_not_run(tmp_path):
    root = tmp_path / "c"
    write_cifar10(root)
    marker = tmp_path / "pwned"
    _dump(root / "cifar-10-batches-py" / "data_batch_2", {b"data": _Payload(str(marker))})
    with pytest.raises(AuglensError, match=r"cannot read CIFAR file .*data_batch_2 safely: "
                                           r"refusing to load global 'posix.mkdir'"):
        DATASETS.get("cifar10")(root=str(root), val_size=10)
    assert not marker.exists()


@pytest.mark.parametrize(
    "damage, pattern",
    [
        ("missing", r"data not found: .*data_batch_3 is missing; expected <root>/cifar-10-batches"
                    r"-py/ with data_batch_1 … data_batch_5, test_batch, batches.meta"),
        ("truncated", r"corrupt CIFAR file .*data_batch_3"),
        ("labels", r"CIFAR file .*data_batch_3: labels in \[0, 12\] but the meta file names 10 "
                   r"classes \(class-count mismatch\)"),
        ("shape", r"CIFAR file .*data_batch_3: 'data' must be uint8 \(N, 3072\), got uint8 "
                  r"\(20, 1024\)"),
        ("count", r"data_batch_3: 20 images but 19 labels"),
        ("key", r"data_batch_3 has no 'labels' entry \(keys: batch_label, data, fine_labels\)"),
    ],
)
def test_bad_files_name_the_file_and_problem(tmp_path, damage, pattern):
    root = tmp_path / "c"
    write_cifar10(root)
    p = root / "cifar-10-batches-py" / "data_batch_3"
    b = read_batch(p)
    if damage == "missing":
        p.unlink()
    elif damage == "truncated":
        p.write_bytes(p.read_bytes()[:500])
    elif damage == "labels":
        _dump(p, {b"data": b["data"], b"labels": [12] + b["labels"][1:]})
    elif damage == "shape":
        _dump(p, {b"data": b["data"][:, :1024].copy(), b"labels": b["labels"]})
    elif damage == "count":
        _dump(p, {b"data": b["data"], b"labels": b["labels"][:-1]})
    elif damage == "key":
        _dump(p, {b"data": b["data"], b"fine_labels": b["labels"], b"batch_label": b"x"})
    with pytest.raises(AuglensError, match=pattern):
        DATASETS.get("cifar10")(root=str(root), val_size=10)


def test_missing_root_message_and_check_source(tmp_path):
    where = tmp_path / "nowhere"
    msg = (r"cifar10: data not found: .*nowhere/cifar-10-batches-py/data_batch_1 is missing "
           r"\(and 6 more files\); expected .* under root=.*nowhere\. Extract the official "
           r"archive there, or set data.download=true")
    with pytest.raises(AuglensError, match=msg):
        DATASETS.get("cifar10")(root=str(where))
    with pytest.raises(AuglensError, match=msg):
        check_source("cifar10", {"root": str(where)})
    with pytest.raises(AuglensError, match="cifar100: data not found: .*cifar-100-python/train"):
        check_source("cifar100", {"root": str(where)})
    check_source("cifar10", {"root": str(where), "download": True})  # would download: no error


def test_download_only_when_asked_and_missing(tmp_path, monkeypatch):
    calls = []

    def fake_download(name, root):  # stands in for torchvision's downloader (no network here)
        calls.append((name, root))
        write_cifar10(root)

    monkeypatch.setattr(cifar_mod, "_download", fake_download)
    root = tmp_path / "dl"
    ds = DATASETS.get("cifar10")(root=str(root), val_size=10, download=True)
    assert calls == [("cifar10", root)] and len(ds.test) == 30
    DATASETS.get("cifar10")(root=str(root), val_size=10, download=True)  # present: no download
    assert len(calls) == 1


def test_cli_run_on_cifar10_fixture(c10, tmp_path, capsys):
    root, _ = c10
    exp = {
        "name": "c10",
        "data": {"name": "cifar10", "root": str(root), "val_size": 10},
        "model": {"name": "small_resnet", "width": 8},
        "train": {"epochs": 1, "batch_size": 30},
        "seeds": [0],
        "variants": {"baseline": [], "affine": [{"name": "affine"}]},
        "evaluate": {"n_images": 8, "n_steps": 4},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--quiet", "--set", "train.epochs=1"]) == 0
    rec = json.loads((out / "cells" / "baseline" / "seed0" / "record.json").read_text())
    assert rec["dataset"]["name"] == "cifar10" and rec["dataset"]["class_names"] == NAMES10
    assert rec["dataset"]["info"]["n_train"] == 90 and len(rec["history"]) == 1
    assert 0.0 <= rec["test"]["accuracy"] <= 1.0
    assert (out / "tables" / "similarity.parquet").is_file()
    # no masks/boxes/concepts: faithfulness runs, alignment and dissection say why they are absent
    interp = pd.read_parquet(out / "tables" / "interpretability.parquet")
    assert "delta_ins" in set(interp.metric) and "energy_pointing_game" not in set(interp.metric)
    html = (out / "report" / "index.html").read_text()
    assert "alignment was not computed: the dataset has no object masks or boxes" in html
    assert "has no concept labels" in html


def test_paper_a_preset_valid_and_clear_error_without_data(tmp_path, monkeypatch, capsys):
    raw = yaml.safe_load((PRESETS / "paper-a.yaml").read_text())
    exp = load_config(ExperimentConfig, raw, source="paper-a")
    assert exp.data.name == "cifar10" and exp.data.params()["root"] == "data/cifar10"
    assert exp.model.name == "efficientnet_b0" and exp.model.input_size == 224
    assert len(exp.seeds) == 3
    assert set(exp.variants) == {"baseline", "affine", "cutmix", "color_jitter", "elastic",
                                 "equalize", "gaussian_blur", "random_crop"}
    monkeypatch.chdir(tmp_path)  # no data/cifar10 here
    with pytest.raises(AuglensError, match=r"cifar10: data not found: data/cifar10/cifar-10-"):
        check_source(exp.data.name, exp.data.params())
    assert main(["run", str(PRESETS / "paper-a.yaml"), "--out", str(tmp_path / "r"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cifar10: data not found: data/cifar10/cifar-10-batches-py/data_batch_1" in err
    assert "Traceback" not in err
