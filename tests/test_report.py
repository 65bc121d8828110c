"""The HTML report of a tiny real run (+ synthetic Study B tables), checked in headless Chromium."""

import json
import shutil

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from auglens.analysis.inference import Settings  # noqa: E402
from auglens.analysis.run_a import analyse_study_a  # noqa: E402
from auglens.analysis.run_b import label_mixing_pairs, pair_differences  # noqa: E402
from auglens.config import ExperimentConfig, load_config  # noqa: E402
from auglens.explain.store import read_explanation  # noqa: E402
from auglens.pipeline import run_subset  # noqa: E402
from auglens.report import build_report  # noqa: E402
from auglens.report.html import Section, table_html, table_md  # noqa: E402
from auglens.rundir import RunDir  # noqa: E402

TINY = {
    "name": "tiny-report",
    "data": {"name": "shapes", "n_train": 128, "n_val": 32, "n_test": 40},
    "model": {"name": "small_resnet", "width": 4},
    "train": {"epochs": 1, "batch_size": 64, "threads": 1},
    "seeds": [0, 1],
    "variants": {
        "baseline": [],
        "cutmix": [{"name": "cutmix"}],
        "cutmix_hard": [{"name": "cutmix", "label_mixing": False}],
        "blur": [{"name": "gaussian_blur"}],
    },
    "sanity": {"n_images": 8},
}
SECTIONS = [
    "experiment", "performance", "study-a", "study-b", "sanity", "changed", "gallery"]
PER_IMAGE = ["energy_pointing_game", "effective_heat_ratio", "auc_deletion_morf",
             "auc_deletion_lerf", "auc_deletion_random", "auc_insertion_morf",
             "auc_insertion_lerf", "auc_insertion_random", "delta_del", "delta_ins",
             "lerf_morf_del", "lerf_morf_ins"]
STUDY_B_TABLES = ["interpretability", "summary_b", "alignment_counts", "curves", "dissection",
                  "dissection_summary", "label_mixing"]


