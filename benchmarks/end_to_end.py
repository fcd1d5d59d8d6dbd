"""The paper's recipe end to end: train.py's steady-state training speed against a plain PyTorch loop's, on the same
image tree, loader and device.

Generates an image tree (500x375 and 375x500 JPEGs cut from photographs) prepared to 256 px as
``python -m zfexp.data.prepare`` writes it, then:

1. ``python train.py experiment=paper_imagenet data.root=<tree> callbacks=default logger=csv`` (``trainer=gpu`` on
   CUDA) for ``--epochs`` epochs: its steady-state images/s is ``perf/train_img_per_s`` in its ``metrics.json``
   (``TrainingSpeed``: the warm-up, the first step of each epoch, validation and checkpoints left out), the last
   epoch's;
2. a plain loop over the same datamodule's training loader (the same loader processes, batch, uint8 pixels and
   preprocessing on the device), the same network, precision and per-step work (the divergence check on the
   device, fused SGD, filter renormalisation, the training metrics), timed over its last epoch after its first
   step, the device finished at both ends.

Prints both rates and their ratio (train.py / plain; 1.0: the framework costs nothing).

    python benchmarks/end_to_end.py --device cuda            # zfnet at 224, batch 128, 4,096 images, 10 epochs
    python benchmarks/end_to_end.py                          # CPU: zfnet_small on 28 px crops of the same tree
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.input_pipeline import make_tree, prepare_tree  # noqa: E402
from benchmarks.plain_loop import PlainStep  # noqa: E402

# Where a CPU's run differs: a network and crops small enough for a few hundred steps on two cores, with the
# quickstart's batch norm and input range (zfnet_small's LRN on 28 px crops in the paper's [-128, 128] diverges).
CPU_OVERRIDES = ["model=zfnet_small", "model.norm=batchnorm", "data.preprocess.resize=32", "data.preprocess.crop=32",
                 "data.preprocess.input_size=28", "data.preprocess.ten_crop=false", "data.preprocess.pixel_scale=1.0"]


def overrides(args, tree: Path) -> list[str]:
    cuda = args.device == "cuda"
    return ["experiment=paper_imagenet", f"data.root={tree}", f"data.num_workers={args.workers}",
            f"data.batch_size={args.batch_size}", f"data.augment_on={'device' if cuda else 'workers'}",
            f"trainer={'gpu' if cuda else 'default'}", "trainer.accelerator=" + ("gpu" if cuda else "cpu"),
            *([] if cuda else CPU_OVERRIDES), *args.override]


def train_py_rate(args, tree: Path, log_dir: Path) -> tuple[float, dict]:
    """``perf/train_img_per_s`` of a train.py run, and its metrics.json."""
    cmd = [sys.executable, str(ROOT / "train.py"), *overrides(args, tree), "callbacks=default", "logger=csv",
           f"trainer.max_epochs={args.epochs}", "test=false", f"hydra.run.dir={log_dir}"]
    print("$ " + " ".join(cmd[1:]), flush=True)
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"train.py failed:\n{done.stderr[-4000:]}")
    metrics = json.loads((log_dir / "metrics.json").read_text())
    return metrics["perf/train_img_per_s"], metrics


def plain_rate(args, tree: Path) -> float:
    """Images/s of a plain loop over the same loader, network and per-step work (its last epoch after its first
    step)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    import zfexp.runs.resolvers  # noqa: F401
    from zfexp.pretrained import build_module

    device = torch.device(args.device)
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides(args, tree), "paths.output_dir=/tmp"])
    torch.backends.cudnn.benchmark = bool(cfg.trainer.get("benchmark"))  # as the run's trainer sets it
    torch.manual_seed(0)
    dm = instantiate(cfg.data, _convert_="all")
    module = build_module(cfg, dm, False)
    dm.prepare_data()
    dm.setup("fit")
    dm.seed = 0
    cuda = device.type == "cuda"
    module = module.to(device).train()
    if cuda:
        module._use_channels_last()
    step = PlainStep(module, bf16=str(cfg.trainer.precision).startswith("bf16"))
    rate = 0.0
    for _ in range(args.plain_epochs):
        images, start = 0, None
        for i, batch in enumerate(dm.train_dataloader()):
            x, y = dm.on_after_batch_transfer([t.to(device, non_blocking=True) for t in batch], 0)
            step(x, y)
            if i == 0:  # as TrainingSpeed: the epoch's first step (loader start-up) is not timed
                if cuda:
                    torch.cuda.synchronize()
                start = time.perf_counter()
            else:
                images += y.numel()
        if cuda:
            torch.cuda.synchronize()
        rate = images / (time.perf_counter() - start)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--images", type=int, default=None, help="training images (default: 4096 CUDA, 1024 CPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 128 (the paper's) CUDA, 32 CPU")
    parser.add_argument("--epochs", type=int, default=None, help="train.py's epochs (default: 10 CUDA, 8 CPU)")
    parser.add_argument("--plain-epochs", type=int, default=2, help="the plain loop's (the last is timed)")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--root", type=Path, default=None, help="where the trees go (kept); default: a temp dir")
    parser.add_argument("override", nargs="*", help="more train.py overrides for both, e.g. module.compile=true")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    args.images = args.images or (4096 if cuda else 1024)
    args.batch_size = args.batch_size or (128 if cuda else 32)
    args.epochs = args.epochs or (10 if cuda else 8)
    with tempfile.TemporaryDirectory() as tmp:
        base = args.root or Path(tmp)
        t0 = time.perf_counter()
        tree = prepare_tree(make_tree(base / "jpeg", args.images), base / "prepared")
        steps = args.epochs * (args.images // args.batch_size)
        print(f"device={args.device} images={args.images} batch={args.batch_size} workers={args.workers} "
              f"epochs={args.epochs} ({steps} steps); tree made and prepared in {time.perf_counter() - t0:.0f} s",
              flush=True)
        ours, metrics = train_py_rate(args, tree, Path(tmp) / "run")
        plain = plain_rate(args, tree)
    print(f"train.py: {ours:.0f} img/s steady state (step {metrics.get('perf/step_ms', float('nan')):.1f} ms; "
          f"run {metrics['wall_time_s']:.0f} s, {metrics['global_step']} steps)")
    print(f"plain loop: {plain:.0f} img/s")
    print(f"ratio train.py/plain = {ours / plain:.3f}")


if __name__ == "__main__":
    main()
