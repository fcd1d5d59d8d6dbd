"""``data.decoder=dali``: an ImageFolder datamodule's images decoded and cut on the GPU by NVIDIA DALI.

DALI reads the files (this rank's share of them under DDP) in the default loaders' order, decodes them with nvJPEG
(and the hardware JPEG decoders where the GPU has them), resizes the smaller side and takes the centre crop on the
GPU; each training image's crop and flip are the default path's, drawn from the image's seed. The batches it yields
are the default loaders' batches, already on the device: ``(uint8 [B, 3, S, S], labels [B], crops [B, 3])`` for
training, ``(uint8 images, labels)`` for evaluation. The rest (the mean image, ``pixel_scale``, the crops and flips,
the 10 crops) is the same :class:`~zfexp.data.batch_preprocessing.BatchPreprocessing` as the default path, so both
train on the same preprocessing; DALI's resampling and JPEG decoder differ from torchvision's by a few grey levels.

An optional extra (``pip install -e .[dali]``: the wheel ``nvidia-dali-cuda130``). ``device="cpu"`` builds the
same pipeline on the CPU (DALI's CPU operators): what the tests check on a machine without a GPU.

The order, the crops and flips, the shares of the ranks and the resumption of an epoch are the default loaders'
(:class:`~zfexp.data.sampling.SeededSampler`, :class:`~zfexp.data.sampling.EvaluationShards`): only the decoder
and the resampling differ.
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
from zfexp.data.sampling import position_state, resume_from
from zfexp.data.transforms import Preprocessing, draw_crop_flip
from zfexp.errors import InvalidValueError, MissingExtraError

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

    files: list[tuple[str, int]]  # (path, label) of every image of the split, in the dataset's order
    preprocess: Preprocessing
    batch_size: int
    train: bool
    device: str = "gpu"  # "gpu": nvJPEG + GPU operators; "cpu": DALI's CPU operators
    device_id: int | None = 0
    num_threads: int = 4


def build_pipeline(split: DaliSplit, files: list[tuple[str, int]], seeds: list[int] | None) -> Any:
    """The DALI pipeline of one pass over ``files``, read in that order: outputs ``images`` (uint8 CHW),
    ``labels`` and, for training, ``crops`` (``[3]`` each, drawn from the images' ``seeds``: DALI draws
    nothing)."""
    dali = import_dali()
    from nvidia.dali import fn, types

    p = split.preprocess
    if p.resize is None or p.crop is None:
        raise InvalidValueError(f"data.decoder=dali cuts every image to data.preprocess.crop after resizing to "
                                f"data.preprocess.resize; both must be set (got resize={p.resize}, crop={p.crop})")
    gpu = split.device == "gpu"

    @dali.pipeline_def(batch_size=split.batch_size, num_threads=split.num_threads,
                       device_id=split.device_id if gpu else None)
    def pipeline():
        # The reader pads the last batch with its last image; the iterator drops the padding (PARTIAL).
        encoded, labels = fn.readers.file(files=[f for f, _ in files], labels=[y for _, y in files], name="reader",
                                          random_shuffle=False, pad_last_batch=True)
        images = fn.decoders.image(encoded, device="mixed" if gpu else "cpu", output_type=types.RGB)
        images = fn.resize(images, resize_shorter=p.resize, antialias=True, interp_type=types.INTERP_LINEAR)
        images = fn.crop(images, crop=(p.crop, p.crop), crop_pos_x=0.5, crop_pos_y=0.5)
        images = fn.transpose(images, perm=[2, 0, 1])  # HWC -> CHW, still uint8
        if seeds is None:
            return images, labels
        return images, labels, fn.external_source(source=CropBatches(seeds, split.preprocess, split.batch_size),
                                                  batch=True, dtype=types.INT64)

    pipe = pipeline()
    pipe.build()
    return pipe


class CropBatches:
    """The crops of one pass, a batch per call, in the reader's order, each drawn as it is needed (a few
    microseconds an image, beside the reader's prefetching): the last batch padded as the reader pads it, and
    the last one repeated should the pipeline read ahead past the pass."""

    def __init__(self, seeds: list[int], preprocess: Preprocessing, batch_size: int):
        self.seeds, self.preprocess = seeds, preprocess
        self.batch_size, self.next = batch_size, 0

    def __call__(self) -> list[Any]:
        start = min(self.next, max(0, len(self.seeds) - 1) // self.batch_size * self.batch_size)
        self.next += self.batch_size
        batch = [seeded_crop(seed, self.preprocess).numpy() for seed in self.seeds[start: start + self.batch_size]]
        return batch + [batch[-1]] * (self.batch_size - len(batch))


def seeded_crop(seed: int, p: Preprocessing) -> torch.Tensor:
    """The training crop and flip ``[3]`` the default path draws for an image seeded with ``seed``
    (:class:`~zfexp.data.sampling.SeededItems` then :class:`~zfexp.data.batch_preprocessing.WithCrops`)."""
    assert p.crop is not None, "build_pipeline cuts every image to data.preprocess.crop, and checks it is set"
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        return draw_crop_flip(p.crop, p.crop, p.input_size, p.hflip)


class DaliLoader:
    """The batches of one split as the default loaders give them (see the module's docstring), on the pipeline's
    device, in the order of ``sampler``: for training a :class:`~zfexp.data.sampling.SeededSampler` (the default
    path's order, crops and flips, this rank's share; Lightning sets its epoch), for evaluation an
    :class:`~zfexp.data.sampling.EvaluationShards`. Each ``iter()`` builds the pass's pipeline: a pass cut short
    (Lightning's sanity check, ``limit_*_batches``) leaves nothing behind for the next. Its state is its position
    in the epoch, as :class:`~zfexp.data.sampling.ResumableLoader`'s: a run resumed mid-epoch continues it."""

    def __init__(self, split: DaliSplit, sampler: Any):
        import_dali()
        self.split, self.sampler = split, sampler
        self.outputs = ["images", "labels", "crops"] if split.train else ["images", "labels"]
        self.batch_size = split.batch_size
        self._yielded, self._finished = 0, False

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.split.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        from nvidia.dali.plugin.base_iterator import LastBatchPolicy
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        order = list(self.sampler)
        self._yielded, self._finished = 0, False
        if self.split.train:
            files, seeds = [self.split.files[index] for index, _ in order], [seed for _, seed in order]
        else:
            files, seeds = [self.split.files[index] for index in order], None
        if files:
            iterator = DALIGenericIterator([build_pipeline(self.split, files, seeds)], self.outputs,
                                           reader_name="reader", last_batch_policy=LastBatchPolicy.PARTIAL)
            for (data,) in iterator:
                batch = [data["images"], data["labels"].reshape(-1).long()]
                if self.split.train:
                    batch.append(data["crops"].long())
                self._yielded += 1
                yield tuple(batch)
        self._finished = True

    def state_dict(self) -> dict[str, Any]:
        if not self.split.train:
            return {}
        return position_state(self.sampler, self.batch_size, self._yielded, self._finished)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.split.train and state_dict:
            resume_from(self.sampler, self.batch_size, state_dict)
