"""Lightning's training loop vs a plain PyTorch loop: same model, data, batch size and per-step work.

Both loops run ``ImageClassifier.training_step``'s math: forward, cross-entropy, backward, SGD step and the
torchmetrics top-1/top-5 updates, on the same in-memory batches of real Fashion-MNIST (already preprocessed,
so data loading does not mask the loop's own cost). Rounds alternate between the two implementations;
the first ``--warmup`` steps of every round are not timed. Prints images/s per round, the medians, and
the ratio Lightning / plain (1.0 = no overhead).

    python benchmarks/train_step.py                       # CPU, zfnet_small, 28 px
    python benchmarks/train_step.py --device cuda --preset zfnet --size 224 --batch-size 128
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
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zfexp.data import FashionMNISTDataModule  # noqa: E402
from zfexp.module import ImageClassifier  # noqa: E402


def batches_of_real_images(n: int, size: int, channels: int) -> TensorDataset:
    """``n`` preprocessed Fashion-MNIST training images ``[n, channels, size, size]`` with their labels."""
    dm = FashionMNISTDataModule(root=str(ROOT / "data"), num_workers=0, subset_size=n,
                                preprocess={"resize": 32, "crop": 32, "input_size": 28})
    dm.prepare_data()
    dm.setup("fit")
    images, labels = next(iter(DataLoader(dm.data_train, batch_size=n)))
    if size != 28 or channels != 1:
        images = F.interpolate(images, size=size, mode="bilinear").expand(-1, channels, -1, -1).contiguous()
    return TensorDataset(images, labels)


def make_module(args, num_classes: int = 10) -> ImageClassifier:
    torch.manual_seed(0)
    net = {"_target_": f"zfexp.models.{args.preset}"}
    return ImageClassifier(net=net, num_classes=num_classes, in_channels=args.channels, input_size=args.size,
                           lr=0.01, lr_plateau=None, channels_last=args.channels_last)


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


def lightning_round(args, data: TensorDataset, device: torch.device) -> float:
    module = make_module(args)
    clock = StepClock(args.warmup, device)
    trainer = L.Trainer(max_steps=args.warmup + args.steps, accelerator=device.type, devices=1,
                        precision=args.precision, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=[clock])
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=True, drop_last=True)
    trainer.fit(module, train_dataloaders=loader)
    return args.steps * args.batch_size / (clock.end - clock.start)


def plain_round(args, data: TensorDataset, device: torch.device) -> float:
    module = make_module(args).to(device).train()
    optimizer = module.configure_optimizers()
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=True, drop_last=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16-mixed")
    step, start = 0, None
    while step < args.warmup + args.steps:
        for images, labels in loader:
            if step == args.warmup:
                sync(device)
                start = time.perf_counter()
            if step == args.warmup + args.steps:
                break
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with autocast:
                logits = module(images)
                loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            module.train_metrics.update(logits.detach(), labels)
            step += 1
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
    args = parser.parse_args()
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    device = torch.device(args.device)
    data = batches_of_real_images(args.batch_size * 8, args.size, args.channels)
    print(f"device={device} preset={args.preset} size={args.size} batch={args.batch_size} steps={args.steps} "
          f"precision={args.precision} threads={torch.get_num_threads()}")
    results = {"lightning": [], "plain": []}
    for r in range(args.repeats):
        order = ("lightning", "plain") if r % 2 == 0 else ("plain", "lightning")
        for name in order:
            fn = lightning_round if name == "lightning" else plain_round
            results[name].append(fn(args, data, device))
        print(f"round {r}: lightning {results['lightning'][-1]:.0f} img/s, plain {results['plain'][-1]:.0f} img/s")
    med = {k: statistics.median(v) for k, v in results.items()}
    ratio = med["lightning"] / med["plain"]
    print(f"median images/s: lightning {med['lightning']:.0f}, plain PyTorch {med['plain']:.0f}")
    print(f"ratio lightning/plain = {ratio:.3f}  (overhead {100 * (1 - ratio):+.1f}%)")


if __name__ == "__main__":
    main()
