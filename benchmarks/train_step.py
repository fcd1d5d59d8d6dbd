"""Lightning's training loop, as train.py runs it, vs a plain PyTorch loop doing the same work per step.

Per step, both: the forward and cross-entropy (bf16 autocast with ``--precision bf16-mixed``), backward, the
divergence check on the device (is the loss or a gradient not finite: the flag handed to fused SGD as
``found_inf``, which skips a diverged update there), fused SGD, filter renormalisation of every conv to RMS 0.1,
and the training metrics (top-1 and top-5 error, mean class accuracy, the mean loss). The Lightning side is
``ImageClassifier`` with the callbacks of ``callbacks=default`` (checkpoints, LR monitor, training speed, progress
lines, filter renormalisation) and a CSV logger; the plain loop is what one writes by hand. Both take the same
batches of real Fashion-MNIST, preprocessed and already on the device before the clock starts: the loop is timed,
not the loader (``input_pipeline.py`` and ``end_to_end.py`` time that). Rounds alternate between the two; the first
``--warmup`` steps of each round are not timed; both clocks stop when the last step has finished on the device.

Prints images/s per round, the medians, the ratio Lightning / plain (1.0: no overhead) and the time Lightning adds
to a step in ms. With ``--tiny`` (a network whose step is almost all overhead) that is the host time Lightning and
the run's callbacks add to each step.

    python benchmarks/train_step.py                       # CPU, zfnet_small, 28 px
    python benchmarks/train_step.py --tiny                # CPU: Lightning's fixed cost per step
    python benchmarks/train_step.py --device cuda --preset zfnet --size 224 --channels 3 --batch-size 256 \
        --precision bf16-mixed --channels-last [--norm batchnorm] [--compile]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import zfexp.runs.resolvers  # noqa: E402, F401  (the configs' resolvers)
from benchmarks.plain_loop import PlainStep  # noqa: E402
from zfexp.data import FashionMNISTDataModule  # noqa: E402
from zfexp.module import ImageClassifier  # noqa: E402
from zfexp.runs.config_groups import instantiate_group  # noqa: E402

TINY_WIDTHS = {"conv1": 4, "conv2": 4, "conv3": 4, "conv4": 4, "conv5": 4, "fc6": 8, "fc7": 8}


def batches_on_device(n_batches: int, batch_size: int, size: int, channels: int,
                      device: torch.device, distinct: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n_batches`` batches ``([batch_size, channels, size, size], [batch_size])`` of preprocessed Fashion-MNIST
    training images (resized to ``size``, grey copied to ``channels``), on ``device``: ``distinct`` of them,
    repeated (device memory for 8 batches, not for every step)."""
    n = min(n_batches, distinct) * batch_size
    preprocess = {"resize": 32, "crop": 32, "input_size": 28, "pixel_scale": 1.0}  # the fashion_mnist config's
    dm = FashionMNISTDataModule(root=str(ROOT / "data"), num_workers=0, subset_size=min(n, 55000),
                                batch_size=min(n, 55000), preprocess=preprocess)
    dm.prepare_data()
    dm.setup("fit")
    images, labels = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    reps = -(-n // images.shape[0])
    images, labels = images.repeat(reps, 1, 1, 1)[:n], labels.repeat(reps)[:n]
    batches = []
    for x, y in zip(images.split(batch_size), labels.split(batch_size), strict=True):
        if size != 28 or channels != 1:
            x = F.interpolate(x, size=size, mode="bilinear").expand(-1, channels, -1, -1)
        batches.append((x.contiguous().to(device), y.to(device)))
    return [batches[i % len(batches)] for i in range(n_batches)]


class DeviceBatches:
    """Batches already on the device, as one loader for ``trainer.fit`` (a plain list would be read as a list
    of loaders); Lightning's transfer to the device then has nothing to copy."""

    def __init__(self, batches: list):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def make_module(args, num_classes: int = 10) -> ImageClassifier:
    torch.manual_seed(0)
    net = {"_target_": f"zfexp.models.{args.preset}", **({"norm": args.norm} if args.norm else {}),
           **({"widths": TINY_WIDTHS} if args.tiny else {})}
    return ImageClassifier(net=net, num_classes=num_classes, in_channels=args.channels, input_size=args.size,
                           lr=0.01, lr_plateau=None, channels_last=args.channels_last, compile=args.compile)


def default_callbacks(run_dir: Path) -> list[L.Callback]:
    """The callbacks of ``callbacks=default``, as train.py builds them for a run in ``run_dir``."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["callbacks=default", f"paths.output_dir={run_dir}",
                                          "callbacks.progress_bar.terminal=false"])
    return instantiate_group(cfg.callbacks, "callback")


class StepClock(L.Callback):
    """Wall time from the start of step ``warmup`` to the end of the last step, the device finished."""

    def __init__(self, warmup: int, last: int, device: torch.device):
        self.warmup, self.last, self.device, self.start, self.end = warmup, last, device, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            sync(self.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.last:
            sync(self.device)
            self.end = time.perf_counter()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def lightning_round(args, batches: list, device: torch.device) -> float:
    """Seconds of ``args.steps`` steps of train.py's loop: the module and the default callbacks."""
    module = make_module(args)
    steps = args.warmup + args.steps
    clock = StepClock(args.warmup, steps, device)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = L.Trainer(max_steps=steps, accelerator=device.type, devices=1, precision=args.precision,
                            logger=L.pytorch.loggers.CSVLogger(run_dir, name="csv"), num_sanity_val_steps=0,
                            limit_val_batches=0, callbacks=[*default_callbacks(Path(run_dir)), clock],
                            default_root_dir=run_dir)
        trainer.fit(module, train_dataloaders=DeviceBatches(batches[:steps]))
    return clock.end - clock.start


def plain_round(args, batches: list, device: torch.device) -> float:
    """Seconds of ``args.steps`` steps of the same work by hand."""
    step = PlainStep(make_module(args).to(device).train(), bf16=args.precision == "bf16-mixed")
    start = None
    for i, (images, labels) in enumerate(batches[: args.warmup + args.steps]):
        if i == args.warmup:
            sync(device)
            start = time.perf_counter()
        step(images, labels)
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="zfnet_small")
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--norm", choices=["lrn", "batchnorm", "none"], default=None, help="default: the preset's")
    parser.add_argument("--compile", action="store_true", help="module.compile=true (warmup steps compile)")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="cuDNN's autotuning on, for both (trainer=gpu's benchmark: true)")
    parser.add_argument("--tiny", action="store_true",
                        help="widths of 4 filters and batch 16: a step that is almost all overhead")
    args = parser.parse_args()
    if args.tiny:
        args.batch_size = 16
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    batches = batches_on_device(args.warmup + args.steps, args.batch_size, args.size, args.channels, device)
    print(f"device={device} preset={args.preset}{' (tiny)' if args.tiny else ''} size={args.size} "
          f"batch={args.batch_size} steps={args.steps} precision={args.precision} "
          f"channels_last={args.channels_last} norm={args.norm or 'preset'} compile={args.compile} "
          f"cudnn_benchmark={args.cudnn_benchmark} "
          f"threads={torch.get_num_threads()}")
    seconds: dict[str, list[float]] = {"lightning": [], "plain": []}
    for r in range(args.repeats):
        for name in ("lightning", "plain") if r % 2 == 0 else ("plain", "lightning"):
            seconds[name].append((lightning_round if name == "lightning" else plain_round)(args, batches, device))
        rates = {k: args.steps * args.batch_size / v[-1] for k, v in seconds.items()}
        print(f"round {r}: lightning {rates['lightning']:.0f} img/s, plain {rates['plain']:.0f} img/s")
    step_ms = {k: 1e3 * statistics.median(v) / args.steps for k, v in seconds.items()}
    rate = {k: args.batch_size / (ms / 1e3) for k, ms in step_ms.items()}
    print(f"median images/s: lightning {rate['lightning']:.0f}, plain PyTorch {rate['plain']:.0f}")
    print(f"median ms per step: lightning {step_ms['lightning']:.2f}, plain {step_ms['plain']:.2f}; "
          f"Lightning adds {step_ms['lightning'] - step_ms['plain']:.2f} ms per step")
    ratio = rate["lightning"] / rate["plain"]
    print(f"ratio lightning/plain = {ratio:.3f}  (overhead {100 * (1 - ratio):+.1f}%)")


if __name__ == "__main__":
    main()
