"""The deconvnet, guided backprop and the receptive fields on networks that are not a chain of modules (ResNet,
DenseNet, functional ReLUs) and with batch norm folded: against captum's ``NeuronDeconvolution`` and
``NeuronGuidedBackprop`` (each unit alone, scaled by its activation), and against the chain readings where both
apply."""

from __future__ import annotations

import pytest
import torch
from captum.attr import NeuronDeconvolution, NeuronGuidedBackprop
from torch import nn
from torch.nn import functional as F
from torchvision.models import (
    alexnet,
    convnext_tiny,
    densenet121,
    efficientnet_b0,
    mobilenet_v3_small,
    resnet18,
    vgg11_bn,
    vgg16,
)

from zfexp.analysis import DeconvNet, layer_activations, receptive_field
from zfexp.analysis.deconv_graph import project_graph
from zfexp.analysis.receptive_field import field_geometry
from zfexp.models import zfnet, zfnet_small

CAPTUM = {"deconvnet": NeuronDeconvolution, "guided": NeuronGuidedBackprop}


def with_random_batch_norm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Batch-norm statistics and affine weights far from the identity: folding them matters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
    for m in model.modules():  # captum hooks ReLU modules, which must not work in place
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return model.eval()


class FunctionalNet(nn.Module):
    """ReLUs as function calls (in place and not), batch norm, a residual addition, an average pool."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)
        self.bn2, self.conv3 = nn.BatchNorm2d(16), nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        y = torch.relu(self.bn2(self.conv2(x)))
        y = F.relu(self.conv3(y) + y, inplace=True)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


class ModuleTwin(FunctionalNet):
    """The same network with ReLU modules, as captum needs them."""

    def __init__(self):
        super().__init__()
        self.relu1, self.relu2, self.relu3 = nn.ReLU(), nn.ReLU(), nn.ReLU()

    def forward(self, x):
        x = F.max_pool2d(self.relu1(self.conv1(x)), 2)
        y = self.relu2(self.bn2(self.conv2(x)))
        y = self.relu3(self.conv3(y) + y)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


def functional_pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    net = with_random_batch_norm(FunctionalNet())
    twin = ModuleTwin()
    twin.load_state_dict(net.state_dict())
    return net, twin.eval()


def small_zfnet() -> nn.Module:
    torch.manual_seed(0)
    return with_random_batch_norm(zfnet_small(num_classes=10, in_channels=3, input_size=28, norm="batchnorm",
                                              widths={"conv1": 8, "conv2": 12, "conv3": 12, "conv4": 12,
                                                      "conv5": 12, "fc6": 16, "fc7": 16}))


# (network, our layer, captum's module giving the same features, image side, channels)
CASES = {
    "resnet18 block": (lambda: with_random_batch_norm(resnet18()), "layer3.1", "layer3.1", 64, [0, 9, 200]),
    "resnet18 conv1": (lambda: with_random_batch_norm(resnet18()), "conv1", "relu", 64, [1, 30]),
    "densenet121 layer": (lambda: with_random_batch_norm(densenet121()), "features.denseblock2.denselayer3",
                          "features.denseblock2.denselayer3", 64, [0, 17]),
    "vgg11_bn conv": (lambda: with_random_batch_norm(vgg11_bn()), "features.8", "features.10", 64, [3, 100]),
    "functional ReLUs": (lambda: functional_pair(), "conv3", "relu3", 24, [0, 7]),
    "zfnet_small batchnorm": (small_zfnet, "conv4", "relu4", 28, [0, 5]),
    # Squeeze-excite (a gate from globally pooled features, Hardswish / SiLU passed as their gradient), and
    # ConvNeXt (depthwise 7x7, LayerNorm over channels, GELU, layer scale): blocks and a conv after a gate.
    "mobilenet_v3_small block": (lambda: with_random_batch_norm(mobilenet_v3_small()), "features.4", "features.4",
                                 64, [0, 7]),
    "mobilenet_v3_small conv after its gate": (lambda: with_random_batch_norm(mobilenet_v3_small()),
                                               "features.4.block.3.0", "features.4.block.3.0", 64, [0, 7]),
    "efficientnet_b0 block": (lambda: with_random_batch_norm(efficientnet_b0()), "features.3.1", "features.3.1",
                              64, [0, 11]),
    "convnext_tiny block": (lambda: convnext_tiny().eval(), "features.3.0", "features.3.0", 64, [0, 50]),
}


def units(model: nn.Module, images: torch.Tensor, layer: str, channels: list[int]):
    """Each image's strongest unit of each channel: ``(image, k, channel, row, col, activation)``, where the
    activation is positive. The deconvnet sends a unit down as its activation; the rules rectify, so they scale
    with a positive activation only, and captum's gradient times the activation is the same picture only then
    (a block's output, a DenseNet layer's conv, may be negative everywhere in a map)."""
    acts = layer_activations(model, images, [layer])[layer][:, channels]
    values, where = acts.flatten(2).max(2)
    width = acts.shape[-1]
    found = [(n, k, c, int(where[n, k]) // width, int(where[n, k]) % width, float(values[n, k]))
             for n in range(len(images)) for k, c in enumerate(channels) if values[n, k] > 0]
    assert len(found) >= len(channels), "too few positive units to compare"
    return found


@pytest.mark.parametrize("rule", ["deconvnet", "guided"])
@pytest.mark.parametrize("case", list(CASES))
def test_projections_equal_captums_unit_by_unit(case, rule):
    build, layer, captum_layer, side, channels = CASES[case]
    torch.manual_seed(0)  # the same network whatever ran before
    built = build()
    ours_net, theirs_net = built if isinstance(built, tuple) else (built, built)
    images = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))
    ours = DeconvNet(ours_net, rule=rule).project(images, layer, channels, mode="max")  # [N, K, C, H, W]
    method = CAPTUM[rule](theirs_net, dict(theirs_net.named_modules())[captum_layer])
    for n, k, channel, row, col, value in units(ours_net, images, layer, channels):
        reference = method.attribute(images[n:n + 1], neuron_selector=(channel, row, col))[0] * value
        # Measured: at most 5e-7 over three network seeds. Both rules test signs on the way down, and captum runs
        # one image where ours runs a batch, whose kernels round otherwise: a value within rounding of 0 can
        # pass one way and not the other, a speck of the picture (seen once on another random network, 3e-3 of
        # the maximum at a few pixels), so the largest difference has room. A wrong path (a skip connection
        # missed, batch norm ignored) changes the whole picture.
        error = (ours[n, k] - reference).norm() / reference.norm().clamp_min(1e-12)
        largest = max(float(reference.abs().max()), float(ours[n, k].abs().max()))  # guided can zero a unit
        assert float(error) < 1e-4, (case, rule, n, channel, float(error))
        assert float((ours[n, k] - reference).abs().max()) <= 1e-2 * largest, (case, rule, n, channel)


def test_the_graph_reading_equals_the_chain_reading_where_both_apply():
    torch.manual_seed(0)
    net = with_random_batch_norm(vgg11_bn())
    images = torch.randn(2, 3, 64, 64)
    for mode in ("max", "map"):
        chain = DeconvNet(net).project(images, "features.11", [0, 4, 9], mode=mode)
        graph = project_graph(net, images, "features.11", torch.tensor([0, 4, 9]), mode, "deconvnet", 2**24)
        assert torch.allclose(chain, graph, rtol=1e-4, atol=1e-6 * float(graph.abs().max())), mode
    windows = DeconvNet(net, windowed=True).project(images, "features.11", [0, 4, 9])
    assert torch.allclose(windows, DeconvNet(net, windowed=False).project(images, "features.11", [0, 4, 9]),
                          atol=1e-5 * float(windows.abs().max()))


def test_units_of_different_images_project_alone_on_a_resnet():
    net = with_random_batch_norm(resnet18())
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    pairs = DeconvNet(net).project_units(images, "layer2.0", [5, 1, 5])
    maps = DeconvNet(net).project(images, "layer2.0", [1, 5])
    assert torch.allclose(pairs, torch.stack([maps[0, 1], maps[1, 0], maps[2, 1]]), atol=1e-6)


@pytest.mark.parametrize("build, layers, size", [
    (lambda: zfnet(num_classes=10), ["conv1", "conv2", "conv5"], 224),
    (lambda: alexnet(), ["features.0", "features.3", "features.10"], 224),
    (lambda: vgg16(), ["features.0", "features.5", "features.28"], 224),
])
def test_receptive_fields_from_the_graph_equal_the_chains(build, layers, size):
    net = build().eval()
    for layer in layers:
        jump, offset, field = field_geometry(net, layer, 3, size)  # a Field: each fits in twice the size
        for row, col in ((0, 0), (1, 2), (5, 3)):
            top, left = row * jump[0] + offset[0], col * jump[1] + offset[1]
            from_graph = (max(top, 0), max(left, 0), min(top + field[0] - 1, size - 1),
                          min(left + field[1] - 1, size - 1))
            assert from_graph == receptive_field(net, layer, (row, col), size), (layer, row, col)


def test_a_resnets_receptive_field_holds_every_pixel_its_gradient_reaches():
    net = resnet18().eval()
    images = torch.randn(1, 3, 128, 128, requires_grad=True)
    out = layer_activations(net, images.detach(), ["layer2.1"])["layer2.1"]
    row, col = out.shape[-2] // 2, out.shape[-1] // 2
    top, left, bottom, right = receptive_field(net, "layer2.1", (row, col), 128)
    maps = {}
    handle = net.layer2[1].register_forward_hook(lambda m, i, o: maps.setdefault("out", o))
    net(images)
    handle.remove()
    (grad,) = torch.autograd.grad(maps["out"][0, :, row, col].sum(), images)
    rows, cols = grad.abs().sum((0, 1)).nonzero(as_tuple=True)
    assert top <= int(rows.min()) and int(rows.max()) <= bottom and left <= int(cols.min()) and int(cols.max()) <= right
    assert (bottom - top + 1, right - left + 1) == (99, 99)  # 7 + 4 + 4 x 8 + 8 + 3 x 16 px: ResNet-18 to layer2
