"""Occlusion sensitivity: our ``occlusion_maps`` (every output of Fig. 7: true-class probability, top label,
feature-map activity and the deconv projection) vs captum's ``Occlusion`` computing only the true-class
probability difference, with the same square, stride, fill and the same number of occluded copies per forward
pass (captum's ``perturbations_per_eval`` applies each perturbation to every image at once: it is given the batch
divided by the number of images). The probability maps are asserted equal (captum's per-pixel attribution = the
mean drop over the squares covering a pixel). Ours picks its way by the device (incremental on a CPU: each layer
computed only where the square changes it; whole occluded copies on a GPU, as many per batch as a quarter of its
free memory holds); the other way is timed beside it. Cases: ``zfnet_small`` trained briefly on real
Fashion-MNIST (16 test images, stride 1), ``zfnet`` at 224 with random weights on photographs (2 images, stride 8;
``zfnet_gpu``: 16).

    python benchmarks/occlusion.py                                     # CPU
    python benchmarks/occlusion.py --device cuda --cases zfnet_gpu zfnet_small   # TF32 off: float32 checks
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.timing import exact_fp32, timed  # noqa: E402
from zfexp.analysis import occlusion_maps  # noqa: E402
from zfexp.analysis.occlusion import copies_per_batch, incremental_pays  # noqa: E402
from zfexp.models import zfnet, zfnet_small  # noqa: E402


def fashion_mnist_case(n_images: int = 16, steps: int = 150) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """``zfnet_small`` trained briefly on real Fashion-MNIST (about 80% right, a few seconds on a CPU) and
    ``n_images`` of its test images with their labels: occluding them moves P(true class) by tenths, as with a
    trained network."""
    from torchvision.datasets import FashionMNIST

    from zfexp.data import FashionMNISTDataModule

    dm = FashionMNISTDataModule(root=str(ROOT / "data"))
    dm._ensure_files()  # extracted from the Debian package (or downloaded) once
    train, test = (FashionMNIST(str(dm.root), train=flag) for flag in (True, False))
    images, labels = train.data[:4096, None].float() / 255 - 0.5, train.targets[:4096]
    torch.manual_seed(0)
    model = zfnet_small(num_classes=10, in_channels=1, init="kaiming", norm="batchnorm")
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, 4096, (64,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(images[idx]), labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), test.data[:n_images, None].float() / 255 - 0.5, test.targets[:n_images]


def photographs_case(n_images: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """``zfnet`` with random weights (no ImageNet weights can be had here) on crops of real photographs at 224;
    labels: the classes it ranks first, so that the maps move."""
    from sklearn.datasets import load_sample_images

    photos = [torch.from_numpy(p.copy()).permute(2, 0, 1).float() / 255 - 0.5 for p in load_sample_images().images]
    crops = [p[:, 20 * i: 20 * i + 224, 30 * i: 30 * i + 224] for i in range(n_images // 2 + 1) for p in photos]
    images = torch.stack(crops[:n_images])
    torch.manual_seed(0)
    model = zfnet(num_classes=1000, init="kaiming").eval()
    with torch.no_grad():
        labels = model(images).argmax(1)
    return model, images, labels


CASES = {
    # name: (model, images [N, C, S, S], labels), patch, stride, occluded copies per batch on a CPU (on a GPU: by
    # its memory)
    "zfnet": (lambda: photographs_case(2), 48, 8, 64),
    "zfnet_small": (lambda: fashion_mnist_case(16), 7, 1, 256),
    # The case sized for a GPU: 16 images at 224, stride 8 (529 positions each).
    "zfnet_gpu": (lambda: photographs_case(16), 48, 8, 64),
}


def main() -> None:
    from captum.attr import Occlusion

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cases", nargs="+", default=["zfnet", "zfnet_small"], choices=list(CASES))
    args = parser.parse_args()
    device = torch.device(args.device)
    exact_fp32(device)  # the equality checks below hold at float32 tolerance, TF32 off
    print(f"device={device} threads={torch.get_num_threads()}")
    for name in args.cases:
        build, patch, stride, batch = CASES[name]
        net, images, labels = build()
        net, images, labels = net.to(device), images.to(device), labels.to(device)
        shape = images.shape
        if device.type == "cuda":
            batch = copies_per_batch(net, images)
        per_eval = max(1, batch // shape[0])  # captum puts each perturbation on every image: N copies apiece
        batch = per_eval * shape[0]
        captum = Occlusion(lambda x, net=net: net(x).softmax(-1))
        times = {"ours": [], "plain": [], "captum": []}
        # One untimed round first: every implementation's first call builds its convolution kernels.
        for round_ in range(args.repeats + 1):  # alternating rounds, so that drifts of a noisy machine hit all alike
            t, ours = timed(lambda: occlusion_maps(net, images, labels, patch, stride, batch_size=batch), device)
            times["ours"].append(t)
            t, plain = timed(lambda: occlusion_maps(net, images, labels, patch, stride, batch_size=batch,
                                                    incremental=not incremental_pays(device)), device)
            times["plain"].append(t)
            with torch.no_grad():
                t, theirs = timed(lambda: captum.attribute(images, sliding_window_shapes=(shape[1], patch, patch),
                                                           strides=(shape[1], stride, stride), baselines=0.0,
                                                           target=labels, perturbations_per_eval=per_eval), device)
            times["captum"].append(t)
            if round_ == 0:
                times = {k: [] for k in times}
            attribution = theirs[:, 0] if shape[1] == 1 else theirs.mean(1)  # the same value in every channel
            ours_px = ours.pixel_attribution(tuple(shape[-2:]))
            err = (ours_px - attribution).abs().max().item()
            assert err < 1e-5, f"{name}: probability maps differ from captum's by {err:.2e}"
            assert torch.allclose(plain.prob_true, ours.prob_true, atol=1e-5)
        med = {k: statistics.median(v) for k, v in times.items()}
        positions = ours.prob_true.shape[1] * ours.prob_true.shape[2]
        other = "plain batched" if incremental_pays(device) else "incremental"
        print(f"{name} ({shape[0]} images {shape[2]}px, patch {patch} stride {stride}: {positions} positions each; "
              f"{batch} occluded copies per forward for both): "
              f"ours {med['ours']:.2f} s ({'incremental' if incremental_pays(device) else 'plain batched'}), "
              f"{other} {med['plain']:.2f} s, captum {med['captum']:.2f} s")
        print(f"{name}: speed-up over captum x{med['captum'] / med['ours']:.1f} ({other} "
              f"x{med['captum'] / med['plain']:.1f})")


if __name__ == "__main__":
    main()
