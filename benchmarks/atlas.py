"""The atlas of every unit (``zfexp.atlas``): its projections of every map's top-9 batched across maps (what the
atlas does) vs a forward and a projection per map (what Fig. 2's recipe did per chosen map), asserted equal;
then the whole atlas (the one pass over the images, the projections, the site's pages and PNGs) timed, and once
more with the pass read from its cache.

The default case is the quickstart's: ``zfnet_small`` from ``--ckpt`` (a train.py checkpoint) or with random
weights, every map of conv1-conv5 (352) over Fashion-MNIST's 10,000 test images. ``--zfnet224 N``: ``zfnet`` at
224 px (random weights, 1,376 maps) over N images cut from photographs in an ImageFolder tree, as ImageNet's
would be.

    python benchmarks/atlas.py [--ckpt logs/train/runs/<time>/checkpoints/last.ckpt] [--device cuda]
    python benchmarks/atlas.py --zfnet224 64 --layers conv5 [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.timing import exact_fp32, timed  # noqa: E402
from zfexp.analysis.deconv import DeconvNet  # noqa: E402
from zfexp.analysis.geometry import receptive_field  # noqa: E402
from zfexp.analysis.top_k import top_activations_by_layer  # noqa: E402
from zfexp.analysis.unit_crops import crop_tiles, tile_size  # noqa: E402
from zfexp.atlas import write_atlas  # noqa: E402
from zfexp.atlas.units import layer_chunks, maps_per_chunk  # noqa: E402
from zfexp.recipes import Inputs  # noqa: E402

LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5"]


def per_map_tiles(net, dataset, layer, top, device):
    """The baseline: per map, a forward of its k images, their projections and patches, as Fig. 2's recipe drew
    the few maps it chose (``[K, k, C, s, s]`` projections)."""
    deconv, projections = DeconvNet(net), []
    for j, channel in enumerate(top.channels.tolist()):
        images = torch.stack([dataset[int(i)][0] for i in top.indices[j]])
        with torch.no_grad():
            net(images.to(device)).argmax(1).cpu()
        proj = deconv.project_units(images.to(device), layer, [channel] * len(images)).cpu()
        boxes = [receptive_field(net, layer, tuple(p), images.shape[-2:]) for p in top.positions[j].tolist()]
        size = tile_size(net, layer, images)
        projections.append(crop_tiles(proj, boxes, size))
        crop_tiles(images, boxes, size)
    return torch.stack(projections)


def chunked_tiles(net, dataset, layer, top, device):
    """The atlas's way: the units of a chunk of maps (as many as fit 256 MiB) projected in batches across maps,
    with their patches, predictions and labels (``[K, k, C, s, s]`` projections)."""
    image = dataset[0][0]
    chunk = maps_per_chunk(9, image.shape, tile_size(net, layer, image[None]))
    return torch.cat([c.projections for c in layer_chunks(net, dataset, layer, top, device, None, True, False, chunk)])


def quickstart(args):
    from zfexp.data import FashionMNISTDataModule
    from zfexp.models import zfnet_small
    from zfexp.module import ImageClassifier

    dm = FashionMNISTDataModule(root=str(ROOT / "data"), num_workers=0,
                                preprocess={"resize": None, "crop": None, "input_size": 28, "pixel_scale": 1.0})
    dm.prepare_data()
    torch.manual_seed(0)
    if args.ckpt:
        net = ImageClassifier.load_from_checkpoint(args.ckpt, map_location="cpu").net
    else:
        net = zfnet_small(num_classes=10, in_channels=1, norm="batchnorm", dropout=0.0)
    return net, dm.analysis_dataset("test"), Inputs.of_datamodule(dm), "the quickstart's zfnet_small"


def zfnet224(args):
    from torchvision.datasets import ImageFolder

    from benchmarks.input_pipeline import make_tree
    from zfexp.data.normalization import InputNormalization
    from zfexp.models import zfnet

    tree = make_tree(Path(tempfile.mkdtemp()), args.zfnet224, n_val=0)
    normalization = InputNormalization(resize=256, crop=224)
    torch.manual_seed(0)
    dataset = ImageFolder(str(tree / "train"), transform=normalization.transform())
    return (zfnet(num_classes=1000), dataset, Inputs.of_normalization(normalization, dataset.classes),
            "zfnet at 224 px")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ckpt", default=None)
    parser.add_argument("--zfnet224", type=int, default=0, metavar="N", help="zfnet at 224 px on N images")
    parser.add_argument("--layers", nargs="+", default=LAYERS, help="the layers, every map of each")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    layers = args.layers
    device = torch.device(args.device)
    exact_fp32(device)
    net, dataset, inputs, what = zfnet224(args) if args.zfnet224 else quickstart(args)
    net = net.to(device).eval()
    n = len(dataset)

    # The projections of every map's top-9: batched across maps vs a forward and a projection per map.
    top = top_activations_by_layer(net, DataLoader(dataset, batch_size=256), dict.fromkeys(layers), 9, device,
                                   progress=False)
    times: dict[str, list[float]] = {"batched": [], "per map": []}
    for r in range(args.repeats):
        for name in times if r % 2 == 0 else reversed(times):
            if name == "batched":
                t, batched = timed(lambda: {layer: chunked_tiles(net, dataset, layer, top[layer], device)
                                            for layer in layers}, device)
            else:
                t, alone = timed(lambda: {layer: per_map_tiles(net, dataset, layer, top[layer], device)
                                          for layer in layers}, device)
            times[name].append(t)
        print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    for layer in layers:
        torch.testing.assert_close(batched[layer], alone[layer], rtol=1e-4, atol=1e-5)
    med = {k: statistics.median(v) for k, v in times.items()}
    maps = sum(int(t.channels.numel()) for t in top.values())
    print(f"projections of the top-9 of all {maps} maps of {', '.join(layers)} ({what}, {n} images, {device}): "
          f"batched {med['batched']:.2f} s, per map {med['per map']:.2f} s, x{med['per map'] / med['batched']:.2f}")

    # The whole atlas, as python -m zfexp.atlas runs it (no W&B), then with its top-k pass from the cache.
    with tempfile.TemporaryDirectory() as out:
        cache = {"cache_dir": Path(out) / "cache", "cache_key": "benchmark"}
        whole, _ = timed(lambda: write_atlas(net, dataset, layers, Path(out) / "site", inputs, True, device, **cache),
                         device)
        cached, _ = timed(lambda: write_atlas(net, dataset, layers, Path(out) / "again", inputs, True, device,
                                              **cache), device)
        pages = len(list((Path(out) / "site").rglob("*.html")))
        pngs = len(list((Path(out) / "site").rglob("*.png")))
    print(f"the atlas of {maps} maps over {n} images ({pages} pages, {pngs} PNGs): {whole:.1f} s; with the top-k "
          f"pass from its cache: {cached:.1f} s")


if __name__ == "__main__":
    main()
