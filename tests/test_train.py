import json

import pytest
import torch

from auglens.config import CellConfig, load_config
from auglens.models import weights_fingerprint
from auglens.train import batch_order, train_cell
from auglens.train.trainer import soft_cross_entropy

TINY = [
    "data.n_train=192",
    "data.n_val=64",
    "data.n_test=64",
    "model.width=8",
    "train.epochs=2",
    "train.batch_size=64",
    "train.threads=1",
]


def tiny(augment=None, seed=0, extra=()):
    return load_config(CellConfig, {"augment": augment or [], "seed": seed}, TINY + list(extra))


def test_same_cell_twice_gives_identical_weights(tmp_path):
    a = train_cell(tiny([{"name": "affine"}]), tmp_path / "a")
    b = train_cell(tiny([{"name": "affine"}]), tmp_path / "b")
    assert a.record["weights_sha256"] == b.record["weights_sha256"]
    sha = a.record["weights_sha256"]  # the in-memory fingerprint equals the file's sha256
    assert weights_fingerprint(a.model) == weights_fingerprint(b.model) == sha
    assert (tmp_path / "a" / "weights.safetensors").read_bytes() == (
        tmp_path / "b" / "weights.safetensors"
    ).read_bytes()


def test_augmentations_of_one_seed_share_init_and_batch_order(tmp_path):
    base = train_cell(tiny(), tmp_path / "base").record
    cut = train_cell(tiny([{"name": "cutmix", "p": 1.0}]), tmp_path / "cut").record
    other = train_cell(tiny(seed=1), tmp_path / "other").record
    assert base["init_sha256"] == cut["init_sha256"]
    assert base["batch_order_sha256"] == cut["batch_order_sha256"]
    assert base["weights_sha256"] != cut["weights_sha256"]
    assert other["init_sha256"] != base["init_sha256"]
    assert other["batch_order_sha256"] != base["batch_order_sha256"]


def test_batch_order_depends_only_on_seed_and_epoch():
    a = batch_order(100, 32, 0, 0)
    assert len(a) == 3 and all(len(b) == 32 for b in a)
    assert torch.equal(torch.cat(a), torch.cat(batch_order(100, 32, 0, 0)))
    assert not torch.equal(torch.cat(a), torch.cat(batch_order(100, 32, 0, 1)))
    assert len(set(torch.cat(a).tolist())) == 96  # no repeats within an epoch


def test_record_and_files(tmp_path):
    r = train_cell(tiny([{"name": "cutmix", "p": 1.0}]), tmp_path).record
    rec = json.loads((tmp_path / "record.json").read_text())
    assert rec["config_hash"] == r["config_hash"]
    assert len(rec["history"]) == 2
    for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        assert k in rec["history"][0]
    for k in ("accuracy", "precision", "recall", "f1", "per_class_accuracy"):
        assert k in rec["test"]
    assert len(rec["test"]["per_class_accuracy"]) == 10
    assert rec["software"]["torch"] == torch.__version__
    assert not list(tmp_path.glob(".*"))  # no temp files left
    import pandas as pd

    log = pd.read_parquet(tmp_path / "augment_log.parquet")
    assert len(log) == 2 * 192  # every sample of every step logged
    assert {"epoch", "step", "image_index", "lam", "box_0", "box_3"} <= set(log.columns)
    area = (log.box_2 - log.box_0) * (log.box_3 - log.box_1)
    assert ((1 - area / 32**2) - log.lam).abs().max() < 1e-6


def test_soft_cross_entropy_equals_mixed_ce():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 4, generator=g)
    ya, yb = torch.tensor([0, 1, 2, 3, 0, 1]), torch.tensor([1, 1, 0, 2, 3, 3])
    lam = torch.rand(6, generator=g)
    t = lam[:, None] * torch.eye(4)[ya] + (1 - lam[:, None]) * torch.eye(4)[yb]
    ref = (
        lam * torch.nn.functional.cross_entropy(z, ya, reduction="none")
        + (1 - lam) * torch.nn.functional.cross_entropy(z, yb, reduction="none")
    ).mean()
    assert torch.allclose(soft_cross_entropy(z, t), ref, atol=1e-6)


def test_stop_converged_keeps_the_best_epoch_and_checkpoints(tmp_path):
    r = train_cell(tiny(extra=["train.stop=converged", "train.max_epochs=4", "train.patience=1",
                               "train.lr_decays=0", "train.min_delta=0.5"]),
                   tmp_path, keep_checkpoints=True).record
    losses = [h["val_loss"] for h in r["history"]]
    # min_delta 0.5: no epoch counts as an improvement, so the first plateau (epoch 2) stops;
    # the weights kept are those of the lowest validation loss (the default monitor)
    assert r["epochs_trained"] == 2 and r["converged"] is True
    assert r["best_epoch"] == 1 + losses.index(min(losses))
    assert r["best_val_accuracy"] == r["history"][r["best_epoch"] - 1]["val_accuracy"]
    assert sorted(r["checkpoint_sha256"]) == ["1", "2"]
    from auglens.models.registry import file_sha256
    from auglens.rundir import CellFiles

    for e, sha in r["checkpoint_sha256"].items():
        assert file_sha256(CellFiles(tmp_path).checkpoint(int(e))) == sha
    assert r["weights_sha256"] == r["checkpoint_sha256"][str(r["best_epoch"])]


