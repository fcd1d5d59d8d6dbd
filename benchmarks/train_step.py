"""Lightning's training loop vs a plain PyTorch loop: same model, data, batch size and per-step work.

Both loops run ``ImageClassifier.training_step``'s math: forward, cross-entropy, backward, SGD step and the
torchmetrics top-1/top-5 updates, on the same batches of real Fashion-MNIST, preprocessed and already on the
device before the clock starts: no loader, no collation, no copy to the device is timed, only the loop (the
input pipeline has its own benchmark, input_pipeline.py). Rounds alternate between the two implementations;
the first ``--warmup`` steps of every round are not timed. Prints images/s per round, the medians, and
the ratio Lightning / plain (1.0 = no overhead).

    python benchmarks/train_step.py                       # CPU, zfnet_small, 28 px
    python benchmarks/train_step.py --device cuda --preset zfnet --size 224 --batch-size 256 \
        --precision bf16-mixed --channels-last [--norm batchnorm] [--compile]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import lightning as L
import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zfexp.data import FashionMNISTDataModule  # noqa: E402
from zfexp.module import ImageClassifier  # noqa: E402


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
    net = {"_target_": f"zfexp.models.{args.preset}", **({"norm": args.norm} if args.norm else {})}
    return ImageClassifier(net=net, num_classes=num_classes, in_channels=args.channels, input_size=args.size,
                           lr=0.01, lr_plateau=None, channels_last=args.channels_last, compile=args.compile)


class StepClock(L.Callback):
    """Wall time from the start of step ``warmup`` to the end of the last step."""

    def __init__(self, warmup: int, device: torch.device):
        self.warmup, self.device, self.start, self.end = warmup, device, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            sync(self.device)
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        sync(self.device)
        self.end = time.perf_counter()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def lightning_round(args, batches: list, device: torch.device) -> float:
    module = make_module(args)
    clock = StepClock(args.warmup, device)
    trainer = L.Trainer(max_steps=args.warmup + args.steps, accelerator=device.type, devices=1,
                        precision=args.precision, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=[clock])
    trainer.fit(module, train_dataloaders=DeviceBatches(batches[: args.warmup + args.steps]))
    return args.steps * args.batch_size / (clock.end - clock.start)


def plain_round(args, batches: list, device: torch.device) -> float:
    module = make_module(args).to(device).train()
    optimizer = module.configure_optimizers()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16-mixed")
    start = None
    for step, (images, labels) in enumerate(batches[: args.warmup + args.steps]):
        if step == args.warmup:
            sync(device)
            start = time.perf_counter()
        with autocast:
            logits = module._step_net(images)
            loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        module.train_metrics.update(logits.detach(), labels)
    sync(device)
    return args.steps * args.batch_size / (time.perf_counter() - start)


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
    args = parser.parse_args()
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    device = torch.device(args.device)
    batches = batches_on_device(args.warmup + args.steps, args.batch_size, args.size, args.channels, device)
    print(f"device={device} preset={args.preset} size={args.size} batch={args.batch_size} steps={args.steps} "
          f"precision={args.precision} channels_last={args.channels_last} norm={args.norm or 'preset'} "
          f"compile={args.compile} threads={torch.get_num_threads()}")
    results = {"lightning": [], "plain": []}
    for r in range(args.repeats):
        order = ("lightning", "plain") if r % 2 == 0 else ("plain", "lightning")
        for name in order:
            fn = lightning_round if name == "lightning" else plain_round
            results[name].append(fn(args, batches, device))
        print(f"round {r}: lightning {results['lightning'][-1]:.0f} img/s, plain {results['plain'][-1]:.0f} img/s")
    med = {k: statistics.median(v) for k, v in results.items()}
    ratio = med["lightning"] / med["plain"]
    print(f"median images/s: lightning {med['lightning']:.0f}, plain PyTorch {med['plain']:.0f}")
    print(f"ratio lightning/plain = {ratio:.3f}  (overhead {100 * (1 - ratio):+.1f}%)")


if __name__ == "__main__":
    main()
