"""Decoding every image mode Pillow opens into 8-bit RGB, each against a hand-computed
conversion (16-bit scaling, alpha over black, palette transparency, CMYK, EXIF orientation)."""

import numpy as np
import pytest
from PIL import Image

from auglens.data.images import CorruptImageError, decode_file, image_size


def _rgb(t):
    return t.permute(1, 2, 0).numpy()


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    v = np.array([[0, 257, 1000], [32768, 65279, 65535]], dtype=np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(v).save(path)  # mode I;16
    with Image.open(path) as im:
        assert im.mode in ("I;16", "I")
    want = np.rint(v.astype(np.float64) * 255 / 65535).astype(np.uint8)
    got = _rgb(decode_file(path))
    assert (got == want[..., None]).all()
    assert len(np.unique(got)) == 6  # not a constant white image


def test_alpha_is_composited_over_black(tmp_path):
    rgba = np.array([[[200, 100, 50, 255], [200, 100, 50, 128], [10, 20, 30, 0]]], np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    la = np.array([[[90, 255], [90, 51]]], np.uint8)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    want = (rgba[..., :3].astype(int) * rgba[..., 3:] + 127) // 255
    assert (_rgb(decode_file(tmp_path / "a.png")) == want).all()
    got = _rgb(decode_file(tmp_path / "la.png"))
    assert (got[0, :, 0] == [90, (90 * 51 + 127) // 255]).all()
    assert (got[..., 0] == got[..., 2]).all()


def test_palette_with_a_transparent_index(tmp_path):
    im = Image.new("P", (3, 1))
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    im.putdata([0, 1, 2])
    im.info["transparency"] = 1
    im.save(tmp_path / "p.png", transparency=1)
    got = _rgb(decode_file(tmp_path / "p.png"))
    assert got.tolist() == [[[255, 0, 0], [0, 0, 0], [0, 0, 255]]]  # index 1 transparent
    del im.info["transparency"]
    im.save(tmp_path / "opaque.png")  # no transparency: the palette colours
    assert _rgb(decode_file(tmp_path / "opaque.png")).tolist() == [[[255, 0, 0], [0, 255, 0],
                                                                   [0, 0, 255]]]


def test_grey_bilevel_and_cmyk(tmp_path):
    g = np.array([[0, 77, 255]], np.uint8)
    Image.fromarray(g, "L").save(tmp_path / "l.png")
    assert (_rgb(decode_file(tmp_path / "l.png")) == g[..., None]).all()
    Image.fromarray(g > 100).save(tmp_path / "b.png")  # mode 1
    assert _rgb(decode_file(tmp_path / "b.png"))[..., 0].tolist() == [[0, 0, 255]]
    cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 128, 0, 64]]], np.uint8)
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "c.tif")
    want = np.rint((255 - cmyk[..., :3].astype(float)) * (255 - cmyk[..., 3:]) / 255)
    assert np.abs(_rgb(decode_file(tmp_path / "c.tif")).astype(int) - want).max() <= 1


def test_float_and_wide_integer_modes(tmp_path):
    f = np.array([[0.0, 0.5, 1.0]], np.float32)
    Image.fromarray(f, "F").save(tmp_path / "f.tif")
    assert _rgb(decode_file(tmp_path / "f.tif"))[..., 1].tolist() == [[0, 128, 255]]
    Image.fromarray(np.array([[2.0]], np.float32), "F").save(tmp_path / "f2.tif")
    with pytest.raises(CorruptImageError, match=r"f2\.tif: float image \(mode F\)"):
        decode_file(tmp_path / "f2.tif")
    Image.fromarray(np.array([[70000]], np.int32), "I").save(tmp_path / "i.tif")
    with pytest.raises(CorruptImageError, match=r"i\.tif: 32-bit integer image \(mode I\)"):
        decode_file(tmp_path / "i.tif")


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((2, 3, 3), np.uint8)
    a[0, 0] = [255, 0, 0]  # top-left red, stored 3 wide × 2 high
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    im.save(tmp_path / "o.png", exif=exif)
    got = _rgb(decode_file(tmp_path / "o.png"))
    want = np.rot90(a, k=-1)  # clockwise
    assert got.shape == (3, 2, 3) and (got == want).all()
    assert image_size(tmp_path / "o.png") == (2, 3)  # (width, height) as displayed


def test_zero_variance_channel_is_a_clear_error(tmp_path):
    from auglens.data import DATASETS
    from auglens.data.base import channel_stats
    from auglens.errors import AuglensError

    imgs = np.random.default_rng(0).integers(0, 256, (4, 3, 5, 5), dtype=np.uint8)
    mean, std = channel_stats(imgs)
    ref = imgs.reshape(4, 3, -1).transpose(1, 0, 2).reshape(3, -1) / 255.0
    np.testing.assert_allclose(mean, ref.mean(1), rtol=1e-12)
    np.testing.assert_allclose(std, ref.std(1), rtol=1e-12)
    imgs[:, 1] = 255
    with pytest.raises(AuglensError, match=r"channel G has zero variance \(every pixel 255\)"):
        channel_stats(imgs)
    # a folder of 16-bit images that used to decode to pure white now trains normally, while a
    # folder of genuinely constant images names the problem instead of a NaN loss
    for c in ("a", "b"):
        (tmp_path / "train" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (255, 255, 255)).save(tmp_path / "train" / c / f"{i}.png")
    with pytest.raises(AuglensError, match="zero variance"):
        DATASETS.get("imagefolder")(root=str(tmp_path), image_size=8, val_size=1,
                                    test_dir="train", normalization="train")
