"""Datamodules and the paper's preprocessing, on real Fashion-MNIST and on small generated trees."""

import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from tests.conftest import DATA_DIR
from tests.helpers.image_trees import make_image_tree
from zfexp.data import (
    CIFAR10DataModule,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    Preprocessing,
    compute_mean_image,
    paper_transform,
)
from zfexp.data.files import write_atomic
from zfexp.errors import CorruptImageError, DatasetNotFoundError


def test_mean_image_is_the_per_pixel_mean():
    images = torch.rand(37, 3, 5, 4)
    mean = compute_mean_image(TensorDataset(images, torch.zeros(37)), batch_size=8)
    assert torch.allclose(mean, images.mean(0), atol=1e-6)


def test_overlapping_atomic_writes_of_one_file_both_succeed(tmp_path):
    """Parallel sweep jobs prepare the same file at once: a second writer that starts and finishes inside the
    first one's write must neither break it nor leave half a file."""
    target = tmp_path / "raw" / "train-images-idx3-ubyte"

    def first(tmp):
        tmp.write_bytes(b"A" * 10)
        write_atomic(target, lambda tmp2: tmp2.write_bytes(b"B" * 20))  # the other job, start to end
        with tmp.open("ab") as f:
            f.write(b"A" * 10)

    write_atomic(target, first)
    assert target.read_bytes() == b"A" * 20  # the last rename wins, whole
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temporary files left
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, lambda tmp: (_ for _ in ()).throw(OSError("disk full")))
    assert target.read_bytes() == b"A" * 20 and len(list(target.parent.iterdir())) == 1


def test_paper_transform_subtracts_mean_scales_and_crops():
    p = Preprocessing(resize=None, crop=None, input_size=6, mean_image=True, pixel_scale=255.0, ten_crop=False)
    image = torch.full((1, 8, 8), 200, dtype=torch.uint8)
    mean = torch.full((1, 8, 8), 0.5)
    out = paper_transform(p, mean, train=False)(image)
    assert out.shape == (1, 6, 6)
    assert torch.allclose(out, torch.full((1, 6, 6), (200 / 255 - 0.5) * 255), atol=1e-4)
    train_out = paper_transform(p, mean, train=True)(image)
    assert train_out.shape == (1, 6, 6)


def test_ten_crop_gives_corners_centre_and_their_flips():
    p = Preprocessing(resize=None, crop=None, input_size=2, mean_image=False, ten_crop=True, pixel_scale=1.0)
    image = torch.arange(16, dtype=torch.uint8).view(1, 4, 4)
    crops = paper_transform(p, None, train=False)(image)
    assert crops.shape == (10, 1, 2, 2)
    as_int = (crops * 255).round().long()
    assert as_int[0, 0].tolist() == [[0, 1], [4, 5]]  # top-left corner
    assert as_int[4, 0].tolist() == [[5, 6], [9, 10]]  # centre
    assert as_int[3, 0].tolist() == [[10, 11], [14, 15]]  # bottom-right corner
    # The last five are the crops of the flipped image: its top-left is the mirrored top-right, and so on.
    for flipped, original in ((5, 1), (6, 0), (7, 3), (8, 2), (9, 4)):
        assert torch.equal(as_int[flipped], as_int[original].flip(-1))


@pytest.mark.parametrize("options, words", [
    ({"input_size": 40, "crop": 32}, ["input_size=40", "crop=32"]),
    ({"pixel_scale": 0}, ["pixel_scale=0"]),
    ({"resize": -1}, ["resize=-1"]),
])
def test_bad_preprocessing_names_the_key(options, words):
    with pytest.raises(ValueError) as err:
        Preprocessing(**options)
    assert all(w in str(err.value) for w in words)


def fmnist(**kw):
    kw = {"root": str(DATA_DIR), "num_workers": 0, "batch_size": 32,
          "preprocess": {"resize": 32, "crop": 32, "input_size": 28, "pixel_scale": 1.0}, **kw}
    return FashionMNISTDataModule(**kw)


def test_fashion_mnist_split_is_fixed_disjoint_and_sized():
    dm = fmnist()
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.data_train) == 55000 and len(dm.data_val) == 5000 and len(dm.data_test) == 10000
    assert not set(dm.data_train.indices) & set(dm.data_val.indices)
    again = fmnist()
    again.prepare_data()
    again.setup("fit")
    assert again.data_val.indices == dm.data_val.indices
    other_seed = fmnist(split_seed=1)
    other_seed.setup("fit")
    assert other_seed.data_val.indices != dm.data_val.indices
    images, labels = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert images.shape == (32, 1, 28, 28) and labels.shape == (32,)
    # The mean image was subtracted: over many training crops the average is near zero.
    assert abs(images.mean().item()) < 0.1
    assert dm.mean.shape == (1, 32, 32)


def test_fashion_mnist_mean_image_matches_an_independent_computation():
    dm = fmnist(subset_size=300)
    dm.prepare_data()
    dm.setup("fit")
    raw = dm.data_train.dataset.data[dm.data_train.indices].float() / 255  # [300, 28, 28] uint8 -> [0, 1]
    resized = torch.nn.functional.interpolate(raw[:, None], size=32, mode="bilinear", antialias=True,
                                              align_corners=False).mean(0)
    assert torch.allclose(dm.mean, resized, atol=2e-3)


