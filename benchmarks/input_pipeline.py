"""How fast the paper's ImageNet input pipeline feeds the network: images/s of the training loader, beside the
model-only training step rate of ``zfnet`` at 224 on the same device, and the ratio loader / model (under 1:
the GPU waits for data).

A JPEG tree at ImageNet-like sizes (500x375 and 375x500, quality 90) is cut from real photographs (scikit-learn's
and scikit-image's sample images: random crops, rescaled), and prepared once to 256 px
(``zfexp.data.prepare``). Then, alternating in rounds:

- float in workers: ``data.augment_on=workers``, every step per image in the workers, float batches;
- the same with PIL decoding: the folder loader before :func:`zfexp.data.imagenet.load_pixels` (PIL decodes,
  then a conversion to a tensor), the pipeline as it was before the uint8 path and torchvision's decoding;
- uint8 + device: ``data.augment_on=device`` (the default), uint8 batches, crop/flip/mean on the device;
- the same two on the prepared tree;
- DALI (``data.decoder=dali``) when ``nvidia-dali`` is installed and the device is CUDA;
- Fashion-MNIST as the quickstart reads it (in the training process), per image or as batches.

"uint8 from workers" is what the loader processes deliver, before the device step: on a GPU that step is a few
kernels, on a CPU it runs in the training process.

"Loader" is what the training loop receives: for the device path the batch moved to the device and
preprocessed there (``on_after_batch_transfer``), timed with the GPU finished. Medians over rounds.

    python benchmarks/input_pipeline.py                                 # CPU, workers = all cores
    python benchmarks/input_pipeline.py --device cuda --images 4096 --batch-size 256 --workers 15
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import timed  # noqa: E402
from zfexp.data import FashionMNISTDataModule, ImageFolderDataModule  # noqa: E402
from zfexp.data.imagenet import load_rgb  # noqa: E402
from zfexp.data.prepare import images_to_prepare, resize_image  # noqa: E402
from zfexp.models import zfnet  # noqa: E402

SIZES = ((500, 375), (375, 500))  # the commonest ImageNet sizes (landscape, portrait)
ROOT = Path(__file__).resolve().parents[1]
DALI = importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali") is not None


def photographs() -> list[np.ndarray]:
    """Real photographs ``[H, W, 3]`` uint8 to cut the tree's images from: scikit-learn's two, and scikit-image's
    colour ones when it is installed."""
    from sklearn.datasets import load_sample_images

    photos = list(load_sample_images().images)
    try:
        from skimage import data as skdata
    except ImportError:
        return photos
    for name in ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "hubble_deep_field"):
        try:
            image = getattr(skdata, name)()
        except Exception:  # some need a download on older scikit-image versions
            continue
        if image.ndim == 3 and image.shape[2] == 3:
            photos.append(image)
    return photos


def make_tree(root: Path, n_images: int, n_val: int = 64, seed: int = 0) -> Path:
    """``root/{train,val}/<class>/<i>.JPEG``: random crops of the photographs, rescaled to ImageNet-like sizes."""
    if (root / "train").is_dir():
        return root
    rng = np.random.default_rng(seed)
    photos = photographs()
    for split, count in (("train", n_images), ("val", n_val)):
        for i in range(count):
            photo = photos[rng.integers(len(photos))]
            h, w = photo.shape[:2]
            ch, cw = int(h * rng.uniform(0.5, 1.0)), int(w * rng.uniform(0.5, 1.0))
            top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            crop = Image.fromarray(photo[top: top + ch, left: left + cw]).resize(SIZES[i % 2], Image.BICUBIC)
            folder = root / split / f"n{i % 4:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            crop.save(folder / f"{i:06d}.JPEG", quality=90)
    return root


def prepare_tree(root: Path, out: Path, side: int = 256) -> Path:
    """What ``python -m zfexp.data.prepare`` writes, without its run directory."""
    pairs = [(s, d, side, 95) for s, d in images_to_prepare(root, out, ["train", "val"]) if not d.exists()]
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(resize_image, *zip(*pairs, strict=True), chunksize=32)) if pairs else None
    return out


class DecodedByPIL(ImageFolderDataModule):
    """The datamodule with the folder loader it had before ``load_pixels``: PIL decodes, then ``ToImage``."""

    def _folder(self, split: str, transform):
        folder = super()._folder(split, transform)
        folder.loader = load_rgb
        return folder


def imagenet_tree(root: Path, augment_on: str, args, device: torch.device,
                  pil: bool = False) -> ImageFolderDataModule:
    return (DecodedByPIL if pil else ImageFolderDataModule)(
        root=str(root), batch_size=args.batch_size, num_workers=args.workers, augment_on=augment_on,
        pin_memory=device.type == "cuda")


def dali_tree(root: Path, args) -> ImageFolderDataModule:
    """``data.decoder=dali`` outside a trainer: its loaders on GPU 0."""
    return ImageFolderDataModule(root=str(root), batch_size=args.batch_size, num_workers=args.workers,
                                 decoder="dali")


def fashion_mnist(augment_on: str, args, device: torch.device) -> FashionMNISTDataModule:
    """The quickstart's data as it reads it: 28 px flips, in the training process (no loader workers)."""
    return FashionMNISTDataModule(root=str(ROOT / "data"), batch_size=128, num_workers=0, augment_on=augment_on,
                                  preprocess={"resize": None, "crop": None, "input_size": 28, "pixel_scale": 1.0})


