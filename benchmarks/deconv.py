"""Projecting every map of conv5 (and conv3) of ``zfnet`` for 8 images at 224: the batched engine vs
(a) a one-map-per-call loop over a hand-mirrored ZFNet deconvnet and (b) captum's ``NeuronDeconvolution``
looped over maps. Outputs are asserted equal; medians over rounds and the ratios are printed. ``--resnet``:
torchvision's ``resnet18`` (random weights and batch-norm statistics), every map of the block ``layer3.1`` and
of the conv ``layer4.0.conv2`` (read after the block's ReLU), the engine's batched backward vs captum's
``NeuronDeconvolution`` looped over the same units.

The network uses ``norm="none"``: captum differentiates through LRN, the deconvnet passes it through, so
only without it do all three compute the same projections (LRN costs nothing on the way down anyway).

    python benchmarks/deconv.py                  # CPU
    python benchmarks/deconv.py --device cuda    # TF32 off: the equality checks are float32's
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import exact_fp32, timed  # noqa: E402
from zfexp.analysis import DeconvNet, layer_activations  # noqa: E402
from zfexp.models import zfnet  # noqa: E402


def unpool(x: torch.Tensor, switches: torch.Tensor, size: torch.Size) -> torch.Tensor:
    out = x.new_zeros((*x.shape[:2], size[-2] * size[-1]))
    return out.scatter_add_(2, switches.flatten(2), x.flatten(2)).view(*x.shape[:2], *size[-2:])


class HandMirroredDeconv:
    """ZFNet's deconvnet written out layer by layer, projecting one map per call."""

    def __init__(self, net):
        self.net = net
        self.c = {n: net.get_submodule(n) for n in ("conv1", "conv2", "conv3", "conv4", "conv5")}

    @torch.no_grad()
    def forward(self, x):
        c, rec = self.c, {}
        x = F.relu(c["conv1"](x))
        rec["p1in"] = x.shape
        x, rec["s1"] = F.max_pool2d(x, 3, 2, ceil_mode=True, return_indices=True)
        x = F.relu(c["conv2"](x))
        rec["p2in"] = x.shape
        x, rec["s2"] = F.max_pool2d(x, 3, 2, ceil_mode=True, return_indices=True)
        x = F.relu(c["conv4"](F.relu(c["conv3"](x))))
        return rec, F.relu(c["conv5"](x))

    @torch.no_grad()
    def project_one(self, rec, acts, channel: int, top: str) -> torch.Tensor:
        c = self.c
        keep = torch.zeros_like(acts)
        flat = acts[:, channel].flatten(1)
        idx = flat.argmax(1)
        keep[:, channel].view(acts.shape[0], -1).scatter_(1, idx[:, None], flat.gather(1, idx[:, None]))
        x = keep
        if top == "conv5":
            x = F.conv_transpose2d(x, c["conv5"].weight, padding=1)
            x = F.conv_transpose2d(F.relu(x), c["conv4"].weight, padding=1)
        x = F.conv_transpose2d(F.relu(x) if top == "conv5" else x, c["conv3"].weight, padding=1)
        x = F.relu(unpool(x, rec["s2"], rec["p2in"]))
        x = F.conv_transpose2d(x, c["conv2"].weight, stride=2, output_padding=0)
        x = F.relu(unpool(x, rec["s1"], rec["p1in"]))
        return F.conv_transpose2d(x, c["conv1"].weight, stride=2, padding=1, output_padding=1)


def captum_project(net, images, layer: str, channels) -> torch.Tensor:
    from captum.attr import NeuronDeconvolution

    relu = net.get_submodule("relu" + layer[-1])
    acts = layer_activations(net, images, [layer])[layer]
    method = NeuronDeconvolution(net, relu)
    outs = []
    rows = torch.arange(images.shape[0])
    for ch in channels:
        flat = acts[:, ch].flatten(1)
        val, pos = flat.max(1)
        ys, xs = pos // acts.shape[-1], pos % acts.shape[-1]
        grad = method.attribute(images.clone().requires_grad_(True),
                                neuron_selector=lambda out, ch=ch, ys=ys, xs=xs: out[rows, ch, ys, xs])
        outs.append(grad.detach() * val.view(-1, 1, 1, 1))  # captum seeds with 1, the deconvnet with the value
    return torch.stack(outs, 1)


