"""The contrast normalisation of ``model.norm=lrn``: ``LocalContrastNorm`` (one GEMM over channels) vs
``nn.LocalResponseNorm`` (a padded 3-d average pool), alone and inside a whole ``zfnet`` training step, with
``norm=batchnorm`` beside them as the reference the issue sets (same step, no contrast normalisation cost).

The two normalisations are asserted equal first (convention mapped, float32, TF32 off). Rounds alternate
between the implementations; prints medians and the ratios.

    python benchmarks/contrast_norm.py                                   # CPU, zfnet at 112 px, batch 32
    python benchmarks/contrast_norm.py --device cuda --size 224 --batch-size 256 --precision bf16-mixed
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import exact_fp32, timed  # noqa: E402
from zfexp.models import zfnet  # noqa: E402
from zfexp.models.contrast_norm import LocalContrastNorm  # noqa: E402


def with_torch_lrn(net: nn.Module) -> nn.Module:
    """``net`` with each LocalContrastNorm replaced by the equal ``nn.LocalResponseNorm``."""
    for name, module in list(net.named_children()):
        if isinstance(module, LocalContrastNorm):
            setattr(net, name, nn.LocalResponseNorm(module.size, alpha=module.alpha_per_sum * module.size,
                                                    beta=module.beta, k=module.k))
    return net


def step_rate(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, args, device) -> float:
    """Median images/s of SGD training steps of ``net`` on one batch kept on the device."""
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16-mixed")

    def step():
        with autocast:
            loss = F.cross_entropy(net(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    seconds = [timed(step, device)[0] for _ in range(args.steps)]
    return images.shape[0] / statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    args = parser.parse_args()
    device = torch.device(args.device)
    exact_fp32(device)
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format

    torch.manual_seed(0)
    x = (torch.randn(16, 96, 27, 27, device=device) * 30).contiguous(memory_format=fmt)
    ours, reference = LocalContrastNorm(), nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)
    err = ((ours(x) - reference(x)).abs() / reference(x).abs().clamp_min(1e-6)).max().item()
    assert err < 1e-6, f"LocalContrastNorm differs from nn.LocalResponseNorm by {err:.2e} (relative)"
    print(f"device={device} size={args.size} batch={args.batch_size} precision={args.precision} "
          f"layout={'channels_last' if fmt == torch.channels_last else 'contiguous'}; max relative difference of "
          f"the two normalisations {err:.1e}")

    side = args.size // 4  # norm1's maps: 55 px at 224
    norm1 = torch.randn(args.batch_size, 96, side, side, device=device).contiguous(memory_format=fmt)
    layer_times: dict[str, list[float]] = {"LocalContrastNorm": [], "nn.LocalResponseNorm": []}
    for _ in range(args.repeats):
        for name, layer in (("LocalContrastNorm", ours), ("nn.LocalResponseNorm", reference)):
            y = norm1.clone().requires_grad_()
            layer_times[name].append(statistics.median(
                timed(lambda layer=layer, y=y: layer(y).sum().backward(), device)[0] for _ in range(args.steps)))
    med = {k: statistics.median(v) for k, v in layer_times.items()}
    print(f"norm1 alone (forward + backward, {tuple(norm1.shape)}): ours {1e3 * med['LocalContrastNorm']:.2f} ms, "
          f"nn.LocalResponseNorm {1e3 * med['nn.LocalResponseNorm']:.2f} ms, "
          f"x{med['nn.LocalResponseNorm'] / med['LocalContrastNorm']:.2f}")

    images = torch.randn(args.batch_size, 3, args.size, args.size, device=device).contiguous(memory_format=fmt)
    labels = torch.randint(0, 1000, (args.batch_size,), device=device)
    builders = {"lrn (LocalContrastNorm)": lambda: zfnet(input_size=args.size),
                "lrn (nn.LocalResponseNorm)": lambda: with_torch_lrn(zfnet(input_size=args.size)),
                "batchnorm": lambda: zfnet(input_size=args.size, norm="batchnorm")}
    rates: dict[str, list[float]] = {name: [] for name in builders}
    for r in range(args.repeats):
        for name in builders if r % 2 == 0 else reversed(builders):
            torch.manual_seed(0)
            net = builders[name]().to(device, memory_format=fmt).train()
            rates[name].append(step_rate(net, images, labels, args, device))
        print(f"round {r}: " + ", ".join(f"{n} {v[-1]:.0f} img/s" for n, v in rates.items()))
    med = {k: statistics.median(v) for k, v in rates.items()}
    ours_rate = med["lrn (LocalContrastNorm)"]
    print("median training images/s: " + ", ".join(f"{n} {v:.0f}" for n, v in med.items()))
    print(f"ratio LocalContrastNorm / nn.LocalResponseNorm = {ours_rate / med['lrn (nn.LocalResponseNorm)']:.2f}; "
          f"LocalContrastNorm / batchnorm = {ours_rate / med['batchnorm']:.2f}")


if __name__ == "__main__":
    main()
