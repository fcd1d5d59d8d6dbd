"""uint8 batches preprocessed on the device give the numbers of the per-image float pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset
from torchvision.transforms.v2 import functional as TF

from zfexp.data import FashionMNISTDataModule, ImageFolderDataModule, compute_mean_image
from zfexp.data.batch_preprocessing import BatchPreprocessing, crop_flip
from zfexp.data.transforms import Preprocessing
from zfexp.errors import InvalidValueError

from .conftest import DATA_DIR


@pytest.mark.parametrize("method", ["slices", "gather"])
def test_crop_flip_reads_each_images_window_and_mirrors_it(method):
    images = torch.arange(2 * 1 * 4 * 5, dtype=torch.uint8).view(2, 1, 4, 5)
    crops = torch.tensor([[1, 2, 0], [0, 1, 1]])  # (top, left, flip)
    out = crop_flip(images, crops, size=2, method=method)
    assert out.shape == (2, 1, 2, 2) and out.is_contiguous()
    assert out[0, 0].tolist() == [[7, 8], [12, 13]]  # rows 1-2, columns 2-3 of image 0 (values 0..19)
    assert out[1, 0].tolist() == [[22, 21], [27, 26]]  # rows 0-1, columns 1-2 of image 1 (20..39), mirrored


@pytest.mark.parametrize("method", ["slices", "gather"])
def test_crop_flip_equals_torchvision_per_image(method):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 11, 9), dtype=torch.uint8, generator=g)
    crops = torch.stack([torch.randint(0, 5, (6,), generator=g), torch.randint(0, 3, (6,), generator=g),
                         torch.randint(0, 2, (6,), generator=g)], 1)
    expected = []
    for image, (top, left, flip) in zip(images, crops.tolist(), strict=True):
        crop = TF.crop(image, top, left, 7, 7)
        expected.append(TF.horizontal_flip(crop) if flip else crop)
    assert torch.equal(crop_flip(images, crops, 7, method=method), torch.stack(expected))
    # The mean image is cut through a view expanded over the batch.
    mean = torch.rand(3, 11, 9)
    expected_mean = torch.stack([TF.horizontal_flip(TF.crop(mean, t, le, 7, 7)) if f else TF.crop(mean, t, le, 7, 7)
                                 for t, le, f in crops.tolist()])
    assert torch.equal(crop_flip(mean.expand(6, -1, -1, -1), crops, 7, method=method), expected_mean)


def _fashion(augment_on: str, **preprocess) -> FashionMNISTDataModule:
    options = {"resize": 32, "crop": 32, "input_size": 28, "pixel_scale": 255.0, **preprocess}
    dm = FashionMNISTDataModule(root=str(DATA_DIR), num_workers=0, batch_size=16, subset_size=48,
                                preprocess=options, augment_on=augment_on)
    dm.prepare_data()
    dm.setup("fit")
    dm.seed = 7
    return dm


def _model_inputs(dm, loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [dm.on_after_batch_transfer(batch, 0) for batch in loader]


def test_device_path_equals_worker_path_for_training_crops_flips_and_mean():
    on_device, in_workers = _fashion("device"), _fashion("workers")
    assert torch.equal(on_device.mean, in_workers.mean)
    got = _model_inputs(on_device, on_device.train_dataloader())
    want = _model_inputs(in_workers, in_workers.train_dataloader())
    assert len(got) == len(want) == 3
    for (x, y), (x_ref, y_ref) in zip(got, want, strict=True):
        assert x.dtype == torch.float32 and x.shape == x_ref.shape == (16, 1, 28, 28)
        assert torch.equal(y, y_ref)
        assert torch.equal(x, x_ref)  # the same operations in the same order: bit for bit
    # The draws did something: crops at several offsets, some flipped (else equality would be trivial).
    raw = next(iter(on_device.train_dataloader()))
    assert raw[0].dtype == torch.uint8 and raw[0].shape == (16, 1, 32, 32)
    assert len({tuple(c[:2]) for c in raw[2].tolist()}) > 4 and 0 < int(raw[2][:, 2].sum()) < 16


def test_device_path_equals_worker_path_for_evaluation():
    on_device, in_workers = _fashion("device"), _fashion("workers")
    for split in ("val_dataloader", "test_dataloader"):
        got = _model_inputs(on_device, getattr(on_device, split)())
        want = _model_inputs(in_workers, getattr(in_workers, split)())
        assert len(got) == len(want) > 0
        for (x, y), (x_ref, y_ref) in zip(got, want, strict=True):
            assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    # The analyses get single float crops either way.
    assert torch.equal(on_device.analysis_dataset("val")[3][0], in_workers.analysis_dataset("val")[3][0])


def _photo_tree(root, n_per_class: int = 3) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n_per_class):
                h, w = (40, 52) if i % 2 else (50, 37)  # landscape and portrait, resized and centre-cropped
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")


def test_device_path_equals_worker_path_for_ten_crops(tmp_path):
    _photo_tree(tmp_path)
    preprocess = {"resize": 32, "crop": 32, "input_size": 24, "ten_crop": True, "pixel_scale": 255.0}
    modules = []
    for augment_on in ("device", "workers"):
        dm = ImageFolderDataModule(root=str(tmp_path), num_workers=0, batch_size=4, val_size=0,
                                   preprocess=preprocess, augment_on=augment_on)
        dm.prepare_data()
        dm.setup("fit")
        modules.append(dm)
    (got, _), (want, _) = (dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0) for dm in modules)
    assert got.shape == want.shape == (4, 10, 3, 24, 24)
    assert torch.equal(got, want)


def test_mean_image_of_uint8_images_is_exact():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (37, 2, 3, 3), dtype=torch.uint8, generator=g)
    mean = compute_mean_image(TensorDataset(images, torch.zeros(37)), batch_size=8)
    exact = images.double().sum(0) / (255 * 37)
    assert mean.dtype == torch.float32 and torch.allclose(mean.double(), exact, rtol=0, atol=1e-7)


def test_batch_preprocessing_checks_the_mean_image_size():
    p = Preprocessing(resize=None, crop=None, input_size=4)
    with pytest.raises(InvalidValueError, match="no mean image"):
        BatchPreprocessing(p, None)
    batch = BatchPreprocessing(p, torch.zeros(1, 6, 6))
    with pytest.raises(InvalidValueError, match=r"\(1, 5, 5\) do not match the mean image \(1, 6, 6\)"):
        batch((torch.zeros(2, 1, 5, 5, dtype=torch.uint8), torch.zeros(2)))


def test_bad_augment_on_is_named():
    with pytest.raises(InvalidValueError, match="data.augment_on='gpu'; valid: auto"):
        FashionMNISTDataModule(root=str(DATA_DIR), augment_on="gpu")
    with pytest.raises(InvalidValueError, match="crop=null with resize=64"):
        ImageFolderDataModule(root="/nowhere", preprocess={"resize": 64, "crop": None, "input_size": 32},
                              augment_on="device")
    # Per image in the workers, images of several sizes are fine.
    ImageFolderDataModule(root="/nowhere", preprocess={"resize": 64, "crop": None, "input_size": 32,
                                                       "mean_image": False}, augment_on="workers")


def test_auto_batches_on_the_device_without_loader_processes_and_per_image_beside_them():
    def resolved(**kwargs):
        return ImageFolderDataModule(root="/nowhere", **kwargs).resolve_augment_on()

    assert resolved(num_workers=0) == "device"  # the work is in the training process either way: batched is faster
    assert resolved(num_workers=2) == "workers"  # no trainer: a CPU, where loader processes work in parallel
    assert resolved(num_workers=0, preprocess={"resize": 64, "crop": None, "input_size": 32}) == "workers"
    assert resolved(num_workers=2, augment_on="device") == "device"  # a choice is kept


def test_loader_batches_cross_as_uint8():
    dm = _fashion("device")
    images, labels = next(iter(DataLoader(dm.data_val, batch_size=4)))
    assert images.dtype == torch.uint8 and images.shape == (4, 1, 32, 32)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_batch_copied_on_the_side_stream_is_the_batch_and_the_compute_stream_waits_for_it():
    from zfexp.data.device_copy import CopyOnSideStream

    device = torch.device("cuda", torch.cuda.current_device())
    batch = [torch.randint(0, 256, (64, 3, 256, 256), dtype=torch.uint8).pin_memory(),
             torch.arange(64).pin_memory()]
    busy = torch.randn(4096, 4096, device=device)
    for _ in range(20):
        busy = busy @ busy.T / 4096  # the compute stream is busy while the copy is issued
    moved = CopyOnSideStream().transfer_batch_to_device(batch, device, 0)
    # Used on the compute stream right away: it waits for the copy there.
    assert torch.equal(moved[0].float().sum().cpu(), batch[0].float().sum())
    assert torch.equal(moved[1].cpu(), batch[1]) and moved[0].device == device
