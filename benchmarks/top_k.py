"""Fig. 2's top-9 at the end of a quickstart run: every layer's top-k from one pass over the validation set
(``top_activations_by_layer``, what ``TopActivations`` and ``zfexp.analyze`` do) vs one pass per layer (each
layer's own ``top_activations``). The results are asserted equal; medians over alternating rounds.

The network is the quickstart's ``zfnet_small`` (batch norm, no dropout), from ``--ckpt`` (a train.py
checkpoint) or with random weights; the data: the quickstart's 5,000 validation images of Fashion-MNIST, one
centre crop each (``analysis_dataset``), batches of 256 as the callback reads them.

    python benchmarks/top_k.py [--ckpt logs/train/runs/<time>/checkpoints/last.ckpt] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.timing import timed  # noqa: E402
from zfexp.analysis import top_activations, top_activations_by_layer  # noqa: E402
from zfexp.analysis.map_choice import chosen_maps  # noqa: E402
from zfexp.data import FashionMNISTDataModule  # noqa: E402
from zfexp.models import zfnet_small  # noqa: E402
from zfexp.module import ImageClassifier  # noqa: E402

LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ckpt", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    dm = FashionMNISTDataModule(root=str(ROOT / "data"), num_workers=0,
                                preprocess={"resize": None, "crop": None, "input_size": 28, "pixel_scale": 1.0})
    dm.prepare_data()
    dataset = dm.analysis_dataset("val")
    loader = DataLoader(dataset, batch_size=256, shuffle=False)
    torch.manual_seed(0)
    if args.ckpt:
        net = ImageClassifier.load_from_checkpoint(args.ckpt, map_location="cpu").net
    else:
        net = zfnet_small(num_classes=10, in_channels=1, norm="batchnorm", dropout=0.0)
    net = net.to(device).eval()
    maps = chosen_maps(net, LAYERS, 4, 0)
    times: dict[str, list[float]] = {"one pass": [], "a pass per layer": []}
    for r in range(args.repeats):
        for name in times if r % 2 == 0 else reversed(times):
            if name == "one pass":
                t, together = timed(lambda: top_activations_by_layer(net, loader, maps, k=9, device=device,
                                                                     progress=False), device)
            else:
                t, alone = timed(lambda: {layer: top_activations(net, loader, layer, m, k=9, device=device,
                                                                 progress=False) for layer, m in maps.items()},
                                 device)
            times[name].append(t)
        print(f"round {r}: " + ", ".join(f"{n} {v[-1]:.2f} s" for n, v in times.items()))
    for layer in LAYERS:
        assert torch.equal(together[layer].indices, alone[layer].indices), layer
        assert torch.equal(together[layer].values, alone[layer].values), layer
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"top-9 of {', '.join(LAYERS)} (4 maps each) over {len(dataset)} validation images on {device}: "
          f"one pass {med['one pass']:.2f} s, a pass per layer {med['a pass per layer']:.2f} s, "
          f"x{med['a pass per layer'] / med['one pass']:.1f}")


if __name__ == "__main__":
    main()