def test_missing_fashion_mnist_says_where_and_how(tmp_path):
    dm = fmnist(root=str(tmp_path / "nowhere"), download=False, debian_dir=None)
    with pytest.raises(DatasetNotFoundError) as err:
        dm.prepare_data()
    msg = str(err.value)
    assert str(tmp_path / "nowhere") in msg and "train-images-idx3-ubyte" in msg
    assert "apt-get install dataset-fashion-mnist" in msg


def test_corrupt_fashion_mnist_file_is_named(tmp_path, fashion_mnist_raw):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FashionMNISTDataModule.RAW_SHAPES:
        (raw / name).write_bytes((fashion_mnist_raw / name).read_bytes())
    bad = raw / "t10k-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:5000])  # truncated
    dm = fmnist(root=str(tmp_path), download=False, debian_dir=None)
    with pytest.raises(DatasetNotFoundError, match="t10k-images-idx3-ubyte is corrupt"):
        dm.prepare_data()


def folder_dm(root, **kw):
    return ImageFolderDataModule(root=str(root), num_workers=0, batch_size=4, val_size=0,
                                 preprocess={"resize": 40, "crop": 40, "input_size": 32, "ten_crop": True}, **kw)


def test_image_folder_trains_with_ten_crop_eval(tmp_path):
    dm = folder_dm(make_image_tree(tmp_path))
    assert dm.num_classes == 3
    dm.prepare_data()
    dm.setup("fit")
    images, labels = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert images.shape == (4, 3, 32, 32)
    val_images, val_labels = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    assert val_images.shape == (4, 10, 3, 32, 32)
    assert sorted(set(val_labels.tolist())) <= [0, 1, 2]
    assert len(list(tmp_path.glob("imagenet_mean_r40_c40_*.pt"))) == 1  # cached next to the data


def test_image_folder_missing_root_names_layout(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        _ = folder_dm(tmp_path / "imagenet").num_classes
    assert str(tmp_path / "imagenet" / "train") in str(err.value) and "<class>" in str(err.value)


def test_corrupt_image_is_named_before_training(tmp_path):
    root = make_image_tree(tmp_path)
    bad = root / "train" / "dog" / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    dm = folder_dm(root)
    with pytest.raises(CorruptImageError, match="broken.jpg"):
        dm.prepare_data()  # the mean-image pass decodes every training image


@pytest.mark.parametrize(("name", "mode", "options"), [
    ("rgb.jpg", "RGB", {"quality": 90}), ("grey.jpg", "L", {}), ("cmyk.jpg", "CMYK", {}),
    ("progressive.jpg", "RGB", {"progressive": True}), ("alpha.png", "RGBA", {}), ("palette.png", "P", {}),
    ("still.gif", "RGB", {}), ("photo.bmp", "RGB", {}), ("photo.tif", "RGB", {}),  # the last two: PIL's
])
def test_the_folder_loader_gives_pils_rgb_pixels_in_every_format(tmp_path, name, mode, options):
    from zfexp.data.imagenet import load_pixels

    rng = np.random.default_rng(0)
    smooth = np.cumsum(rng.integers(-8, 9, (45, 61, 3)), axis=1)  # photo-like: JPEG keeps some detail
    Image.fromarray(np.clip(smooth + 128, 0, 255).astype(np.uint8)).convert(mode).save(tmp_path / name, **options)
    pixels = load_pixels(str(tmp_path / name))
    expected = np.array(Image.open(tmp_path / name).convert("RGB"))
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 45, 61)
    assert torch.equal(pixels, torch.from_numpy(expected).permute(2, 0, 1))


@pytest.mark.parametrize("content", [b"not an image at all", "half"])
def test_the_folder_loader_names_a_file_it_cannot_decode(tmp_path, content):
    from zfexp.data.imagenet import load_pixels

    whole = tmp_path / "whole.jpg"
    Image.fromarray(np.full((40, 40, 3), 90, dtype=np.uint8)).save(whole)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(content if isinstance(content, bytes) else whole.read_bytes()[:300])  # "half": truncated
    with pytest.raises(CorruptImageError, match="broken.jpg"):
        load_pixels(str(bad))


def test_missing_cifar10_names_the_folder_and_the_download_switch(tmp_path):
    dm = CIFAR10DataModule(root=str(tmp_path), download=False, num_workers=0)
    assert (dm.num_classes, dm.num_channels) == (10, 3)
    with pytest.raises(DatasetNotFoundError) as err:
        dm.prepare_data()
    assert str(tmp_path / "cifar-10-batches-py") in str(err.value) and "data.download=true" in str(err.value)


def test_two_folders_with_one_name_and_size_never_share_a_cached_mean(tmp_path, monkeypatch):
    # Where the data's folder is read-only the cache falls back to one shared dir; stand it in for every root.
    shared = tmp_path / "user_cache"
    monkeypatch.setattr(ImageFolderDataModule, "cache_dir", property(lambda self: shared))
    means = []
    for name, seed in (("a", 0), ("b", 1)):
        dm = folder_dm(make_image_tree(tmp_path / name / "imagenet", seed=seed), test_dir="val")
        dm.prepare_data()
        dm.setup("fit")
        means.append(dm.mean)
    assert len(list(shared.glob("*.pt"))) == 2
    assert not torch.equal(means[0], means[1])  # each is its own folder's mean


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_written_atomically_take_the_permissions_of_any_new_file(tmp_path, umask, mode):
    before = os.umask(umask)
    try:
        write_atomic(tmp_path / "mean.pt", lambda tmp: torch.save(torch.zeros(2), tmp))
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "mean.pt").stat().st_mode) == mode  # a shared tree is readable by the others
