import pytest
import torch

from auglens.errors import AuglensError
from auglens.models import MODELS, build_model, default_target_layer, get_module, save_weights
from auglens.models.registry import load_weights


@pytest.mark.parametrize("name", ["small_resnet", "resnet18", "resnet50", "efficientnet_b0"])
def test_registry_builds_and_target_layer_exists(name):
    m = build_model(name, 7).eval()
    layer = get_module(m, default_target_layer(m))
    acts = {}
    h = layer.register_forward_hook(lambda mod, i, o: acts.setdefault("a", o))
    with torch.no_grad():
        out = m(torch.randn(2, 3, 64, 64))
    h.remove()
    assert out.shape == (2, 7)
    assert acts["a"].ndim == 4


def test_small_resnet_keeps_8x8_at_32px():
    m = build_model("small_resnet", 10).eval()
    acts = {}
    get_module(m, "layer3").register_forward_hook(lambda mod, i, o: acts.setdefault("a", o))
    with torch.no_grad():
        m(torch.randn(1, 3, 32, 32))
    assert acts["a"].shape[-2:] == (8, 8)


def test_input_resize_wrapper_upsamples():
    m = build_model("efficientnet_b0", 10, input_size=64).eval()
    assert default_target_layer(m) == "net.features.8"
    seen = {}

    def hook(mod, args):
        seen["shape"] = args[0].shape

    m.net.register_forward_pre_hook(hook)
    with torch.no_grad():
        m(torch.randn(1, 3, 32, 32))
    assert seen["shape"][-2:] == (64, 64)


def test_cifar_stem_resnet18_keeps_resolution():
    m = build_model("resnet18", 10, cifar_stem=True).eval()
    acts = {}
    get_module(m, "layer4").register_forward_hook(lambda mod, i, o: acts.setdefault("a", o))
    with torch.no_grad():
        m(torch.randn(1, 3, 32, 32))
    assert acts["a"].shape[-2:] == (4, 4)


def test_unknown_model_lists_valid_names():
    with pytest.raises(AuglensError, match="valid models: .*small_resnet"):
        build_model("resnet19", 10)


def test_bad_model_param_names_it():
    with pytest.raises(AuglensError, match="valid parameters: width, blocks"):
        build_model("small_resnet", 10, depth=3)


def test_unknown_layer_lists_modules():
    m = build_model("small_resnet", 10)
    with pytest.raises(AuglensError, match="no module 'layer9'.*layer3"):
        get_module(m, "layer9")


def test_weights_roundtrip_and_errors(tmp_path):
    torch.manual_seed(0)
    m = build_model("small_resnet", 10)
    sha = save_weights(m, tmp_path / "w.safetensors")
    assert len(sha) == 64
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind
    torch.manual_seed(1)
    m2 = build_model("small_resnet", 10, checkpoint=tmp_path / "w.safetensors")
    for (k, a), b in zip(m.state_dict().items(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    # torch file with a plain state dict is accepted (weights_only=True)
    torch.save(m.state_dict(), tmp_path / "w.pt")
    load_weights(build_model("small_resnet", 10), tmp_path / "w.pt")
    # mismatched architecture / class count
    with pytest.raises(AuglensError, match="shape mismatch fc.weight"):
        build_model("small_resnet", 5, checkpoint=tmp_path / "w.safetensors")
    with pytest.raises(AuglensError, match="does not match model"):
        build_model("resnet18", 10, checkpoint=tmp_path / "w.safetensors")
    # corrupt and missing files
    (tmp_path / "bad.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(AuglensError, match="corrupt checkpoint"):
        build_model("small_resnet", 10, checkpoint=tmp_path / "bad.safetensors")
    with pytest.raises(AuglensError, match="checkpoint not found"):
        build_model("small_resnet", 10, checkpoint=tmp_path / "nope.safetensors")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_unsafe_pickle_is_refused(tmp_path):
    torch.save({"x": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(AuglensError, match="cannot load checkpoint .* safely"):
        load_weights(build_model("small_resnet", 10), tmp_path / "evil.pt")


def test_registry_names():
    assert set(MODELS.names()) >= {"small_resnet", "resnet18", "resnet50", "efficientnet_b0"}
