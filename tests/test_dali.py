"""data.decoder=dali: the error without the extra or a GPU, and DALI's CPU pipeline (when the extra is installed)
giving the default path's batches. Tests marked ``gpu`` need a CUDA device and run only there."""

from __future__ import annotations

import importlib.util
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

from zfexp.data import ImageFolderDataModule
from zfexp.errors import InvalidValueError
from zfexp.runs.launchers import MissingExtraError

HAS_DALI = importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali") is not None
PREPROCESS = {"resize": 48, "crop": 48, "input_size": 40, "pixel_scale": 255.0}


def photo_tree(root, per_class: int = 5):
    """Crops of real photographs (smooth enough that two JPEG decoders and resamplers agree closely)."""
    rng = np.random.default_rng(0)
    photos = load_sample_images().images
    for split in ("train", "val"):
        for c, photo in zip(("china", "flower"), photos, strict=True):
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(per_class):
                top, left = rng.integers(0, 100, 2)
                crop = photo[top: top + 300, left: left + 400 - 20 * i]
                Image.fromarray(crop).resize((crop.shape[1] // 4, crop.shape[0] // 4)).save(folder / f"{i}.jpg",
                                                                                            quality=95)
    return root


def datamodule(root, **kwargs) -> ImageFolderDataModule:
    dm = ImageFolderDataModule(root=str(root), num_workers=0, batch_size=4, val_size=0, preprocess=PREPROCESS,
                               **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_bad_decoder_is_named(tmp_path):
    with pytest.raises(InvalidValueError, match="data.decoder='nvjpeg'; valid for imagenet: cpu, dali"):
        ImageFolderDataModule(root=str(tmp_path), decoder="nvjpeg")
    with pytest.raises(InvalidValueError, match="data.decoder=dali needs data.augment_on=device or auto"):
        ImageFolderDataModule(root=str(tmp_path), decoder="dali", augment_on="workers")


@pytest.mark.skipif(HAS_DALI, reason="checks the error of a machine without the dali extra")
def test_dali_without_the_extra_names_it_and_the_fallback(tmp_path):
    with pytest.raises(MissingExtraError, match=r"pip install -e \.\[dali\].*data\.decoder=cpu"):
        ImageFolderDataModule(root=str(tmp_path), decoder="dali")


@pytest.mark.skipif(not HAS_DALI, reason="needs the dali extra: pip install -e .[dali]")
def test_dali_on_a_cpu_trainer_names_the_fallback(tmp_path):
    from zfexp.data.dali import check_dali_device

    with pytest.raises(InvalidValueError, match="trains on cpu.*data.decoder=cpu"):
        check_dali_device(torch.device("cpu"))


@pytest.mark.skipif(not HAS_DALI, reason="needs the dali extra: pip install -e .[dali]")
def test_dali_cpu_pipeline_gives_the_default_paths_batches(tmp_path):
    from zfexp.data.dali import DaliLoader, DaliSplit, image_files

    dm = datamodule(photo_tree(tmp_path))
    train_files = image_files(dm.data_train)
    assert train_files == [(p, y) for p, y in dm.data_train.dataset.samples]  # every image with its label

    train = DaliLoader(DaliSplit(train_files, dm.preprocess, 4, train=True, seed=1, device="cpu"))
    seen: Counter = Counter()
    batches = list(train)
    assert len(batches) == len(train) == 3
    for images, labels, crops in batches:
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 48, 48)
        assert crops.shape == (images.shape[0], 3) and crops[:, :2].min() >= 0 and crops[:, :2].max() <= 8
        seen.update(labels.tolist())
        inputs, _ = dm.on_after_batch_transfer((images, labels, crops), 0)  # the default path's device step
        assert inputs.shape == (images.shape[0], 3, 40, 40) and inputs.dtype == torch.float32
    assert seen == Counter(y for _, y in train_files)  # one epoch: each image once
    all_crops = torch.cat([c for *_, c in batches])
    assert len({tuple(c[:2]) for c in all_crops.tolist()}) > 3 and 0 < int(all_crops[:, 2].sum()) < len(all_crops)

    # Evaluation: the same images in the same order as the default loader, pixels within a few grey levels.
    val = DaliLoader(DaliSplit(image_files(dm.data_val), dm.preprocess, 4, train=False, seed=1, device="cpu"))
    ours = list(val)
    reference = list(dm.val_dataloader())
    assert [y.tolist() for _, y in ours] == [y.tolist() for _, y in reference]
    difference = (torch.cat([x for x, _ in ours]).float() - torch.cat([x for x, _ in reference]).float()).abs()
    assert difference.mean() < 3.0, difference.mean()


@pytest.mark.skipif(not HAS_DALI, reason="needs the dali extra: pip install -e .[dali]")
def test_dali_shards_split_the_files_between_ranks(tmp_path):
    from zfexp.data.dali import DaliLoader, DaliSplit, image_files

    dm = datamodule(photo_tree(tmp_path, per_class=3))
    files = image_files(dm.data_val)
    shards = [DaliLoader(DaliSplit(files, dm.preprocess, 2, train=False, seed=1, shard_id=r, num_shards=2,
                                   device="cpu")) for r in (0, 1)]
    pixels = [torch.cat([x for x, _ in shard]) for shard in shards]
    assert [len(p) for p in pixels] == [3, 3] and [len(s) for s in shards] == [2, 2]
    assert not any(torch.equal(a, b) for a in pixels[0] for b in pixels[1])  # disjoint halves


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_DALI and torch.cuda.is_available()), reason="needs the dali extra and a CUDA GPU")
def test_dali_gpu_pipeline_matches_its_cpu_pipeline(tmp_path):
    from zfexp.data.dali import DaliLoader, DaliSplit, image_files

    dm = datamodule(photo_tree(tmp_path))
    files = image_files(dm.data_val)
    on_gpu = list(DaliLoader(DaliSplit(files, dm.preprocess, 4, train=False, seed=1, device="gpu")))
    on_cpu = list(DaliLoader(DaliSplit(files, dm.preprocess, 4, train=False, seed=1, device="cpu")))
    assert on_gpu[0][0].is_cuda
    difference = (torch.cat([x for x, _ in on_gpu]).cpu().float() - torch.cat([x for x, _ in on_cpu]).float()).abs()
    assert difference.mean() < 3.0
