import json
import subprocess
import sys

import pytest

from auglens.cli import main

TINY = [
    "--set",
    "data.n_train=128",
    "--set",
    "data.n_val=32",
    "--set",
    "data.n_test=32",
    "--set",
    "model.width=8",
    "--set",
    "train.epochs=1",
    "--set",
    "train.batch_size=64",
]


def test_list_shows_registries_and_params(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in (
        "shapes",
        "small_resnet",
        "resnet50",
        "efficientnet_b0",
        "affine",
        "cutmix",
        "color_jitter",
        "elastic",
        "equalize",
        "gaussian_blur",
        "random_crop",
        "none",
    ):
        assert name in out
    assert "degrees=" in out


def test_train_one_cell(tmp_path, capsys):
    assert (
        main(
            [
                "train",
                "--augment",
                "affine+random_crop",
                "--seed",
                "3",
                "--out",
                str(tmp_path),
                *TINY,
            ]
        )
        == 0
    )
    rec = json.loads((tmp_path / "record.json").read_text())
    assert rec["config"]["seed"] == 3
    assert [a["name"] for a in rec["config"]["augment"]] == ["affine", "random_crop"]
    assert "test accuracy" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--augment", "blur"], "unknown augmentation 'blur'.*valid augmentations: affine"),
        (["--model", "vgg"], "unknown model 'vgg'.*valid models:"),
        (["--set", "train.epochs=-1"], "train.epochs: Input should be greater than or equal to 1"),
        (["--set", "train.bogus=1"], "train.bogus: unknown field"),
    ],
)
def test_train_bad_input_exits_2_with_message(tmp_path, capsys, args, pattern):
    import re

    assert main(["train", "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("auglens: error:") and re.search(pattern, err), err
    assert not (tmp_path / "o" / "record.json").exists()


def test_console_script_exit_code(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "auglens.cli", "train", "--augment", "nope", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert "unknown augmentation 'nope'" in r.stderr
    assert "Traceback" not in r.stderr
