import pytest

from auglens.config import CellConfig, ExperimentConfig, apply_overrides, load_config, read_yaml
from auglens.errors import AuglensError, ConfigError


def test_defaults_validate_and_hash_is_stable():
    a = load_config(CellConfig, {})
    b = load_config(CellConfig, {"train": {"epochs": 6}})
    assert a.content_hash() == b.content_hash()
    c = load_config(CellConfig, {}, ["train.epochs=2"])
    assert c.train.epochs == 2 and c.content_hash() != a.content_hash()


def test_set_parses_yaml_values_and_list_indices():
    raw = {"augment": [{"name": "affine"}]}
    out = apply_overrides(
        raw, ["augment.0.degrees=30", "train.milestones=[2, 4]", "train.amp=true"]
    )
    assert out["augment"][0]["degrees"] == 30
    assert out["train"] == {"milestones": [2, 4], "amp": True}
    cfg = load_config(CellConfig, {"augment": [{"name": "affine"}]}, ["augment.0.degrees=30"])
    assert cfg.augment[0]["degrees"] == 30


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("train.epochz=3", r"train\.epochz: unknown field; valid fields here: epochs, stop, "
                           r"max_epochs"),
        ("train.epochs=0", r"train\.epochs: Input should be greater than or equal to 1 \(got 0\)"),
        ("train.optimizer=lion", r"train\.optimizer: Input should be 'sgd' or 'adamw'"),
        ("train.device=tpu", r"device must be 'auto', 'cpu' or 'cuda\[:N\]'"),
        ("model.name=resnet19", r"unknown model .resnet19.*valid models: airbench, efficie"),
        ("model.depth=3", r"unknown parameter 'depth' for model 'small_resnet'; valid: "),
        ("data.name=nosuchdata", r"unknown dataset 'nosuchdata'; valid datasets: .*shapes"),
        ("data.image_sise=64", r"unknown parameter 'image_sise' for dataset 'shapes'"),
        ("augment.0.name=rotate", r"unknown augmentation 'rotate'.*valid augmentations: affine"),
        ("foo=1", r"foo: unknown field; valid fields here: data, model, train, augment, seed"),
        ("train", r"--set expects key=value"),
    ],
)
def test_bad_values_name_the_field(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(CellConfig, {}, [override], source="test")


def test_bad_augmentation_parameter_names_it():
    with pytest.raises(AuglensError, match="degress"):
        load_config(CellConfig, {"augment": [{"name": "affine", "degress": 3}]})


def test_experiment_grid_and_baseline_check():
    exp = load_config(
        ExperimentConfig,
        {"variants": {"baseline": [], "affine": [{"name": "affine"}]}, "seeds": [0, 1]},
    )
    cells = exp.cells()
    assert [(v, s) for v, s, _ in cells] == [
        ("baseline", 0),
        ("affine", 0),
        ("baseline", 1),
        ("affine", 1),
    ]
    assert cells[0][2].augment == [] and cells[1][2].augment == [{"name": "affine"}]
    with pytest.raises(ConfigError, match="baseline variant 'baseline' is not among variants: a"):
        load_config(ExperimentConfig, {"variants": {"a": []}})
    with pytest.raises(ConfigError, match="variant 'x'.*unknown augmentation 'blurr'"):
        load_config(ExperimentConfig, {"variants": {"baseline": [], "x": [{"name": "blurr"}]}})
    with pytest.raises(ConfigError, match="seeds must be"):
        load_config(ExperimentConfig, {"seeds": [1, 1]})


def test_read_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="experiment file not found"):
        read_yaml(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        read_yaml(tmp_path / "list.yaml")


def test_every_shipped_preset_is_a_valid_experiment():
    from auglens.cli import PRESETS, _preset_raw

    assert {"quick", "standard", "paper-a", "paper-b"} <= set(PRESETS)
    for name in PRESETS:
        exp = load_config(ExperimentConfig, _preset_raw(name), source=name)
        assert exp.name == name and exp.baseline in exp.variants
    quick = load_config(ExperimentConfig, _preset_raw("quick"))
    standard = load_config(ExperimentConfig, _preset_raw("standard"))
    # both are studies: >= 3 seeds, trained until converged; quick is a subset of standard
    assert quick.seeds == standard.seeds == [0, 1, 2]
    assert quick.train.stop == standard.train.stop == "converged"
    assert set(quick.variants) <= set(standard.variants)
    assert len(standard.variants) == 14  # baseline + 7 Study A + 6 Study B
    assert {"affine", "cutmix", "cutmix_hard"} <= set(quick.variants)


def test_a_variant_given_twice_is_refused_not_collapsed(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("variants:\n  baseline: []\n  affine: [{name: affine}]\n"
                    "  affine: [{name: cutmix}]\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'affine' \(first at line 3\).*"
                                          r"\(line 4, column 3\)") as e:
        read_yaml(path)
    assert "\n" not in str(e.value)


def test_the_readme_set_examples_work():
    """Defect (#13): the README's `--set augment.0.degrees=30` was refused by `auglens run`: the
    experiment's augmentations live under variants.<name>; a single cell's under augment."""
    exp = load_config(ExperimentConfig, {"variants": {"baseline": [], "affine": [
        {"name": "affine"}]}}, ["variants.affine.0.degrees=30", "seeds=[0,1]", "train.epochs=1"])
    assert exp.variants["affine"][0]["degrees"] == 30 and exp.seeds == [0, 1]
    cell = load_config(CellConfig, {"augment": [{"name": "affine"}]}, ["augment.0.degrees=30"])
    assert cell.augment[0]["degrees"] == 30


def test_the_readme_experiment_file_is_valid():
    import re
    from pathlib import Path

    import yaml

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", readme, re.S).group(1)
    exp = load_config(ExperimentConfig, yaml.safe_load(block))
    assert exp.train.stop == "converged" and len(exp.cells()) == 5 * 3
    assert exp.variants["cutmix_hard"] == [{"name": "cutmix", "p": 0.5, "label_mixing": False}]


def test_explainer_schema_equals_the_registry():
    """config validates against `auglens.schemas` without importing `auglens.explain`; the
    schema must say exactly what the registry accepts."""
    from auglens.explain import EXPLAINERS
    from auglens.schemas import EXPLAINER_SCHEMA

    assert EXPLAINER_SCHEMA.names() == EXPLAINERS.names()
    for name in EXPLAINER_SCHEMA.params:
        want = set(EXPLAINERS.describe(name)["params"]) - {"estimator"}
        assert set(EXPLAINER_SCHEMA.params[name]) == want, name
    assert sorted(EXPLAINER_SCHEMA.families) == sorted(EXPLAINERS.families())


def test_config_does_not_import_the_runtime_layers():
    import subprocess
    import sys

    code = ("import sys, auglens.config as c; c.load_config(c.ExperimentConfig, {'explain': "
            "{'methods': ['gradcam', 'iba'], 'params': {'iba': {'steps': 3}}}}); "
            "bad = [m for m in sys.modules if m.split('.')[:2] in (['auglens', x] for x in "
            "('explain', 'metrics', 'analysis', 'report', 'pipeline', 'cli'))]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