def resnet_rows(args, device: torch.device) -> None:
    from captum.attr import NeuronDeconvolution
    from torchvision.models import resnet18

    torch.manual_seed(0)
    net = resnet18().to(device).eval()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # statistics of a trained network's kind: folding matters
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False  # captum's hooks on ReLU modules
    images = torch.randn(args.images, 3, 224, 224, device=device)
    engine = DeconvNet(net)
    for layer, captum_layer in (("layer3.1", "layer3.1"), ("layer4.0.conv2", "layer4.0")):
        acts = layer_activations(net, images, [layer])[layer]
        n_maps = acts.shape[1]
        subset = list(range(min(args.captum_maps, n_maps)))
        method = NeuronDeconvolution(net, net.get_submodule(captum_layer))
        rows = torch.arange(images.shape[0], device=device)

        def captum_loop():
            outs = []
            for ch in subset:
                val, pos = acts[:, ch].flatten(1).max(1)
                ys, xs = pos // acts.shape[-1], pos % acts.shape[-1]
                grad = method.attribute(images.clone().requires_grad_(True),
                                        neuron_selector=lambda out, ch=ch, ys=ys, xs=xs: out[rows, ch, ys, xs])
                outs.append(grad.detach() * val.view(-1, 1, 1, 1))
            return torch.stack(outs, 1)

        times = {"engine": [], "captum": []}
        for _ in range(args.repeats):
            t, ours = timed(lambda layer=layer: engine.project(images, layer, mode="max"), device)
            times["engine"].append(t)
            t, cap = timed(captum_loop, device)
            times["captum"].append(t * n_maps / len(subset))
            rel = ((ours[:, subset] - cap).norm() / cap.norm()).item()
            assert rel < 1e-4, f"captum differs from the engine at {layer}: {rel:.2e}"
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"resnet18 {layer} ({n_maps} maps x {args.images} images): engine {med['engine']:.2f} s, captum loop "
              f"{med['captum']:.2f} s (scaled from {len(subset)} maps): x{med['captum'] / med['engine']:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", nargs="+", default=["conv5", "conv3"],
                        help="zfnet's layers; the --resnet rows are always layer3.1 and layer4.0.conv2")
    parser.add_argument("--captum-maps", type=int, default=32,
                        help="maps projected by captum per round (its cost is per map; the time is scaled to all)")
    parser.add_argument("--resnet", action="store_true", help="torchvision's resnet18 instead of zfnet")
    args = parser.parse_args()
    device = torch.device(args.device)
    exact_fp32(device)  # the equality checks below hold at float32 tolerance, TF32 off
    if args.resnet:
        print(f"device={device} images={args.images} threads={torch.get_num_threads()}")
        resnet_rows(args, device)
        return
    torch.manual_seed(0)
    net = zfnet(num_classes=1000, norm="none", init="kaiming").to(device).eval()
    images = torch.randn(args.images, 3, 224, 224, device=device)
    engine, mirror = DeconvNet(net), HandMirroredDeconv(net)
    print(f"device={device} images={args.images} threads={torch.get_num_threads()}")
    for layer in args.layers:
        n_maps = net.get_submodule(layer).out_channels
        times = {"engine": [], "mirror": [], "captum": []}
        for _ in range(args.repeats):
            t, ours = timed(lambda: engine.project(images, layer, mode="max"), device)
            times["engine"].append(t)

            def loop():
                rec, x5 = mirror.forward(images)
                acts = x5 if layer == "conv5" else layer_activations(net, images, ["conv3"])["conv3"]
                return torch.stack([mirror.project_one(rec, acts, ch, layer) for ch in range(n_maps)], 1)

            t, theirs = timed(loop, device)
            times["mirror"].append(t)
            rel = ((ours - theirs).norm() / theirs.norm()).item()
            assert rel < 1e-4, f"hand-mirrored deconvnet differs from the engine at {layer}: {rel:.2e}"
            subset = list(range(min(args.captum_maps, n_maps)))
            t, cap = timed(lambda: captum_project(net, images, layer, subset), device)
            times["captum"].append(t * n_maps / len(subset))
            rel = ((ours[:, subset] - cap).norm() / cap.norm()).item()
            assert rel < 1e-4, f"captum differs from the engine at {layer}: {rel:.2e}"
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"{layer} ({n_maps} maps x {args.images} images): engine {med['engine']:.2f} s, "
              f"hand-mirrored loop {med['mirror']:.2f} s, captum loop {med['captum']:.2f} s (scaled from "
              f"{min(args.captum_maps, n_maps)} maps)")
        print(f"{layer}: speed-up over hand-mirrored x{med['mirror'] / med['engine']:.1f}, "
              f"over captum x{med['captum'] / med['engine']:.1f}")


if __name__ == "__main__":
    main()
