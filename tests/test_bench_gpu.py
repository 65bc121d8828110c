"""benchmarks/bench_gpu.py --smoke on the CPU: every section runs and lands in the markdown."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # dataclasses look their module up
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCH))


def test_report_is_written_after_every_row(tmp_path: Path) -> None:
    common = load("_gpu_common")
    out = tmp_path / "r.md"
    rep = common.Report(out, ["# head"])
    rep.open("a", "Section A", ["intro"], ["x", "y"])
    assert "Status: running." in out.read_text()
    rep.row("a", [1, "2"])
    assert "| 1 | 2 |" in out.read_text()  # a kill now keeps this row
    rep.status("a", "done")
    assert "Status: done." in out.read_text()
    assert common.ideal_cells(100.0, 2e9, 1.0) == ["2.00", "500", "20 %"]
    assert common.ideal_cells(100.0, None, 1.0) == ["n/a"] * 3


@pytest.mark.smoke
def test_smoke_writes_every_section(tmp_path: Path) -> None:
    bench = load("bench_gpu")
    torch.set_num_threads(1)  # code paths, not speed: no thread spinning on a shared machine
    out = tmp_path / "gpu.md"
    assert bench.main(["--smoke", "--device", "cpu", "--out", str(out)]) == 0
    text = out.read_text()
    sections = re.split(r"\n## ", text)[1:]
    titles = ["Training throughput", "Feeding from a JPEG folder", "Explaining and scoring",
              "paper-a with airbench"]
    assert [s.split("\n")[0].split(" (")[0][: len(t)] for s, t in zip(sections, titles,
                                                                        strict=True)] == titles
    for sec in sections:
        assert re.search(r"Status: done", sec), sec[:300]
        rows = [ln for ln in sec.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
        measured = [r for r in rows if re.match(r"\| [^|]+ \| [^|]* \| [0-9.]+", r)
                    or "%" in r]
        assert measured, sec[:300]
        assert "failed" not in sec, sec
    paper = sections[3]
    assert all(f"| {v} | " in paper for v in bench.STUDY_A)
    assert "SYNTHETIC" in paper and "8/8 cells" in paper
    assert "skipped: no CUDA device" in sections[1]