def test_bf16_channels_last_training_is_bit_identical_twice(tmp_path):
    """The bfloat16 autocast path (chosen automatically on CUDA and on CPUs with native bf16;
    forced here) gives the same bytes when run twice."""
    cfg = tiny(extra=["train.precision=bf16", "train.epochs=1", "data.n_train=128"])
    a = train_cell(cfg, tmp_path / "a").record
    b = train_cell(cfg, tmp_path / "b").record
    assert a["precision"] == "bf16"
    assert a["weights_sha256"] == b["weights_sha256"]
    fp32 = train_cell(tiny(extra=["train.precision=fp32", "train.epochs=1", "data.n_train=128"]),
                      tmp_path / "c").record
    assert fp32["weights_sha256"] != a["weights_sha256"]


def test_unwritable_output_dir_errors(tmp_path):
    from auglens.errors import AuglensError
    from auglens.utils import check_writable_dir

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(AuglensError, match="not writable"):
        check_writable_dir(blocker / "sub")


def test_augmix_jsd_trains_on_three_views_with_the_consistency_loss(tmp_path):
    """With ``jsd: true`` every step forwards clean + two AugMix views in one batch and adds
    the Jensen–Shannon term: the recorded first-epoch loss equals that loss computed by hand at
    the initial weights (learning rate ~0, so the weights do not move)."""
    import torch.nn.functional as F

    from auglens.augment import build_augmentation, jsd_consistency_loss
    from auglens.data import load_dataset
    from auglens.models import build_model
    from auglens.utils import derive_seed, make_generator

    spec = [{"name": "augmix", "jsd": True, "severity": 1, "mixture_width": 2}]
    cfg = tiny(spec, extra=["train.epochs=1", "train.lr=1e-12", "data.n_train=128",
                            "train.precision=fp32"])
    rec = train_cell(cfg, tmp_path).record
    data = load_dataset(cfg)
    torch.manual_seed(derive_seed(0, "init"))
    model = build_model("small_resnet", 10, width=8).train()
    aug = build_augmentation(spec)
    aug.set_dataset_stats(data.mean, data.std)
    gen = make_generator(0, "augment")
    losses = []
    with torch.no_grad():
        for idx in batch_order(128, 64, 0, 0):
            x = data.train.images[idx].float() / 255
            y = F.one_hot(data.train.labels[idx], 10).float()
            clean, y, (a1, a2), _ = aug.views(x, y, gen)
            z = model(data.normalize(torch.cat([clean, a1, a2])))
            zc, z1, z2 = z.split(64)
            losses.append(float(soft_cross_entropy(zc, y) + jsd_consistency_loss(zc, z1, z2)))
    assert rec["history"][0]["train_loss"] == pytest.approx(sum(losses) / 2, rel=1e-4)
    import pandas as pd

    log = pd.read_parquet(tmp_path / "augment_log.parquet")
    assert any(c.startswith("view1.") for c in log.columns)
    assert any(c.startswith("view2.") for c in log.columns)


def test_feeding_workers_change_neither_weights_nor_key(tmp_path):
    """The DataLoader feeder (worker processes) gives the trainer the same batches: identical
    weights, and the scheduling-only setting is not part of the cell's key."""
    a = train_cell(tiny(extra=["train.epochs=1"]), tmp_path / "a").record
    b = train_cell(tiny(extra=["train.epochs=1", "train.loader_workers=2"]), tmp_path / "b").record
    assert a["weights_sha256"] == b["weights_sha256"] and a["key"] == b["key"]
    assert "workers" in b["feeding"] and a["batch_order_sha256"] == b["batch_order_sha256"]


def test_airbench_cell_fits_its_whitening_from_the_training_images(tmp_path):
    from auglens.data import load_dataset
    from auglens.models import build_model, init_from_data

    cfg = load_config(CellConfig, {"model": {"name": "airbench", "width": 0.125}},
                      [t for t in TINY if not t.startswith("model.")] + ["train.epochs=1"])
    rec = train_cell(cfg, tmp_path).record
    torch.manual_seed(0)
    m = build_model("airbench", 10, width=0.125)
    data = load_dataset(cfg)
    assert init_from_data(m, data.train.images, data.normalize)
    from safetensors.torch import load_file

    trained = load_file(str(tmp_path / "weights.safetensors"))
    whiten = [k for k in trained if "whiten" in k and k.endswith("weight")]
    assert whiten and torch.equal(trained[whiten[0]], m.state_dict()[whiten[0]])  # frozen, fitted
    assert rec["epochs_trained"] == 1
