"""The deconvnet engine against an independent gradient formulation, a hand-computed case, and geometry."""

import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torchvision.models import alexnet as tv_alexnet
from torchvision.models import vgg16 as tv_vgg16

from zfexp.analysis import DeconvNet, forward_prefix, layer_activations, receptive_field
from zfexp.models import zfnet
from zfexp.models.contrast_norm import LocalContrastNorm


class GuidedReLU(torch.autograd.Function):
    """ReLU whose backward passes the incoming gradient only where both the forward input and the gradient
    itself are positive (Springenberg et al. 2015, Fig. 1)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x > 0) * (grad > 0)


def projection_by_autograd(model: nn.Module, images: torch.Tensor, layer: str, channels, mode: str,
                           rule: str = "deconvnet") -> torch.Tensor:
    """Independent formulation: the gradient of the chosen activations (seeded with their own values) with
    normalisation backward by identity and each ReLU's backward replaced according to ``rule``: a ReLU of the
    incoming signal (deconvnet), :class:`GuidedReLU` (guided), or left as it is (gradient). Max-pool keeps its
    own backward, which routes to the switches and adds where windows overlap."""
    model = model.eval()
    prefix = forward_prefix(model, layer)
    handles = []
    for _, m in prefix:
        if isinstance(m, nn.ReLU):
            m.inplace = False
            if rule == "deconvnet":
                handles.append(m.register_full_backward_hook(lambda mod, gin, gout: (torch.relu(gout[0]),)))
        elif isinstance(m, (LocalContrastNorm, nn.BatchNorm2d, nn.Dropout)):
            handles.append(m.register_full_backward_hook(lambda mod, gin, gout: (gout[0],)))
    try:
        n, k = images.shape[0], len(channels)
        x = images.repeat_interleave(k, 0).clone().requires_grad_(True)  # image i, channel j at i * k + j
        out = x
        for _, m in prefix:
            out = GuidedReLU.apply(out) if rule == "guided" and isinstance(m, nn.ReLU) else m(out)
        seed = torch.zeros_like(out)
        for row in range(n * k):
            c = channels[row % k]
            act = out[row, c].detach()
            if mode == "max":
                pos = act.flatten().argmax()
                seed[row, c].view(-1)[pos] = act.flatten()[pos]
            else:
                seed[row, c] = act
        (grad,) = torch.autograd.grad(out, x, seed)
        return grad.view(n, k, *images.shape[1:])
    finally:
        for h in handles:
            h.remove()


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


# "max" runs on receptive-field windows by default at 224 px; whole maps must give the same answers.
MODES = [("max", None), ("max", False), ("map", None)]


@pytest.mark.parametrize("layer", ["conv2", "conv5"])
@pytest.mark.parametrize("mode, windowed", MODES)
def test_zfnet_matches_the_gradient_formulation(layer, mode, windowed):
    torch.manual_seed(0)
    model = zfnet(num_classes=10, init="kaiming")  # overlapping 3x3/2 pools, LRN
    images = torch.randn(2, 3, 224, 224)
    channels = [0, 7, 31]
    ours = DeconvNet(model, windowed=windowed).project(images, layer, channels, mode=mode)
    ref = projection_by_autograd(model, images, layer, channels, mode)
    assert ours.shape == (2, 3, 3, 224, 224)
    assert ref.norm() > 0 and rel_err(ours, ref) < 1e-5


@pytest.mark.parametrize("windowed", [True, False])
def test_zfnet_with_layers_removed_matches(windowed):
    torch.manual_seed(1)
    model = zfnet(num_classes=10, init="kaiming", remove=["conv3", "conv4"])
    images = torch.randn(2, 3, 224, 224)
    ours = DeconvNet(model, windowed=windowed).project(images, "conv5", [3, 100], mode="max")
    assert rel_err(ours, projection_by_autograd(model, images, "conv5", [3, 100], "max")) < 1e-5


@pytest.mark.parametrize("windowed", [True, False])
@pytest.mark.parametrize("builder, layer, size", [(tv_alexnet, "features.8", 127), (tv_vgg16, "features.14", 64)])
def test_torchvision_networks_match(builder, layer, size, windowed):
    torch.manual_seed(2)
    model = builder(weights=None)
    images = torch.randn(2, 3, size, size)
    ours = DeconvNet(model, windowed=windowed).project(images, layer, [1, 5], mode="max")
    ref = projection_by_autograd(model, images, layer, [1, 5], "max")
    assert ref.norm() > 0 and rel_err(ours, ref) < 1e-5


@pytest.mark.parametrize("rule", ["guided", "gradient"])
@pytest.mark.parametrize("mode, windowed", MODES)
def test_guided_backprop_and_gradient_rules_match_autograd(rule, mode, windowed):
    torch.manual_seed(3)
    model = zfnet(num_classes=10, init="kaiming")
    images = torch.randn(2, 3, 224, 224)
    channels = [2, 40]
    ours = DeconvNet(model, windowed=windowed, rule=rule).project(images, "conv4", channels, mode=mode)
    ref = projection_by_autograd(model, images, "conv4", channels, mode, rule)
    assert ref.norm() > 0 and rel_err(ours, ref) < 1e-5
    # the rules differ: guided keeps less than the deconvnet (the forward mask), and is not the plain gradient
    deconv = DeconvNet(model, windowed=windowed).project(images, "conv4", channels, mode=mode)
    assert rel_err(ours, deconv) > 0.1


def test_guided_backprop_on_vgg_matches_autograd():
    torch.manual_seed(4)
    model = tv_vgg16(weights=None)
    images = torch.randn(2, 3, 64, 64)
    ours = DeconvNet(model, rule="guided").project_units(images, "features.14", [1, 5])
    ref = projection_by_autograd(model, images, "features.14", [1, 5], "max", "guided")
    assert ref.norm() > 0 and rel_err(ours, ref[torch.arange(2), torch.arange(2)]) < 1e-5


def test_unknown_rule_is_named():
    with pytest.raises(ValueError, match=r"rule='guidedd'; valid: deconvnet, guided, gradient"):
        DeconvNet(nn.Sequential(), rule="guidedd")


def odd_geometry_net() -> nn.Sequential:
    """Strides that do not divide the kernels, a dilated conv, a padded pool, a dilated ceil-mode pool, a
    non-square kernel and stride: every case the window arithmetic has to get right."""
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 8, 5, stride=3, padding=2), relu1=nn.ReLU(),
        pool1=nn.MaxPool2d(3, stride=2, padding=1),
        conv2=nn.Conv2d(8, 16, 3, padding=2, dilation=2), relu2=nn.ReLU(),
        pool2=nn.MaxPool2d(2, stride=2, dilation=2, ceil_mode=True),
        conv3=nn.Conv2d(16, 8, (3, 5), stride=(1, 2), padding=(1, 0)), relu3=nn.ReLU(),
    ))


@pytest.mark.parametrize("rule", ["deconvnet", "guided"])
@pytest.mark.parametrize("layer", ["conv1", "conv2", "conv3"])
def test_windows_match_the_gradient_formulation_on_odd_geometry(layer, rule):
    torch.manual_seed(8)
    model = odd_geometry_net()
    images = torch.randn(3, 3, 71, 90)  # odd, non-square
    channels = [0, 3, 7]
    ref = projection_by_autograd(model, images, layer, channels, "max", rule)
    windows = DeconvNet(model, windowed=True, max_elements=5000, rule=rule).project(images, layer, channels)  # chunked
    assert ref.norm() > 0 and rel_err(windows, ref) < 1e-5
    units = DeconvNet(model, windowed=True, rule=rule).project_units(images, layer, channels)
    assert rel_err(units, ref[torch.arange(3), torch.arange(3)]) < 1e-5


def test_chunking_over_channels_changes_nothing():
    torch.manual_seed(3)
    model = zfnet(num_classes=10, init="kaiming")
    images = torch.randn(1, 3, 224, 224)
    for windowed in (True, False):
        whole = DeconvNet(model, windowed=windowed).project(images, "conv3", list(range(6)))
        chunked = DeconvNet(model, max_elements=1, windowed=windowed).project(images, "conv3", list(range(6)))
        assert torch.allclose(whole, chunked, rtol=1e-5, atol=1e-7)


def tiny(pool: nn.Module | None = None, weight=((1.0, 2.0), (3.0, 4.0))):
    model = nn.Sequential()
    w = torch.tensor(weight)
    model.add_module("conv1", nn.Conv2d(1, 1, w.shape, bias=False))
    model.add_module("relu1", nn.ReLU())
    if pool is not None:
        model.add_module("pool1", pool)
    with torch.no_grad():
        model.conv1.weight.copy_(w.view(1, 1, *w.shape))
    return model


def test_hand_computed_single_unit():
    # conv 2x2 [[1,2],[3,4]] on [[1,0,0],[0,0,0],[0,0,1]] -> [[1,0],[0,4]]; the max unit is 4 at (1,1), and its
    # projection is 4 * the filter placed under that unit.
    image = torch.tensor([[1.0, 0, 0], [0, 0, 0], [0, 0, 1]]).view(1, 1, 3, 3)
    out = DeconvNet(tiny()).project(image, "conv1", [0], mode="max")
    assert out[0, 0, 0].tolist() == [[0, 0, 0], [0, 4, 8], [0, 12, 16]]


def test_hand_computed_overlapping_pools_add_up():
    # identity 1x1 conv on [1, 5, 2, 0]; 1x2 max-pool with stride 1 picks 5, 5, 2: two windows share the switch
    # at position 1, so unpooling the whole map gives [0, 5 + 5, 2, 0].
    model = tiny(nn.MaxPool2d((1, 2), stride=1), weight=((1.0,),))
    image = torch.tensor([1.0, 5, 2, 0]).view(1, 1, 1, 4)
    deconv = DeconvNet(model)
    conv_only = deconv.project(image, "conv1", [0], mode="map")
    assert conv_only[0, 0, 0, 0].tolist() == [1, 5, 2, 0]
    # Project from above the pool: a conv after it makes the pool part of the way down.
    model.add_module("conv2", nn.Conv2d(1, 1, 1, bias=False))
    with torch.no_grad():
        model.conv2.weight.fill_(1.0)
    through_pool = deconv.project(image, "conv2", [0], mode="map")
    assert through_pool[0, 0, 0, 0].tolist() == [0, 10, 2, 0]


def test_max_mode_is_zero_outside_the_receptive_field():
    torch.manual_seed(4)
    model = zfnet(num_classes=10, init="kaiming")
    images = torch.randn(1, 3, 224, 224)
    deconv = DeconvNet(model)
    acts = layer_activations(model, images, ["conv3"])["conv3"][0, 12]
    row, col = divmod(int(acts.flatten().argmax()), acts.shape[-1])
    top, left, bottom, right = receptive_field(model, "conv3", (row, col), 224)
    assert 0 < bottom - top < 223  # a real box, not the whole image
    proj = deconv.project(images, "conv3", [12], mode="max")[0, 0]
    inside = torch.zeros_like(proj, dtype=torch.bool)
    inside[:, top:bottom + 1, left:right + 1] = True
    assert proj[inside].abs().sum() > 0 and proj[~inside].abs().sum() == 0


def test_receptive_field_by_hand():
    # conv1 7x7/2 pad 1: unit (0, 0) sees rows -1..5 -> clipped 0..5; unit (10, 20) sees 19..25 x 39..45.
    model = zfnet()
    assert receptive_field(model, "conv1", (0, 0), 224) == (0, 0, 5, 5)
    assert receptive_field(model, "conv1", (10, 20), 224) == (19, 39, 25, 45)
    # conv2 5x5/2 after pool1 3x3/2: conv2 unit 0 spans pool rows 0..4 -> conv1 rows 0..10 -> pixels -1..25.
    assert receptive_field(model, "conv2", (0, 0), 224) == (0, 0, 25, 25)


def test_bad_layer_and_channel_are_named():
    model = zfnet(num_classes=10)
    with pytest.raises(ValueError, match=r"layer='fc6' is not a conv layer.*conv1, conv2"):
        DeconvNet(model).project(torch.zeros(1, 3, 224, 224), "fc6")
    with pytest.raises(ValueError, match=r"channels must lie in 0..95"):
        DeconvNet(model).project(torch.zeros(1, 3, 224, 224), "conv1", [96])
    with pytest.raises(ValueError, match="mode='mean'"):
        DeconvNet(model).project(torch.zeros(1, 3, 224, 224), "conv1", [0], mode="mean")


def test_top_activations_equal_a_brute_force_search():
    from torch.utils.data import DataLoader, TensorDataset

    from zfexp.analysis import top_activations
    from zfexp.models import zfnet_small

    torch.manual_seed(5)
    model = zfnet_small(num_classes=10, in_channels=1, init="kaiming").eval()
    images = torch.randn(23, 1, 28, 28)
    loader = DataLoader(TensorDataset(images, torch.zeros(23)), batch_size=5)
    channels = [0, 3, 30]
    top = top_activations(model, loader, "conv4", channels, k=4, progress=False)
    acts = layer_activations(model, images, ["conv4"])["conv4"][:, channels].flatten(2)  # [23, 3, H*W]
    per_image, where = acts.max(2)
    for j in range(len(channels)):
        order = per_image[:, j].argsort(descending=True)[:4]
        assert top.indices[j].tolist() == order.tolist()
        assert torch.allclose(top.values[j], per_image[order, j])
        w = 7
        assert top.positions[j].tolist() == [[int(p) // w, int(p) % w] for p in where[order, j]]
    with pytest.raises(ValueError, match="shuffle=False"):
        top_activations(model, DataLoader(TensorDataset(images, torch.zeros(23)), shuffle=True), "conv4")


def test_top_k_of_every_layer_in_one_pass_equals_each_layers_own_pass():
    from torch.utils.data import DataLoader, TensorDataset

    from zfexp.analysis import top_activations, top_activations_by_layer
    from zfexp.models import zfnet_small

    torch.manual_seed(5)
    model = zfnet_small(num_classes=10, in_channels=1, init="kaiming").eval()
    images = torch.randn(23, 1, 28, 28)
    iterators = []

    class CountingLoader(DataLoader):
        def __iter__(self):
            iterators.append(0)
            return super().__iter__()

    loader = CountingLoader(TensorDataset(images, torch.zeros(23)), batch_size=5)
    maps = {"conv1": [1, 5], "conv3": None, "conv5": [0, 7, 63]}
    together = top_activations_by_layer(model, loader, maps, k=4, progress=False)
    assert len(iterators) == 1  # one pass over the data for every layer (and the loader started once)
    for layer, channels in maps.items():
        alone = top_activations(model, DataLoader(TensorDataset(images, torch.zeros(23)), batch_size=5), layer,
                                channels, k=4, progress=False)
        for field in ("channels", "indices", "positions", "values"):
            assert torch.equal(getattr(together[layer], field), getattr(alone, field)), (layer, field)
    assert together["conv3"].indices.shape == (96, 4)  # None: every map of the layer
    with pytest.raises(ValueError, match="'conv9' is not a conv or linear layer"):
        top_activations_by_layer(model, loader, {"conv9": None}, progress=False)


def test_project_units_equals_the_matching_slices_of_project():
    torch.manual_seed(6)
    model = zfnet(num_classes=10, init="kaiming")
    images = torch.randn(3, 3, 224, 224)
    channels = [4, 9, 4]
    deconv = DeconvNet(model)
    pairs = deconv.project_units(images, "conv4", channels)
    full = deconv.project(images, "conv4", [4, 9])
    expected = torch.stack([full[0, 0], full[1, 1], full[2, 0]])
    assert pairs.shape == (3, 3, 224, 224) and rel_err(pairs, expected) < 1e-6


def test_receptive_field_size_matches_the_unclipped_box():
    from zfexp.analysis import receptive_field_size

    model = zfnet()
    for layer in ("conv1", "conv2", "conv3", "conv5"):
        top, left, bottom, right = receptive_field(model, layer, (6, 6), 100000)  # far from every border
        assert receptive_field_size(model, layer) == bottom - top + 1 == right - left + 1
    assert receptive_field_size(model, "conv1") == 7


def test_grid_layout_and_per_tile_normalisation():
    from zfexp.figures.grid import image_grid

    tiles = torch.zeros(2, 3, 1, 4, 4)
    tiles[0, 0] = 5.0  # positive everywhere -> white
    tiles[1, 2, 0, 0, 0] = -2.0  # one negative pixel -> black there, the rest mid-grey
    grid = image_grid(tiles, normalise="symmetric", pad=1, min_tile=8)  # 4 px tiles drawn at 8 px
    assert grid.shape == (3, 2 * 9 + 1, 3 * 9 + 1)
    assert torch.all(grid[:, 1:9, 1:9] == 1.0)
    assert torch.all(grid[:, 10:12, 19:21] == 0.0) and torch.allclose(grid[:, 15, 25], torch.full((3,), 0.5))
    assert torch.all(grid[:, 0, :] == 1.0)  # padding


def test_layer_activations_of_several_layers_equal_the_deconvnets_own_forward_pass():
    torch.manual_seed(7)
    model = zfnet(num_classes=10, init="kaiming").train()
    images = torch.randn(2, 3, 224, 224)
    ran_fc6 = []
    model.fc6.register_forward_hook(lambda *args: ran_fc6.append(True))
    together = layer_activations(model, images, ["conv1", "conv3", "conv5"])
    assert not ran_fc6  # the pass stops at the deepest layer asked for
    assert model.training  # and leaves the model in the mode it was in
    for layer in ("conv1", "conv3", "conv5"):
        assert torch.equal(together[layer], DeconvNet(model).forward_record(images, layer)[0]), layer


@pytest.mark.parametrize("layer, mode", [("conv5", "max"), ("conv4", "map"), ("conv3", "max")])
@pytest.mark.parametrize("windowed", [True, False])
def test_a_network_kept_channels_last_projects_ordinary_images(tiny_checkpoint, layer, mode, windowed):
    """The quickstart trains channels-last; in a notebook its checkpoint meets plain NCHW images."""
    from zfexp.module import ImageClassifier

    net = ImageClassifier.load_from_checkpoint(tiny_checkpoint).net.eval()
    assert net.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    plain = copy.deepcopy(net).to(memory_format=torch.contiguous_format)
    images = torch.randn(3, 1, 28, 28)
    ours = DeconvNet(net, windowed=windowed).project(images, layer, [0, 2], mode)
    assert torch.allclose(ours, DeconvNet(plain, windowed=windowed).project(images, layer, [0, 2], mode), atol=1e-6)