def loader_rate(dm, device: torch.device, device_step: bool = True) -> float:
    """Images/s the training loop receives over one epoch (the first batch, with worker start-up, not timed);
    with ``device_step=False`` what the loader delivers, before the batch goes to the device."""
    dm.prepare_data()
    dm.setup("fit")
    dm.seed = 0
    images, start = 0, None
    for batch in dm.train_dataloader():
        if device_step:
            batch = dm.on_after_batch_transfer([t.to(device, non_blocking=True) for t in batch], 0)
        if start is None:  # the clock starts once the workers deliver
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            continue
        images += batch[0].shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return images / (time.perf_counter() - start)


def model_rate(args, device: torch.device) -> float:
    """Median images/s of ``zfnet`` training steps at 224 on one batch kept on the device (bf16, channels-last
    on CUDA; float32 on the CPU)."""
    cuda = device.type == "cuda"
    fmt = torch.channels_last if cuda else torch.contiguous_format
    torch.manual_seed(0)
    net = zfnet(num_classes=4).to(device, memory_format=fmt).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    images = torch.randn(args.batch_size, 3, 224, 224, device=device).contiguous(memory_format=fmt)
    labels = torch.randint(0, 4, (args.batch_size,), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = F.cross_entropy(net(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    return args.batch_size / statistics.median(timed(step, device)[0] for _ in range(args.model_steps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=512, help="training images in the generated tree")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model-steps", type=int, default=5)
    parser.add_argument("--root", type=Path, default=None, help="where the trees go (kept); default: a temp dir")
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        base = args.root or Path(tmp)
        t0 = time.perf_counter()
        tree = make_tree(base / "jpeg", args.images)
        t1 = time.perf_counter()
        prepared = prepare_tree(tree, base / "prepared")
        print(f"device={device} workers={args.workers} batch={args.batch_size} images={args.images} "
              f"(500x375 / 375x500 JPEG q90; made in {t1 - t0:.0f} s, prepared to 256 px in "
              f"{time.perf_counter() - t1:.1f} s)")
        variants = {  # name: (datamodule, the device step timed)
            "float in workers": (lambda: imagenet_tree(tree, "workers", args, device), True),
            "float in workers, PIL decoding": (lambda: imagenet_tree(tree, "workers", args, device, pil=True), True),
            "uint8 from workers": (lambda: imagenet_tree(tree, "device", args, device), False),
            "uint8 + device step": (lambda: imagenet_tree(tree, "device", args, device), True),
            "float in workers, prepared": (lambda: imagenet_tree(prepared, "workers", args, device), True),
            "uint8 from workers, prepared": (lambda: imagenet_tree(prepared, "device", args, device), False),
            "uint8 + device step, prepared": (lambda: imagenet_tree(prepared, "device", args, device), True),
        }
        if DALI and device.type == "cuda":
            variants["dali (GPU decoding)"] = (lambda: dali_tree(tree, args), True)
            variants["dali (GPU decoding), prepared"] = (lambda: dali_tree(prepared, args), True)
        fashion = {"Fashion-MNIST float, no workers": (lambda: fashion_mnist("workers", args, device), True),
                   "Fashion-MNIST uint8 + device step": (lambda: fashion_mnist("device", args, device), True)}
        rates: dict[str, list[float]] = {name: [] for name in [*variants, *fashion]}
        for r in range(args.repeats):
            for group in (variants, fashion):
                for name in group if r % 2 == 0 else reversed(group):
                    make, device_step = group[name]
                    rates[name].append(loader_rate(make(), device, device_step))
            print(f"round {r}: " + ", ".join(f"{n} {v[-1]:.0f}" for n, v in rates.items()) + " img/s")
    model = model_rate(args, device)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"model-only zfnet training step at 224, batch {args.batch_size}: {model:.0f} img/s")
    print(f"{'loader':<34} {'img/s':>8} {'vs float':>9} {'loader/model':>13}")
    for name, value in med.items():
        base = med["Fashion-MNIST float, no workers" if name.startswith("Fashion") else
                   "float in workers, prepared" if name.endswith("prepared") else "float in workers"]
        ratio = f"{value / model:>13.2f}" if not name.startswith("Fashion") else f"{'':>13}"
        print(f"{name:<34} {value:>8.0f} {value / base:>8.2f}x {ratio}")
    before = med["float in workers, PIL decoding"]
    print(f"uint8 from workers / the float path with PIL decoding (the pipeline before): "
          f"{med['uint8 from workers'] / before:.2f}x on the tree, "
          f"{med['uint8 from workers, prepared'] / before:.2f}x prepared")


if __name__ == "__main__":
    main()
