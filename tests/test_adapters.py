"""Captum / pytorch-grad-cam adapters: equal to direct library calls, state restored, names,
parameters and missing packages reported clearly."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from helpers import random_model
from torch import Tensor, nn

from auglens.errors import AuglensError
from auglens.explain import EXPLAINERS, explain_images
from auglens.explain.adapters import captum_explainer, captum_members, pgc_members
from auglens.models import default_target_layer, get_module

captum_attr = pytest.importorskip("captum.attr")
pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.image import scale_cam_image  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return random_model("small_resnet", 10, seed=0, width=8)


@pytest.fixture(scope="module")
def x() -> Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _close(a: Tensor, b: Tensor, rel: float = 1e-5) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = b.abs().max().item()
    assert scale > 0, "degenerate reference"
    err = (a - b).abs().max().item()
    assert err <= rel * scale, f"max abs diff {err:.3g} vs scale {scale:.3g}"


def _state(m: nn.Module) -> tuple:
    return (
        [mod.training for mod in m.modules()],
        [p.requires_grad for p in m.parameters()],
        [p.grad for p in m.parameters()],
        [(len(mod._forward_hooks), len(mod._forward_pre_hooks), len(mod._backward_hooks),
          len(mod._backward_pre_hooks)) for mod in m.modules()],
        [(name, id(mod)) for name, mod in m.named_modules()],
    )  # fmt: skip


# ----------------------------------------------------------------------------------- Captum

CAPTUM_CASES = [
    ("Saliency", {}, {}),
    ("IntegratedGradients", {"n_steps": 8}, {}),
    ("InputXGradient", {}, {}),
    ("GuidedBackprop", {}, {}),
    ("Occlusion", {"sliding_window_shapes": [3, 8, 8], "strides": [3, 8, 8]}, {}),
    ("LayerGradCam", {"relu_attributions": True}, {}),
    ("LayerGradCam", {}, {}),
    ("LayerConductance", {"n_steps": 4}, {}),
]


def _direct_captum(model, x, name, params, target):
    cls = getattr(captum_attr, name)
    layer = get_module(model, default_target_layer(model))
    init = {"layer": layer} if "layer" in cls.__init__.__code__.co_varnames else {}
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    return cls(model, **init).attribute(x.clone(), target=target, **kw).detach()


@pytest.mark.parametrize("name,params,_", CAPTUM_CASES)
def test_captum_equals_direct_call(model, x, name, params, _) -> None:
    before = _state(model)
    ex = EXPLAINERS.get(f"captum:{name}")(model, channels_last=False, **params)
    exp = ex(x, also_ground_truth=torch.tensor([1, 2, 3]))
    assert _state(model) == before
    pred = model(x).argmax(1)
    assert torch.equal(exp.targets, pred)
    ref = _direct_captum(model, x, name, params, pred)
    gt = _direct_captum(model, x, name, params, torch.tensor([1, 2, 3]))
    model.zero_grad(set_to_none=True)
    if ref.shape[1] == 1:  # one-channel attribution: squeezed, signs kept
        assert ex.settings["reduce_used"] == "none"
        _close(exp.maps, ref[:, 0])
        _close(exp.maps_gt, gt[:, 0])
        assert exp.layer == default_target_layer(model)
    else:  # Captum's visualisation: |Σ_c a_c|
        assert ex.settings["reduce_used"] == "abs_sum"
        _close(exp.maps, ref.sum(1).abs())
        _close(exp.maps_gt, gt.sum(1).abs())
        assert exp.layer == ("input" if ref.shape[-1] == 32 else default_target_layer(model))
    assert exp.method == f"captum:{name}" and exp.maps.dtype == torch.float32


def test_captum_reductions(model, x) -> None:
    ref = _direct_captum(model, x, "InputXGradient", {}, model(x).argmax(1))
    expected = {
        "sum": ref.sum(1), "abs_sum": ref.sum(1).abs(), "positive_sum": ref.sum(1).clamp_min(0),
        "sum_abs": ref.abs().sum(1), "l2": ref.pow(2).sum(1).sqrt(),
    }  # fmt: skip
    for how, want in expected.items():
        ex = EXPLAINERS.get("captum:InputXGradient")(model, channels_last=False, reduce=how)
        _close(ex(x).maps, want)
        assert ex.settings["reduce_used"] == how
    with pytest.raises(AuglensError, match="one-channel"):
        EXPLAINERS.get("captum:InputXGradient")(model, reduce="none")(x)
    with pytest.raises(AuglensError, match="reduce must be one of"):
        EXPLAINERS.get("captum:InputXGradient")(model, reduce="max")


def test_noise_tunnel_equals_direct_smoothgrad(model, x) -> None:
    params = dict(inner="IntegratedGradients", inner_params={"n_steps": 4}, nt_samples=3,
                  stdevs=0.2)  # fmt: skip
    ex = EXPLAINERS.get("captum:NoiseTunnel")(model, channels_last=False, **params)
    torch.manual_seed(5)  # NoiseTunnel draws from torch's global RNG
    exp = ex(x)
    torch.manual_seed(5)
    nt = captum_attr.NoiseTunnel(captum_attr.IntegratedGradients(model))
    ref = nt.attribute(x.clone(), target=exp.targets, nt_samples=3, stdevs=0.2, n_steps=4)
    _close(exp.maps, ref.detach().sum(1).abs())
    assert ex.settings["inner"] == "IntegratedGradients" and exp.layer == "input"
    layer_nt = EXPLAINERS.get("captum:NoiseTunnel")(model, inner="LayerGradCam", nt_samples=2)
    assert layer_nt(x).maps.shape == (3, 8, 8)  # a layer inner method uses the target layer
    with pytest.raises(AuglensError, match="inner method 'Nope'"):
        EXPLAINERS.get("captum:NoiseTunnel")(model, inner="Nope")
    with pytest.raises(AuglensError, match="unknown parameter 'n_stepz' for captum:Saliency"):
        EXPLAINERS.get("captum:NoiseTunnel")(model, inner_params={"n_stepz": 3})


# ------------------------------------------------------------------------- pytorch-grad-cam

PGC_CASES = ["GradCAM", "HiResCAM", "XGradCAM", "GradCAMPlusPlus", "LayerCAM", "EigenCAM",
             "ScoreCAM", "AblationCAM", "ShapleyCAM"]  # fmt: skip


def _direct_pgc(model, x, name, targets):
    layer = get_module(model, default_target_layer(model))
    tl = None if targets is None else [ClassifierOutputTarget(int(t)) for t in targets]
    with getattr(pgc, name)(model=model, target_layers=[layer]) as cam:
        out = cam(input_tensor=x.clone(), targets=tl)
    model.zero_grad(set_to_none=True)
    return torch.from_numpy(out)


@pytest.mark.parametrize("name", PGC_CASES)
def test_pgc_equals_direct_call(model, x, name, capsys) -> None:
    before = _state(model)
    ex = EXPLAINERS.get(f"pgc:{name}")(model, channels_last=False)
    exp = ex(x, also_ground_truth=torch.tensor([1, 2, 3]))
    assert _state(model) == before  # AblationCAM swaps the layer and swaps it back
    assert ex.settings["output"] == "raw" and exp.maps.shape == (3, 8, 8)
    assert exp.maps.min() >= 0 and torch.equal(exp.targets, model(x).argmax(1))
    torch.testing.assert_close(exp.logits, model(x).detach(), rtol=1e-5, atol=1e-5)
    for ours, targets in ((exp.maps, None), (exp.maps_gt, [1, 2, 3])):
        ref = _direct_pgc(model, x, name, targets)  # min-max scaled, resized to 32×32
        # the library's post-processing applied to our raw maps gives its output
        post = scale_cam_image(scale_cam_image(ours.numpy(), (32, 32)))
        np.testing.assert_allclose(post, ref.numpy(), rtol=0, atol=2e-5)
    lib = EXPLAINERS.get(f"pgc:{name}")(model, output="library", channels_last=False)(x)
    np.testing.assert_allclose(lib.maps.numpy(), _direct_pgc(model, x, name, None).numpy(),
                               rtol=0, atol=1e-6)  # fmt: skip
    capsys.readouterr()  # ScoreCAM / AblationCAM progress bars


def test_pgc_gradcam_raw_equals_native_gradcam(model, x) -> None:
    raw = EXPLAINERS.get("pgc:GradCAM")(model)(x)
    native = EXPLAINERS.get("gradcam")(model)(x)
    _close(raw.maps, native.maps)
    assert torch.equal(raw.targets, native.targets)


def test_pgc_fullgrad_has_library_output_only(model, x, capsys) -> None:
    ex = EXPLAINERS.get("pgc:FullGrad")(model)
    assert ex.settings["output"] == "library"
    assert ex(x).maps.shape == (3, 32, 32)
    with pytest.raises(AuglensError, match="only output='library'"):
        EXPLAINERS.get("pgc:FullGrad")(model, output="raw")
    capsys.readouterr()


def test_state_restored_from_training_mode_with_user_hooks(x) -> None:
    m = random_model("small_resnet", 10, seed=2, width=8).train()
    m.layer1.eval()
    for p in m.stem.parameters():
        p.requires_grad_(False)
    m(x).sum().backward()  # existing .grad objects must be kept
    seen = []
    hook = m.layer2.register_forward_hook(lambda *a: seen.append(1))
    before = _state(m)
    for name, params in (("captum:IntegratedGradients", {"n_steps": 2}),
                         ("captum:GuidedBackprop", {}), ("pgc:GradCAM", {}),
                         ("pgc:AblationCAM", {"batch_size": 64})):  # fmt: skip
        EXPLAINERS.get(name)(m, **params)(x[:2])
        assert _state(m) == before, name
    assert seen and m.training and not m.layer1.training
    hook.remove()


# ------------------------------------------------------------------------ names and params


def test_registry_lists_families_and_resolves_names() -> None:
    names = EXPLAINERS.names()
    assert "captum:<Attribution>" in names and "pgc:<CAM>" in names and "rise" in names
    d = EXPLAINERS.describe("captum:<Attribution>")
    assert "IntegratedGradients" in d["doc"] and "pip install captum" in d["doc"]
    assert "ScoreCAM" in EXPLAINERS.describe("pgc:<CAM>")["doc"]
    assert "captum:Saliency" in EXPLAINERS and "captum:Nope" not in EXPLAINERS
    assert EXPLAINERS.get("captum:Saliency") is EXPLAINERS.get("captum:Saliency")  # cached
    params = EXPLAINERS.describe("captum:IntegratedGradients")["params"]
    assert params["n_steps"] == 50 and params["reduce"] == "auto"
    assert {"multiply_by_inputs", "baselines", "method"} <= set(params)
    assert "target" not in params and "inputs" not in params
    pp = EXPLAINERS.describe("pgc:AblationCAM")["params"]
    assert pp["batch_size"] == 32 and pp["output"] == "auto" and "eigen_smooth" in pp
    assert set(captum_members()) >= {"IntegratedGradients", "NoiseTunnel", "Occlusion",
                                     "GuidedBackprop", "Saliency", "LayerGradCam"}  # fmt: skip
    assert not any(n.startswith("Neuron") or "LLM" in n for n in captum_members())
    assert set(pgc_members()) >= {"HiResCAM", "ScoreCAM", "EigenCAM", "XGradCAM", "AblationCAM"}


def test_unknown_names_and_parameters(model) -> None:
    with pytest.raises(AuglensError, match=r"did you mean 'captum:IntegratedGradients'.*valid "
                       r"names for captum:<Attribution>: .*Saliency"):  # fmt: skip
        EXPLAINERS.get("captum:IntegratedGradient")
    with pytest.raises(AuglensError, match=r"valid names for pgc:<CAM>: .*HiResCAM"):
        EXPLAINERS.get("pgc:NoCAM")
    with pytest.raises(AuglensError, match=r"valid explainers: .*captum:<Attribution>, pgc:<CAM>"):
        EXPLAINERS.get("shap:Kernel")
    with pytest.raises(AuglensError, match="unknown parameter 'n_stepz'.*n_steps"):
        EXPLAINERS.get("captum:IntegratedGradients")(model, n_stepz=3)
    with pytest.raises(AuglensError, match="needs parameter 'sliding_window_shapes'"):
        EXPLAINERS.get("captum:Occlusion")(model)
    with pytest.raises(AuglensError, match="output must be one of"):
        EXPLAINERS.get("pgc:GradCAM")(model, output="png")


def test_explain_config_accepts_adapter_names() -> None:
    from auglens.config import ExplainConfig

    cfg = ExplainConfig(
        methods=["gradcam", "captum:IntegratedGradients", "pgc:ScoreCAM", "rise"],
        params={"captum:IntegratedGradients": {"n_steps": 32}, "rise": {"n_masks": 100}},
    )
    assert cfg.methods[1] == "captum:IntegratedGradients"
    # the config checks the family prefix only (it never imports the explainers); the member's
    # parameters are checked by check_inputs before anything runs
    from auglens.config import ExperimentConfig
    from auglens.pipeline import check_inputs

    bad = ExplainConfig(methods=["captum:Saliency"], params={"captum:Saliency": {"n_stepz": 1}})
    exp = ExperimentConfig.model_validate({"name": "x", "explain": bad.model_dump()})
    with pytest.raises(AuglensError, match="unknown parameter 'n_stepz'.*valid: abs"):
        check_inputs(exp)
    exp = ExperimentConfig.model_validate({"name": "x",
                                           "explain": {"methods": ["captum:Salience"]}})
    with pytest.raises(AuglensError, match="valid names for captum"):
        check_inputs(exp)
    with pytest.raises(AuglensError, match="valid explainers: .*captum:<Attribution>"):
        ExplainConfig(methods=["kaptum:Saliency"])


def test_cli_list_shows_families(capsys) -> None:
    from auglens.cli import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "captum:<Attribution>" in out and "pgc:<CAM>" in out and "rise" in out
    assert "IntegratedGradients" in out and "n_masks=6000" in out


def test_missing_package_is_a_clear_error(monkeypatch) -> None:
    captum_members.cache_clear()
    monkeypatch.setitem(sys.modules, "captum.attr", None)  # import raises ImportError
    try:
        with pytest.raises(AuglensError, match="pip install captum"):
            EXPLAINERS.get("captum:Saliency")
        assert "captum:Saliency" not in EXPLAINERS
        assert "unavailable" in EXPLAINERS.describe("captum:<Attribution>")["doc"]
    finally:
        captum_members.cache_clear()
    pgc_members.cache_clear()
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)
    try:
        with pytest.raises(AuglensError, match="pip install grad-cam"):
            EXPLAINERS.get("pgc:GradCAM")
    finally:
        pgc_members.cache_clear()


def test_explain_images_runs_an_adapter_with_params(model) -> None:
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(3))  # fmt: skip
    norm = lambda t: (t - 0.5) / 0.25  # noqa: E731
    exp = explain_images(model, images, norm, "captum:IntegratedGradients", batch_size=2,
                         ground_truth=torch.arange(5), method_params={"n_steps": 4})  # fmt: skip
    direct = captum_explainer("IntegratedGradients")(model, n_steps=4)(
        norm(images.float() / 255), also_ground_truth=torch.arange(5)
    )
    _close(exp.maps, direct.maps, rel=1e-4)
    _close(exp.maps_gt, direct.maps_gt, rel=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_cpu(x) -> None:
    m = random_model("small_resnet", 10, seed=0, width=8)
    for name, params in (("captum:IntegratedGradients", {"n_steps": 4}), ("pgc:GradCAM", {})):
        cpu = EXPLAINERS.get(name)(m, **params)(x)
        gpu = EXPLAINERS.get(name)(m.cuda(), **params)(x.cuda())
        m.cpu()
        assert gpu.maps.device.type == "cuda"
        _close(gpu.maps.cpu(), cpu.maps, rel=1e-3)
