"""User checkpoints (torchvision state dicts, safetensors, unsafe pickles) and user modules."""


import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from auglens.cli import main
from auglens.errors import AuglensError
from auglens.explain import explain_images
from auglens.models import build_model, load_weights
from auglens.models.registry import read_state_dict


def tv_resnet18(num_classes: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.resnet18(weights=None, num_classes=num_classes).eval()


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "nested", "dataparallel"])
def test_torchvision_state_dict_loads_into_the_registered_model(tmp_path, fmt):
    src = tv_resnet18(7)
    state = src.state_dict()
    path = tmp_path / f"user.{'safetensors' if fmt == 'safetensors' else 'pth'}"
    if fmt == "pth":
        torch.save(state, path)  # what torchvision's own weight files hold
    elif fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif fmt == "nested":  # a training checkpoint: weights plus plain-data bookkeeping
        torch.save({"epoch": 90, "best_acc1": 0.71, "state_dict": state,
                    "optimizer": {"lr": 0.1, "momentum": 0.9}}, path)  # fmt: skip
    else:
        torch.save({"module." + k: v for k, v in state.items()}, path)
    torch.manual_seed(123)  # a different init: everything must come from the file
    model = build_model("resnet18", 7, checkpoint=path).eval()
    assert same_state(model, src)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), src(x))


def test_bare_checkpoint_into_input_resize_wrapper(tmp_path):
    src = tv_resnet18(5)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    model = build_model("resnet18", 5, input_size=64, checkpoint=tmp_path / "w.pth").eval()
    assert list(model.state_dict())[0].startswith("net.")
    x = torch.rand(2, 3, 32, 32)
    up = nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
    with torch.no_grad():
        assert torch.equal(model(x), src(up))


def test_class_count_mismatch_names_file_and_both_counts(tmp_path):
    torch.save(tv_resnet18(7).state_dict(), tmp_path / "seven.pth")
    with pytest.raises(AuglensError, match=r"class-count mismatch: checkpoint .*seven.pth has 7 "
                                           r"output classes but the data has 10 classes"):
        build_model("resnet18", 10, checkpoint=tmp_path / "seven.pth")
    torch.save(build_model("efficientnet_b0", 3).state_dict(), tmp_path / "b0.pth")
    with pytest.raises(AuglensError, match=r"b0.pth has 3 output classes but the data has 4 "
                                           r"classes \(shape mismatch classifier.1.weight"):
        build_model("efficientnet_b0", 4, checkpoint=tmp_path / "b0.pth")
    # another architecture is still reported key by key
    with pytest.raises(AuglensError, match=r"does not match model ResNet: .*missing keys"):
        build_model("resnet50", 7, checkpoint=tmp_path / "seven.pth")


def test_class_count_mismatch_through_the_cli(tmp_path, capsys):
    torch.manual_seed(0)
    torch.save(build_model("small_resnet", 7, width=8).state_dict(), tmp_path / "mine.pt")
    rc = main(["train", "--out", str(tmp_path / "o"), "--set", "model.width=8",
               "--set", f"model.checkpoint={tmp_path / 'mine.pt'}", "--set", "data.n_train=64",
               "--set", "data.n_val=16", "--set", "data.n_test=16"])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err
    assert f"checkpoint {tmp_path / 'mine.pt'} has 7 output classes but the data has 10" in err


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.mkdir, (self.marker,))


def test_unsafe_pickle_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    state = tv_resnet18(3).state_dict()
    state["fc.extra"] = _Payload(str(marker))
    torch.save(state, tmp_path / "evil.pth")
    with pytest.raises(AuglensError) as e:
        build_model("resnet18", 3, checkpoint=tmp_path / "evil.pth")
    msg = str(e.value)
    assert f"cannot load checkpoint {tmp_path / 'evil.pth'} safely: refused" in msg
    assert "needs 'posix.mkdir'" in msg and "arbitrary code" in msg and "safetensors" in msg
    assert not marker.exists()
    # a full pickled model (not a state dict) is refused the same way
    torch.save(tv_resnet18(3), tmp_path / "model.pth")
    with pytest.raises(AuglensError, match=r"model.pth safely: refused, it is a pickle that "
                                           r"needs 'torchvision.models.resnet.ResNet'"):
        read_state_dict(tmp_path / "model.pth")


def test_non_tensor_and_corrupt_files(tmp_path):
    torch.save({"a": 1}, tmp_path / "plain.pt")
    with pytest.raises(AuglensError, match=r"plain.pt does not hold a state_dict of tensors"):
        read_state_dict(tmp_path / "plain.pt")
    (tmp_path / "cut.pth").write_bytes(b"PK\x03\x04" + b"\x00" * 20)
    with pytest.raises(AuglensError, match=r"cannot load checkpoint .*cut.pth safely"):
        read_state_dict(tmp_path / "cut.pth")
    with pytest.raises(AuglensError, match=r"checkpoint not found: .*nope.pth"):
        load_weights(tv_resnet18(3), tmp_path / "nope.pth")


class UserNet(nn.Module):
    """A user's own model: no registry entry, no ``default_target_layer``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, stride=2, padding=1),
            nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


def test_any_module_with_a_named_target_layer_explains(tmp_path):
    torch.manual_seed(0)
    model = UserNet().eval()
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    norm = lambda x: (x - 0.5) / 0.25  # noqa: E731
    ex = explain_images(model, images, norm, target_layer="features.3", batch_size=2)
    assert ex.maps.shape == (5, 8, 8) and ex.layer == "features.3"
    assert all(p.grad is None for p in model.parameters())  # the model is left as it was
    # reference Grad-CAM by hand: ReLU(Σ_c mean_hw(d logit_t / dA_c) · A_c), t = argmax
    x = norm(images.float() / 255)
    acts = model.features(x)
    acts.retain_grad()
    logits = model.head(acts.mean(dim=(2, 3)))
    t = logits.argmax(1)
    logits.gather(1, t[:, None]).sum().backward()
    ref = torch.relu((acts.grad.mean(dim=(2, 3), keepdim=True) * acts).sum(1)).detach()
    torch.testing.assert_close(ex.maps, ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(ex.targets, t)
    with pytest.raises(AuglensError, match="UserNet has no default target layer; pass one"):
        explain_images(model, images, norm)
    with pytest.raises(AuglensError, match="has no module 'features.9'.*features, head"):
        explain_images(model, images, norm, target_layer="features.9")
    # the user's own weights round-trip through a plain state dict
    torch.save(model.state_dict(), tmp_path / "user.pt")
    clone = load_weights(UserNet(), tmp_path / "user.pt", num_classes=4)
    assert same_state(clone, model)
