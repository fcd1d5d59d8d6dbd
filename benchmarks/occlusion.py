"""Occlusion sensitivity: our ``occlusion_maps`` (every output of Fig. 7: true-class probability, top label,
feature-map activity and the deconv projection) vs captum's ``Occlusion`` computing only the true-class
probability difference, with the same square, stride, fill and batch of occluded copies. The probability
maps are asserted equal (captum's per-pixel attribution = the mean drop over the squares covering a pixel).
Ours runs incrementally (each layer computed only where the square changes it); the plain batched way
(every occluded copy through the whole network) is timed beside it for reference.

    python benchmarks/occlusion.py                  # CPU
    python benchmarks/occlusion.py --device cuda    # TF32 off: the equality checks are float32's
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import exact_fp32, timed  # noqa: E402
from zfexp.analysis import occlusion_maps  # noqa: E402
from zfexp.models import zfnet, zfnet_small  # noqa: E402

CASES = {
    # name: (builder, images [N, C, S, S], patch, stride, batch of occluded copies)
    "zfnet": (lambda: zfnet(num_classes=1000, init="kaiming"), (2, 3, 224, 224), 48, 16, 64),
    "zfnet_small": (lambda: zfnet_small(num_classes=10, in_channels=1, init="kaiming"), (16, 1, 28, 28), 7, 2, 256),
}


def main() -> None:
    from captum.attr import Occlusion

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = parser.parse_args()
    device = torch.device(args.device)
    exact_fp32(device)  # the equality checks below hold at float32 tolerance, TF32 off
    print(f"device={device} threads={torch.get_num_threads()}")
    for name in args.cases:
        build, shape, patch, stride, batch = CASES[name]
        torch.manual_seed(0)
        net = build().to(device).eval()
        images = torch.randn(*shape, device=device)
        with torch.no_grad():
            labels = net(images).argmax(1)  # a class the network gives weight to, so that the maps move
        captum = Occlusion(lambda x: net(x).softmax(-1))
        times = {"ours": [], "plain": [], "captum": []}
        # One untimed round first: every implementation's first call builds its convolution kernels.
        for round_ in range(args.repeats + 1):  # alternating rounds, so that drifts of a noisy machine hit all alike
            t, ours = timed(lambda: occlusion_maps(net, images, labels, patch, stride, batch_size=batch), device)
            times["ours"].append(t)
            t, plain = timed(lambda: occlusion_maps(net, images, labels, patch, stride, batch_size=batch,
                                                    incremental=False), device)
            times["plain"].append(t)
            with torch.no_grad():
                t, theirs = timed(lambda: captum.attribute(images, sliding_window_shapes=(shape[1], patch, patch),
                                                           strides=(shape[1], stride, stride), baselines=0.0,
                                                           target=labels, perturbations_per_eval=batch), device)
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
        print(f"{name} ({shape[0]} images {shape[2]}px, patch {patch} stride {stride}: {positions} positions each): "
              f"ours {med['ours']:.2f} s, plain batched {med['plain']:.2f} s, captum {med['captum']:.2f} s")
        print(f"{name}: speed-up over captum x{med['captum'] / med['ours']:.1f} "
              f"(plain batched x{med['captum'] / med['plain']:.1f})")


if __name__ == "__main__":
    main()
