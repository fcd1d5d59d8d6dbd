"""data.decoder=dali: the error without the extra or a GPU, and DALI's CPU pipeline (when the extra is installed)
giving the default path's batches. Tests marked ``gpu`` need a CUDA device and run only there."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

from zfexp.data import ImageFolderDataModule
from zfexp.errors import InvalidValueError, MissingExtraError

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


def dali_loader(dm, split: str):
    from zfexp.data.dali import DaliLoader, DaliSplit, image_files

    dataset = {"train": dm.data_train, "val": dm.data_val}[split]
    sampler = dm.train_sampler() if split == "train" else dm.evaluation_sampler(dataset)
    return DaliLoader(DaliSplit(image_files(dataset), dm.preprocess, 4, train=split == "train", device="cpu"), sampler)


def assert_same_batches(ours, reference) -> None:
    """The default loader's batches: the same images in the same order, with the same labels and crops; the
    pixels within a few grey levels (another JPEG decoder and resampler)."""
    assert len(ours) == len(reference)
    differences = []
    for dali_batch, default_batch in zip(ours, reference, strict=True):
        for dali_part, default_part in zip(dali_batch[1:], default_batch[1:], strict=True):  # labels, crops
            assert dali_part.tolist() == default_part.tolist()
        assert dali_batch[0].dtype == torch.uint8 and dali_batch[0].shape == default_batch[0].shape
        differences.append((dali_batch[0].float() - default_batch[0].float()).abs().flatten())
    assert torch.cat(differences).mean() < 3.0


@pytest.mark.skipif(not HAS_DALI, reason="needs the dali extra: pip install -e .[dali]")
def test_dali_cpu_pipeline_gives_the_default_paths_batches(tmp_path):
    from zfexp.data.dali import image_files

    dm = datamodule(photo_tree(tmp_path), augment_on="device")
    assert image_files(dm.data_train) == [(p, y) for p, y in dm.data_train.dataset.samples]  # with their labels
    for epoch in (0, 1):  # a new order and new crops every epoch, the default path's
        train = dali_loader(dm, "train")
        train.sampler.set_epoch(epoch)
        reference = dm.train_dataloader()
        reference.sampler.set_epoch(epoch)
        batches = list(train)
        assert len(batches) == len(train) == 3
        assert_same_batches(batches, list(reference))
        inputs, _ = dm.on_after_batch_transfer(batches[0], 0)  # the default path's device step
        assert inputs.shape == (4, 3, 40, 40) and inputs.dtype == torch.float32
    assert_same_batches(list(dali_loader(dm, "val")), list(dm.val_dataloader()))


@pytest.mark.skipif(not HAS_DALI, reason="needs the dali extra: pip install -e .[dali]")
def test_a_dali_pass_cut_short_leaves_the_next_whole_and_a_resumed_epoch_continues(tmp_path):
    dm = datamodule(photo_tree(tmp_path), augment_on="device")
    whole = list(dali_loader(dm, "train"))
    loader = dali_loader(dm, "train")
    next(iter(loader))  # Lightning's sanity check, or limit_train_batches, stops a pass early
    assert_same_batches(list(loader), whole)
    batches = iter(loader)
    first = next(batches)
    state = loader.state_dict()
    assert state == {"batches": 1, "finished": False, "processes": 1}
    resumed = dali_loader(dm, "train")  # another run, resumed from a checkpoint holding that state
    resumed.load_state_dict(state)
    assert_same_batches([first, *resumed], whole)


@pytest.mark.skipif(not HAS_DALI, reason="needs the dali extra: pip install -e .[dali]")
def test_dali_ranks_share_the_evaluation_images_without_repeats(tmp_path):
    from zfexp.data.dali import DaliLoader, DaliSplit, image_files
    from zfexp.data.sampling import EvaluationShards

    dm = datamodule(photo_tree(tmp_path, per_class=3))
    files = image_files(dm.data_val)[:5]  # an odd number of images for two ranks
    shards = [list(DaliLoader(DaliSplit(files, dm.preprocess, 2, train=False, device="cpu"),
                              EvaluationShards(len(files), 2, rank))) for rank in (0, 1)]
    assert [sum(len(y) for _, y in shard) for shard in shards] == [3, 2]  # every image once
    pixels = [torch.cat([x for x, _ in shard]) for shard in shards]
    assert not any(torch.equal(a, b) for a in pixels[0] for b in pixels[1])  # disjoint


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_DALI and torch.cuda.is_available()), reason="needs the dali extra and a CUDA GPU")
def test_dali_gpu_pipeline_matches_its_cpu_pipeline(tmp_path):
    from zfexp.data.dali import DaliLoader, DaliSplit, image_files
    from zfexp.data.sampling import EvaluationShards

    dm = datamodule(photo_tree(tmp_path))
    files = image_files(dm.data_val)
    on_gpu = list(DaliLoader(DaliSplit(files, dm.preprocess, 4, train=False, device="gpu"),
                             EvaluationShards(len(files), 1, 0)))
    on_cpu = list(DaliLoader(DaliSplit(files, dm.preprocess, 4, train=False, device="cpu"),
                             EvaluationShards(len(files), 1, 0)))
    assert on_gpu[0][0].is_cuda
    difference = (torch.cat([x for x, _ in on_gpu]).cpu().float() - torch.cat([x for x, _ in on_cpu]).float()).abs()
    assert difference.mean() < 3.0