def _write_iba(out, exp):
    """IBA-format explanation files (derived from the Grad-CAM maps: the report only reads them)."""
    for variant, seed, _ in exp.cells():
        t, meta = read_explanation(RunDir(out).explanation("gradcam", variant, seed))
        t = dict(t)
        t["maps"] = (t["maps"].float() ** 2 + 0.1).to(torch.float16).contiguous()
        path = RunDir(out).explanation("iba", variant, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(t, str(path), metadata=meta | {"method": "iba"})


def _write_study_b(out, exp):
    """Study B tables in the schema the pipeline writes, with one NaN mean."""
    rng = np.random.default_rng(0)
    variants, seeds, methods = list(exp.variants), exp.seeds, ["gradcam", "iba"]
    family = {"baseline": "none", "cutmix": "cutmix", "cutmix_hard": "cutmix", "blur": "blur"}
    mixing = {"cutmix": True, "cutmix_hard": False}
    rows = [{"image_id": i, "variant": v, "seed": s, "method": m, "metric": k,
             "value": float(rng.random())}
            for v in variants for s in seeds for m in methods for k in PER_IMAGE
            for i in range(5)]
    interp = pd.DataFrame(rows).astype({"image_id": "int64", "seed": "int64"})
    summ = []
    for (m, v, k), g in interp.groupby(["method", "variant", "metric"], sort=False):
        mean = float(g.value.mean())
        summ.append({"method": m, "variant": v, "metric": k, "mean": mean,
                     "ci_low": mean - 0.1, "ci_high": mean + 0.1, "n_images": 5, "n_nan": 0,
                     "family": family[v], "label_mixing": mixing.get(v)})
    summary = pd.DataFrame(summ)
    nan_row = (summary.variant == "blur") & (summary.method == "gradcam") & (
        summary.metric == "effective_heat_ratio")
    summary.loc[nan_row, ["mean", "ci_low", "ci_high"]] = np.nan
    summary.loc[nan_row, "n_nan"] = 5
    counts = pd.DataFrame([{"variant": v, "seed": s, "method": m, "n_images": 40,
                            "n_kept": int(rng.integers(10, 40))}
                           for v in variants for s in seeds for m in methods])
    curves = pd.DataFrame([{"variant": v, "seed": s, "method": m, "kind": kind, "order": o,
                            "step": st, "fraction": st / 8,
                            "score": float(np.exp(-st / (3 if o == "morf" else 6)))
                            if kind == "deletion" else float(1 - np.exp(-st / 3))}
                           for v in variants for s in seeds for m in methods
                           for kind in ("deletion", "insertion")
                           for o in ("morf", "lerf", "random") for st in range(9)])
    cats = ["object", "color", "texture"]
    diss = pd.DataFrame([{"variant": v, "seed": s, "layer": "layer3", "unit": u,
                          "concept": f"{c}_{u % 3}", "category": c,
                          "iou": float(rng.random() * 0.2), "detector": bool(u % 2)}
                         for v in variants for s in seeds for u in range(8)
                         for c in cats[u % 3: u % 3 + 1]])
    dsum = (diss[diss.detector].groupby(["variant", "seed", "layer", "category"])
            .agg(n_detectors=("unit", "size"), unique_concepts=("concept", "nunique"))
            .reset_index())
    pairs = label_mixing_pairs(exp)
    assert pairs == [("cutmix", "cutmix", "cutmix_hard")]
    lm = pair_differences(interp, pairs, Settings(n_boot=200))
    tables = {"interpretability": interp, "summary_b": summary, "alignment_counts": counts,
              "curves": curves, "dissection": diss, "dissection_summary": dsum,
              "label_mixing": lm}
    for name, df in tables.items():
        df.to_parquet(out / "tables" / f"{name}.parquet", index=False)
    fig, ax = plt.subplots(figsize=(3, 2))  # one Study B plot from "the pipeline"; others drawn
    ax.plot([0, 1], [0, 1])
    fig.savefig(out / "plots" / "label_mixing.png")
    plt.close(fig)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    exp = load_config(ExperimentConfig, TINY)
    # the pipeline's train → explain → compare, step by step (Study B tables are synthetic)
    (out / "experiment.json").write_text(json.dumps(exp.model_dump(mode="json")))
    run_subset(exp, out, ("train", "explain"))  # also writes tables/performance.parquet
    run_subset(exp, out, ("sanity",))  # real sanity checks of Grad-CAM on the baseline cells
    analyse_study_a(exp, out, n_boot=200)
    (out / "stages" / "timings.json").write_text(json.dumps(
        {"train": 2.5, "explain": 0.4, "compare": 3.0, "evaluate": 20.0, "skipped": {}}))
    _write_iba(out, exp)
    _write_study_b(out, exp)
    return out


@pytest.fixture(scope="module")
def full_report(full_run):
    return build_report(full_run)


def _copy(src, dst, drop=()):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("report"))
    for rel in drop:
        p = dst / rel
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return dst


@pytest.fixture(scope="module")
def no_study_b(full_run, tmp_path_factory):
    dst = tmp_path_factory.mktemp("no_b") / "run"
    drops = [f"tables/{n}.parquet" for n in STUDY_B_TABLES] + ["plots/label_mixing.png",
                                                               "explanations/iba"]
    return _copy(full_run, dst, drops)


@pytest.fixture(scope="module")
def bare_run(full_run, tmp_path_factory):
    """Trained cells only: no explanations, no Study A or B; a hostile experiment name."""
    dst = _copy(full_run, tmp_path_factory.mktemp("bare") / "run",
                ["explanations", "tables", "plots", "stages"])
    exp = json.loads((dst / "experiment.json").read_text())
    exp["name"] = "<script>alert('x')</script> & co"
    (dst / "experiment.json").write_text(json.dumps(exp))
    (dst / "stages").mkdir()
    (dst / "stages" / "timings.json").write_text(json.dumps(
        {"train": 2.5, "skipped": {"dissect": "dataset 'shapes' has no concept labels"}}))
    return dst


# ----------------------------------------------------------------------------- without a browser


def test_full_run_renders_every_section(full_run, full_report):
    out = full_report
    assert out["html"] == full_run / "report" / "index.html"
    assert out["markdown"].is_file()
    assert list(out["sections"]) == SECTIONS
    assert out["sections"] == {s: "rendered" for s in SECTIONS}, out["missing"]
    page = out["html"].read_text()
    assert "http://" not in page and "https://" not in page  # nothing fetched from a network
    assert 'src="data:image/png;base64,' in page
    md = out["markdown"].read_text()
    for heading in out["titles"].values():
        assert f"## {heading}" in md
    assert "| variant | seeds | accuracy |" in md
    assert "cutmix_hard" in md and "delta_del" in md


