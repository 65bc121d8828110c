"""BatchFeeder: the same batches, in the same order, as the reference `iter_batches`."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from auglens.data.images import Geometry, ImageFiles, LazyImages, iter_batches
from auglens.errors import AuglensError
from auglens.train.feeding import BatchFeeder, IndexBatches, feed_batches
from auglens.train.trainer import batch_order

CPU = torch.device("cpu")
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def make_files(root: Path, n: int = 23) -> list[Path]:
    """n small images of varied sizes: JPEGs and a few (grey) PNGs."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        h, w = 20 + i % 5, 24 + 2 * (i % 3)
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        if i % 6 == 1:
            p = root / f"img{i:03d}.png"
            Image.fromarray(arr[..., 0], "L").save(p)
        else:
            p = root / f"img{i:03d}.jpg"
            Image.fromarray(arr).save(p, quality=90)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return make_files(tmp_path_factory.mktemp("feed"))


def reference(images, batches) -> list[torch.Tensor]:
    return [x.clone() for x in iter_batches(images, batches, CPU)]


def assert_same(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.uint8 and g.device == CPU
        assert torch.equal(g, w)


@pytest.mark.parametrize("workers", [0, 2])
def test_in_memory_tensor_same_order_and_bytes(workers: int) -> None:
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    batches = batch_order(50, 8, seed=3, epoch=0)
    feeder = BatchFeeder(images, CPU, num_workers=workers, persistent_workers=False)
    assert feeder.mode == ("workers" if workers else "in-process")
    got = list(feeder.epoch(batches))
    assert_same(got, reference(images, batches))
    # the indices really are the trainer's: batch k is images[batches[k]]
    assert torch.equal(got[2], images[batches[2]])


@pytest.mark.parametrize("workers", [0, 2])
def test_lazy_images_same_order_and_bytes(files: list[Path], workers: int) -> None:
    lazy = LazyImages(ImageFiles(files, Geometry(16, 18), workers=1))
    batches = batch_order(len(files), 5, seed=0, epoch=1)
    want = reference(LazyImages(ImageFiles(files, Geometry(16, 18), workers=0)), batches)
    got = list(feed_batches(lazy, batches, CPU, num_workers=workers))
    assert_same(got, want)


def test_lazy_view_and_memmap_cache_across_epochs(files: list[Path], tmp_path: Path) -> None:
    """A LazyImages view (a split) with the disk cache, persistent workers over two epochs: each
    epoch equals the reference; workers fill the shared memory-mapped cache the parent sees."""
    g = Geometry(12, 14, crop=False)
    view = LazyImages(ImageFiles(files, g, workers=2, cache_dir=tmp_path)).select(
        np.arange(1, len(files), 2))  # fmt: skip
    plain = LazyImages(ImageFiles(files, g, workers=0)).select(np.arange(1, len(files), 2))
    n = len(view)
    with BatchFeeder(view, CPU, num_workers=2, prefetch_factor=1) as feeder:
        for epoch in range(2):
            batches = batch_order(n, 3, seed=5, epoch=epoch)
            assert_same(list(feeder.epoch(batches)), reference(plain, batches))
            if epoch == 0:  # last partial batch dropped: some images never loaded
                loaded = torch.cat(batches).numpy()
                cached = view.files.cached()
                assert cached[view.index[loaded]].all()
        assert "workers" in feeder.describe()


def test_pinned_non_blocking_path_on_cpu(files: list[Path]) -> None:
    """pin_memory=True without CUDA: a documented no-op (``pinned`` False), same bytes; the
    non_blocking copy to a CPU target is the identity."""
    lazy = LazyImages(ImageFiles(files, Geometry(16, 18), workers=0))
    batches = batch_order(len(files), 4, seed=1, epoch=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "pin_memory set but no accelerator" warning
        feeder = BatchFeeder(lazy, CPU, num_workers=2, pin_memory=True, persistent_workers=False)
        got = list(feeder.epoch(batches))
    assert feeder.pinned is torch.cuda.is_available()
    assert_same(got, reference(lazy, batches))


def test_index_batches_is_batch_level(files: list[Path]) -> None:
    lazy = LazyImages(ImageFiles(files, Geometry(16, 18), workers=0))
    idx = torch.tensor([4, 1, 7])
    assert torch.equal(IndexBatches(lazy)[idx], torch.stack([lazy[4], lazy[1], lazy[7]]))
    raw = IndexBatches(lazy, raw=True)[idx]
    assert [k for k, _ in raw] == ["jpeg", "pixels", "pixels"]  # img001, img007 are PNG
    assert bytes(raw[0][1].numpy()) == files[4].read_bytes()
    assert torch.equal(raw[1][1], lazy[1])


def test_bad_options() -> None:
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(AuglensError, match="num_workers"):
        BatchFeeder(images, CPU, num_workers=-1)
    with pytest.raises(AuglensError, match="uint8"):
        BatchFeeder(images.float(), CPU)
    with pytest.raises(AuglensError, match="LazyImages"):
        BatchFeeder(images, CPU, gpu_decode=True)


def test_gpu_decode_without_cuda_is_an_error(files: list[Path]) -> None:
    lazy = LazyImages(ImageFiles(files, Geometry(16, 18), workers=0))
    with pytest.raises(AuglensError, match="gpu_decode needs a CUDA"):
        BatchFeeder(lazy, CPU, gpu_decode=True)


@CUDA
@pytest.mark.parametrize("workers", [0, 2])
def test_cuda_target_same_bytes(files: list[Path], workers: int) -> None:
    dev = torch.device("cuda")
    lazy = LazyImages(ImageFiles(files, Geometry(16, 18), workers=1))
    batches = batch_order(len(files), 5, seed=0, epoch=0)
    want = reference(lazy, batches)
    with BatchFeeder(lazy, dev, num_workers=workers) as feeder:
        got = [x.cpu() for x in feeder.epoch(batches)]
        assert feeder.pinned
    assert_same(got, want)
    images = torch.randint(0, 256, (30, 3, 8, 8), dtype=torch.uint8)
    b2 = batch_order(30, 7, seed=0, epoch=0)
    for src in (images, images.to(dev)):
        got = [x.cpu() for x in feed_batches(src, b2, dev, num_workers=workers)]
        assert_same(got, [images[i] for i in b2])


@CUDA
def test_cuda_gpu_decode_close_to_pillow(files: list[Path]) -> None:
    lazy = LazyImages(ImageFiles(files, Geometry(16, 18), workers=0))
    batches = batch_order(len(files), 5, seed=0, epoch=0)
    want = reference(lazy, batches)
    got = [x.cpu() for x in feed_batches(lazy, batches, "cuda", num_workers=2, gpu_decode=True)]
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        assert (g.float() - w.float()).abs().mean() < 4.0  # decoder + resize rounding only



def test_dataset_pickles_for_spawned_workers(files: list[Path], tmp_path: Path) -> None:
    """What a spawned worker receives (a pickled IndexBatches: cache re-mapped, no pool) gives
    the same bytes; spawning itself is left to torch (it costs a full import per worker)."""
    import pickle

    lazy = LazyImages(ImageFiles(files, Geometry(16, 18), workers=1, cache_dir=tmp_path))
    lazy[np.arange(5)]  # fill part of the cache, start the pool
    copy = pickle.loads(pickle.dumps(IndexBatches(lazy)))
    assert copy.images.files._pool is None and copy.images.files.cache_path is not None
    idx = torch.tensor([3, 9, 0, 4])
    assert torch.equal(copy[idx], LazyImages(ImageFiles(files, Geometry(16, 18), 0))[idx])
