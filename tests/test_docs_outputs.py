"""The snippets of docs/outputs.md ("Reading results without auglens") run as written on a real
run directory and give the numbers auglens' own tables hold."""

import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from auglens.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "outputs.md"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("docs")
    exp = {"name": "docs", "data": {"name": "shapes", "n_train": 96, "n_val": 32, "n_test": 16},
           "model": {"name": "fast_resnet", "width": 8}, "train": {"epochs": 1, "batch_size": 32},
           "seeds": [0, 1], "variants": {"baseline": [], "affine": [{"name": "affine"}]},
           "evaluate": {"n_images": 4, "n_steps": 4, "n_random": 2},
           "dissect": {"enabled": False}, "analysis": {"n_boot": 100}}
    (d / "exp.yaml").write_text(yaml.safe_dump(exp))
    assert main(["run", str(d / "exp.yaml"), "--out", str(d / "run"), "--quiet",
                 "--workers", "1"]) == 0
    return d / "run"


def _blocks():
    text = DOC.read_text()
    section = text[text.index("## Reading results without auglens"):text.index("## Tables")]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.mark.parametrize("i", range(3))
def test_snippet_runs(run, i, capsys):
    code = _blocks()[i]
    if "duckdb" in code:
        pytest.importorskip("duckdb", reason="duckdb is not an auglens dependency")
    exec(compile(code.replace("RUN/", f"{run}/"), f"outputs.md block {i}", "exec"), {})
    out = capsys.readouterr().out
    assert out.strip()
    if "read_parquet('" in code:  # duckdb: the same means as pandas over the per-cell files
        ev = pd.concat(pd.read_parquet(f) for f in run.glob("evaluation/*/*/seed*[0-9].parquet"))
        want = ev[ev.metric == "energy_pointing_game"].groupby(["method", "variant", "seed"])
        assert f"{want.value.mean().iloc[0]:.6f}"[:6] in out.replace(" ", "")