def test_missing_study_b_says_why(no_study_b):
    out = build_report(no_study_b)
    assert out["sections"]["study-b"] == "missing"
    assert {s for s, v in out["sections"].items() if v != "rendered"} == {"study-b"}
    evaluate, dissect = out["missing"]["study-b"]
    assert evaluate.startswith("tables/summary_b.parquet is missing — written by `auglens "
                               "evaluate RUN_DIR` or `auglens run`")
    assert dissect.startswith("tables/dissection_summary.parquet is missing — written by "
                              "`auglens dissect RUN_DIR`")
    page = out["html"].read_text()
    assert "Not shown: tables/summary_b.parquet is missing" in page
    assert "IBA" not in out["markdown"].read_text().split("## CAM gallery")[1]


def test_bare_run_renders_with_reasons(bare_run):
    out = build_report(bare_run)
    s = out["sections"]
    assert s["experiment"] == "rendered"
    assert s["performance"] == "partial"  # from the cell records instead of the table
    assert s["study-a"] == s["study-b"] == s["changed"] == s["gallery"] == "missing"
    assert any("explanations/ is missing" in r and "auglens explain" in r
               for r in out["missing"]["gallery"])
    assert any("summary_a.parquet is missing" in r and "auglens compare" in r
               for r in out["missing"]["study-a"])
    assert ("tables/dissection_summary.parquet is missing: the dissect stage was skipped "
            "(dataset 'shapes' has no concept labels)") in out["missing"]["study-b"][1]
    page = out["html"].read_text()
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; co" in page


def test_without_noise_floor(full_run, tmp_path):
    """A single-seed run has no noise floor: variants are ranked by their raw similarity."""
    run = _copy(full_run, tmp_path / "run", ["explanations/iba"])
    for name in ("similarity_seed_mean", "summary_a"):
        p = run / "tables" / f"{name}.parquet"
        df = pd.read_parquet(p)
        df[df.variant != "noise_floor"].to_parquet(p, index=False)
    out = build_report(run)
    assert out["sections"]["changed"] == out["sections"]["study-a"] == "rendered"
    md = out["markdown"].read_text()
    assert "With a single seed there is no noise floor;" in md
    assert "noise_floor |" not in md


def test_nan_shown_with_counts(full_report):
    page = full_report["html"].read_text()
    assert '<td class="nan" data-v="NaN">NaN [NaN, NaN]</td>' in page
    assert "NaN in this table: 1 value (effective_heat_ratio: 1)." in page
    df = pd.DataFrame({"name": ["a", "b", "c"], "r": [0.5, np.nan, np.nan]})
    assert "NaN in this table: 2 values (r: 2)." in table_md(df)
    assert "| b | NaN |" in table_md(df)


def test_text_is_escaped():
    df = pd.DataFrame({"<th>": ["<b>x</b>", "a&b"], "v": [1.0, 2.0]})
    h = table_html(df)
    assert "<b>" not in h and "&lt;b&gt;x&lt;/b&gt;" in h and "&lt;th&gt;" in h
    sec = Section("x", "<h2>title</h2>", reading="a < b")
    sec.miss("file <x> missing")
    html = sec.render_html()
    assert "&lt;h2&gt;title&lt;/h2&gt;" in html and "a &lt; b" in html and "&lt;x&gt;" in html


def test_cli_module(full_run, capsys):
    from auglens.report.__main__ import main

    assert main([str(full_run)]) == 0
    assert "index.html" in capsys.readouterr().out
    assert main([str(full_run / "nope")]) == 2


# ----------------------------------------------------------------------------- in Chromium


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium; .ci/run does this)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]'")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield b
        b.close()


def _open(browser, path, width=1280, height=900):
    page = browser.new_page(viewport={"width": width, "height": height})
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: errors.append(f"request {r.url}")
            if not r.url.startswith(("file:", "data:")) else None)
    page.goto(path.resolve().as_uri())
    page.wait_for_load_state("load")
    page.wait_for_function("Array.from(document.images).every(i => i.complete)")
    return page, errors


