"""``data.decoder=dali``: an ImageFolder datamodule's images decoded and cut on the GPU by NVIDIA DALI.

DALI reads the files (this rank's shard of them under DDP), decodes them with nvJPEG (and the hardware JPEG
decoders where the GPU has them), resizes the smaller side and takes the centre crop on the GPU, and draws
each training image's crop and flip; the batches it yields are the default loaders' batches, already on the
device: ``(uint8 [B, 3, S, S], labels [B], crops [B, 3])`` for training, ``(uint8 images, labels)`` for
evaluation. The rest (the mean image, ``pixel_scale``, the crops and flips, the 10 crops) is the same
:class:`~zfexp.data.batch_preprocessing.BatchPreprocessing` as the default path, so both train on the same
preprocessing; DALI's resampling and JPEG decoder differ from torchvision's by a few grey levels.

An optional extra (``pip install -e .[dali]``: the wheel ``nvidia-dali-cuda130``). ``device="cpu"`` builds the
same pipeline on the CPU (DALI's CPU operators): what the tests check on a machine without a GPU.

Differences from the default loaders: the order of the images comes from DALI's reader (seeded by the run's
data seed and the rank, reshuffled every epoch), not from :class:`~zfexp.data.sampling.SeededSampler`; a run
resumed mid-epoch starts that epoch's order again rather than skipping the batches it had seen.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from zfexp.data.classes import ClassSubset
from zfexp.data.transforms import Preprocessing
from zfexp.errors import InvalidValueError
from zfexp.runs.launchers import MissingExtraError

DECODERS = ("cpu", "dali")
FALLBACK = "data.decoder=cpu (the default: decoding in the loader processes, the same preprocessing)"


def import_dali() -> Any:
    """The ``nvidia.dali`` package, or an error naming the extra and the fallback."""
    try:
        return importlib.import_module("nvidia.dali")
    except ImportError as err:
        raise MissingExtraError(f"data.decoder=dali needs NVIDIA DALI, which is not installed ({err}). Install the "
                                f"extra: pip install -e .[dali] (the wheel nvidia-dali-cuda130, for CUDA 13 drivers); "
                                f"or use {FALLBACK}.") from err


def check_dali_device(device: torch.device) -> None:
    """DALI's GPU pipeline needs this run to train on a CUDA device."""
    if device.type != "cuda":
        raise InvalidValueError(f"data.decoder=dali decodes on the GPU (nvJPEG), but this run trains on {device.type} "
                                f"(trainer.accelerator); on a machine without a GPU use {FALLBACK}.")


def image_files(dataset: Dataset) -> list[tuple[str, int]]:
    """``(path, label)`` of every item of an ImageFolder dataset, possibly inside ``Subset``/``ClassSubset``
    wrappers, in the dataset's order and with its labels."""
    if isinstance(dataset, Subset):
        inner = image_files(dataset.dataset)
        return [inner[i] for i in dataset.indices]
    if isinstance(dataset, ClassSubset):
        inner = image_files(dataset.dataset)
        return [(inner[i][0], label) for i, label in zip(dataset.indices, dataset.labels, strict=True)]
    samples = getattr(dataset, "samples", None)
    if samples is None:
        raise InvalidValueError(f"data.decoder=dali reads image files; {type(dataset).__name__} has none (use an "
                                f"ImageFolder data config such as data=imagenet, or {FALLBACK})")
    return [(str(path), int(label)) for path, label in samples]


@dataclass(frozen=True)
class DaliSplit:
    """One loader's files and settings."""

    files: list[tuple[str, int]]
    preprocess: Preprocessing
    batch_size: int
    train: bool
    seed: int
    shard_id: int = 0
    num_shards: int = 1
    device: str = "gpu"  # "gpu": nvJPEG + GPU operators; "cpu": DALI's CPU operators
    device_id: int | None = 0
    num_threads: int = 4


def build_pipeline(split: DaliSplit) -> Any:
    """The DALI pipeline of one split; outputs ``images`` (uint8 CHW), ``labels`` and, for training, ``crops``."""
    dali = import_dali()
    from nvidia.dali import fn, types

    p = split.preprocess
    if p.resize is None or p.crop is None:
        raise InvalidValueError(f"data.decoder=dali cuts every image to data.preprocess.crop after resizing to "
                                f"data.preprocess.resize; both must be set (got resize={p.resize}, crop={p.crop})")
    gpu = split.device == "gpu"

    @dali.pipeline_def(batch_size=split.batch_size, num_threads=split.num_threads,
                       device_id=split.device_id if gpu else None, seed=split.seed % 2**31)
    def pipeline():
        encoded, labels = fn.readers.file(
            files=[f for f, _ in split.files], labels=[y for _, y in split.files], name="reader",
            shard_id=split.shard_id, num_shards=split.num_shards, random_shuffle=split.train,
            pad_last_batch=not split.train)
        images = fn.decoders.image(encoded, device="mixed" if gpu else "cpu", output_type=types.RGB)
        images = fn.resize(images, resize_shorter=p.resize, antialias=True, interp_type=types.INTERP_LINEAR)
        images = fn.crop(images, crop=(p.crop, p.crop), crop_pos_x=0.5, crop_pos_y=0.5)
        images = fn.transpose(images, perm=[2, 0, 1])  # HWC -> CHW, still uint8
        if not split.train:
            return images, labels
        slack = p.crop - p.input_size
        top = fn.random.uniform(range=[0, slack], dtype=types.INT32)  # integer ranges are inclusive
        left = fn.random.uniform(range=[0, slack], dtype=types.INT32)
        flip = fn.random.coin_flip(probability=0.5 if p.hflip else 0.0, dtype=types.INT32)
        return images, labels, fn.stack(top, left, flip)

    pipe = pipeline()
    pipe.build()
    return pipe


class DaliLoader:
    """The batches of one split as the default loaders give them (see the module's docstring), on the pipeline's
    device; one pass per ``iter()``. ``len()`` is this shard's number of batches."""

    def __init__(self, split: DaliSplit):
        import_dali()
        from nvidia.dali.plugin.base_iterator import LastBatchPolicy
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        self.split = split
        self.outputs = ["images", "labels", "crops"] if split.train else ["images", "labels"]
        self.iterator = DALIGenericIterator([build_pipeline(split)], self.outputs, reader_name="reader",
                                            last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=True)

    def __len__(self) -> int:
        return math.ceil(math.ceil(len(self.split.files) / self.split.num_shards) / self.split.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        for (data,) in self.iterator:
            batch = [data["images"], data["labels"].reshape(-1).long()]
            if self.split.train:
                batch.append(data["crops"].long())
            yield tuple(batch)