def _check_page(page, errors, titles):
    assert errors == []
    broken = page.evaluate(
        "Array.from(document.images).filter(i => !(i.naturalWidth > 0)).map(i => i.alt)")
    assert broken == []
    assert page.locator("section > h2").all_inner_texts() == list(titles)


def _column(page, table_id, col):
    return page.evaluate(
        f"Array.from(document.querySelectorAll('#{table_id} tbody tr'))"
        f".map(r => r.cells[{col}].getAttribute('data-v') ?? r.cells[{col}].textContent)")


def test_browser_full_report(browser, full_report, tmp_path, capsys):
    out = full_report
    page, errors = _open(browser, out["html"])
    _check_page(page, errors, out["titles"].values())
    assert page.locator("img").count() > 20

    # sorting: click the "accuracy" header → ascending, again → descending
    heads = page.locator("#performance-table thead th")
    acc = heads.all_inner_texts().index("accuracy")
    heads.nth(acc).click()
    asc = [float(v) for v in _column(page, "performance-table", acc)]
    assert asc == sorted(asc) and len(asc) == 4
    assert heads.nth(acc).get_attribute("aria-sort") == "ascending"
    heads.nth(acc).click()
    assert [float(v) for v in _column(page, "performance-table", acc)] == sorted(asc)[::-1]
    # text column sorts alphabetically
    heads.nth(0).click()
    names = page.locator("#performance-table tbody tr td:first-child").all_inner_texts()
    assert names == sorted(names)

    # NaN cells sort last in both directions (alignment table, effective_heat_ratio column)
    ah = page.locator("#alignment-table thead th")
    col = ah.all_inner_texts().index("effective_heat_ratio")
    for _ in range(2):
        ah.nth(col).click()
        vals = _column(page, "alignment-table", col)
        assert vals[-1] == "NaN" and "NaN" not in vals[:-1]
        nums = [float(v) for v in vals[:-1]]
        up = ah.nth(col).get_attribute("aria-sort") == "ascending"
        assert nums == sorted(nums, reverse=not up)
    assert page.get_by_text("NaN in this table: 1 value (effective_heat_ratio: 1).").count() == 1

    # gallery: the picker switches which image row is visible
    visible = "Array.from(document.querySelectorAll('.gallery-item')).filter(e => !e.hidden)" \
              ".map(e => e.dataset.image)"
    options = page.locator("#gallery-select option").evaluate_all("os => os.map(o => o.value)")
    assert len(options) >= 6
    assert page.evaluate(visible) == [options[0]]
    page.select_option("#gallery-select", options[3])
    assert page.evaluate(visible) == [options[3]]
    item = page.locator(f'.gallery-item[data-image="{options[3]}"]')
    assert item.locator("h4").all_inner_texts() == ["Grad-CAM", "IBA"]
    assert item.locator("img").count() == 2 * (1 + 4)  # input + 4 variants, per method
    assert item.locator("img").first.bounding_box()["width"] > 50
    page.click("button[data-step='1']")
    assert page.evaluate(visible) == [options[4]]

    shot = tmp_path / "report_1280.png"
    page.screenshot(path=str(shot), full_page=True)
    page.close()
    phone, errors = _open(browser, out["html"], width=390, height=844)
    _check_page(phone, errors, out["titles"].values())
    # nothing wider than the phone: wide tables scroll inside their own box
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    phone_shot = tmp_path / "report_390.png"
    phone.screenshot(path=str(phone_shot), full_page=True)
    phone.close()
    with capsys.disabled():
        print(f"\nreport screenshots: {shot} {phone_shot}")


@pytest.mark.parametrize("which", ["no_study_b", "bare_run"])
def test_browser_incomplete_runs(browser, which, request):
    run_dir = request.getfixturevalue(which)
    out = build_report(run_dir)
    page, errors = _open(browser, out["html"])
    _check_page(page, errors, out["titles"].values())
    missing = page.locator("#study-b .missing").all_inner_texts()
    assert missing and "tables/summary_b.parquet" in missing[0]
    if which == "bare_run":
        assert page.locator("h1").inner_text().startswith("auglens report: <script>")
        assert "explanations/ is missing" in page.locator("#gallery").inner_text()
    page.close()
