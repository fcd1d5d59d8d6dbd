"""Occlusion maps, invariance curves and correspondence against independent computations."""

import pytest
import torch
from torchvision.models import alexnet as tv_alexnet

from zfexp.analysis import (
    DeconvNet,
    correspondence,
    invariance_curves,
    layer_activations,
    occlude_boxes,
    occlusion_maps,
    pairwise_sign_hamming,
    receptive_field,
    transformed,
)
from zfexp.models import zfnet, zfnet_small


def small_net(norm="lrn", seed=0):
    torch.manual_seed(seed)
    return zfnet_small(num_classes=10, in_channels=1, init="kaiming", norm=norm).eval()


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def test_a_patch_outside_a_units_receptive_field_leaves_it_unchanged():
    model = small_net()
    images = torch.randn(1, 1, 28, 28)
    top, left, bottom, right = receptive_field(model, "conv3", (0, 0), 28)
    assert bottom < 27 and right < 27  # room for a patch outside
    def conv3(x):
        return layer_activations(model, x, ["conv3"])["conv3"][0, :, 0, 0]

    before = conv3(images)
    outside = occlude_boxes(images, [(bottom + 1, right + 1, 27, 27)], fill=5.0)
    inside = occlude_boxes(images, [(top, left, bottom, right)], fill=5.0)
    assert torch.equal(conv3(outside), before)
    assert not torch.allclose(conv3(inside), before)  # the control


@pytest.mark.parametrize("norm", ["lrn", "batchnorm"])
def test_batched_incremental_and_plain_agree(norm):
    model = small_net(norm)
    images, labels = torch.randn(2, 1, 28, 28), [3, 7]
    ref = occlusion_maps(model, images, labels, patch=6, stride=4, incremental=False, batch_size=1)
    for kwargs in ({"incremental": False, "batch_size": 64}, {"incremental": True, "batch_size": 5}):
        got = occlusion_maps(model, images, labels, patch=6, stride=4, **kwargs)
        assert rel_err(got.prob_true, ref.prob_true) < 1e-5
        assert rel_err(got.feature_activity, ref.feature_activity) < 1e-5
        assert torch.equal(got.top_label, ref.top_label) and torch.equal(got.feature_map, ref.feature_map)


def test_incremental_matches_plain_on_zfnet_at_224():
    torch.manual_seed(1)
    model = zfnet(num_classes=10, init="kaiming").eval()  # overlapping ceil-mode pools, LRN
    images = torch.randn(1, 3, 224, 224)
    kwargs = dict(patch=64, stride=40, feature_layer="conv5", batch_size=8)
    inc = occlusion_maps(model, images, [4], incremental=True, **kwargs)
    ref = occlusion_maps(model, images, [4], incremental=False, **kwargs)
    assert inc.prob_true.shape == (1, 5, 5)  # corners 0, 40, .., 160
    assert rel_err(inc.prob_true, ref.prob_true) < 1e-5 and rel_err(inc.feature_activity, ref.feature_activity) < 1e-5
    assert (inc.feature_activity != inc.base_activity).any()


def test_unoccluded_outputs_and_projection():
    model = small_net()
    images = torch.randn(2, 1, 28, 28)
    out = occlusion_maps(model, images, [1, 2], patch=7, stride=7)
    probs = model(images).softmax(-1)
    assert torch.allclose(out.base_prob, probs[[0, 1], [1, 2]])
    acts = layer_activations(model, images, ["conv5"])["conv5"]
    assert out.feature_map.tolist() == acts.flatten(2).amax(2).argmax(1).tolist()
    expected = DeconvNet(model).project_units(images, "conv5", out.feature_map)
    assert out.projection.shape == (2, 1, 28, 28) and torch.allclose(out.projection, expected)


def test_the_callers_model_keeps_its_training_mode():
    model = small_net().train()
    occlusion_maps(model, torch.randn(1, 1, 28, 28), [3], patch=7, stride=7)
    assert model.training and all(m.training for m in model.modules())


@pytest.mark.parametrize("patch, stride", [(7, 7), (6, 4)])
def test_prob_true_equals_the_base_minus_captums_occlusion(patch, stride):
    from captum.attr import Occlusion

    model = small_net()
    images, labels = torch.randn(2, 1, 28, 28), torch.tensor([1, 2])
    ours = occlusion_maps(model, images, labels, patch=patch, stride=stride)
    theirs = Occlusion(lambda x: model(x).softmax(-1)).attribute(
        images, sliding_window_shapes=(1, patch, patch), strides=(1, stride, stride), baselines=0.0, target=labels,
        perturbations_per_eval=16)[:, 0]  # [N, H, W]
    if patch == stride:  # every pixel under exactly one square: the map itself
        per_square = theirs[:, ::stride, ::stride]
        assert torch.allclose(ours.prob_true, ours.base_prob[:, None, None] - per_square, atol=1e-6)
    assert torch.allclose(ours.pixel_attribution((28, 28)), theirs, atol=1e-6)


@pytest.mark.parametrize("network", ["zfnet_small", "resnet18"])
def test_one_forward_per_batch_of_copies_and_one_for_the_unoccluded_images(network):
    """The features followed, the probabilities and the label of the unoccluded images come from one forward of
    them (a residual network's projection records one more, stopped at its layer); then each batch of occluded
    copies goes through the network once."""
    from torchvision.models import resnet18

    net, layer, images = ((small_net(), "conv5", torch.randn(3, 1, 28, 28)) if network == "zfnet_small"
                          else (resnet18(num_classes=10).eval(), "layer4.1", torch.randn(3, 3, 64, 64)))
    side = images.shape[-1]
    occlusion_maps(net, images, [1, 2, 3], patch=side // 4, stride=side // 4, feature_layer=layer, batch_size=1,
                   incremental=False)  # the network's structure read once (one blank image), before counting
    batches: list[int] = []
    net.register_forward_pre_hook(lambda _module, args: batches.append(args[0].shape[0]))
    result = occlusion_maps(net, images, [1, 2, 3], patch=side // 4, stride=side // 4, feature_layer=layer,
                            batch_size=5, incremental=False)
    copies = result.prob_true.numel()  # 3 images x 4 x 4 positions
    unoccluded = 1 if network == "zfnet_small" else 2
    assert batches == [3] * unoccluded + [5] * (copies // 5) + [copies % 5]
    if network == "zfnet_small":  # the incremental way runs the leaf modules on each square's footprint
        batches.clear()
        occlusion_maps(net, images, [1, 2, 3], patch=side // 4, stride=side // 4, feature_layer=layer,
                       batch_size=5, incremental=True)
        assert batches == [3]


def test_bad_occlusion_arguments_are_named():
    model = small_net()
    images = torch.zeros(1, 1, 28, 28)
    with pytest.raises(ValueError, match=r"patch=40 is larger than the 28x28 image; valid: 1..28"):
        occlusion_maps(model, images, [0], patch=40, stride=4)
    with pytest.raises(ValueError, match=r"layer='conv9' is not a conv layer.*conv1, conv2"):
        occlusion_maps(model, images, [0], patch=4, stride=4, feature_layer="conv9")
    with pytest.raises(ValueError, match="stride=0"):
        occlusion_maps(model, images, [0], patch=4, stride=0)
    with pytest.raises(ValueError, match="1 images but 2 labels"):
        occlusion_maps(model, images, [0, 1], patch=4, stride=4)
    with pytest.raises(ValueError, match="plain nn.Sequential"):
        occlusion_maps(tv_alexnet(weights=None), torch.zeros(1, 3, 64, 64), [0], 16, 16,
                       feature_layer="features.10", incremental=True)


def test_identity_transforms_give_distance_zero_and_the_same_probability():
    model = small_net()
    images, labels = torch.randn(3, 1, 28, 28), [0, 1, 2]
    probs = model(images).softmax(-1)[torch.arange(3), labels]
    for transform, identity in (("translate", 0.0), ("scale", 1.0), ("rotate", 0.0)):
        curves = invariance_curves(model, images, labels, transform, values=[identity, 5.0 if transform != "scale"
                                                                            else 1.5])
        for layer in ("conv1", "fc7"):
            assert torch.all(curves.distance[layer][:, 0] == 0), (transform, layer)
            assert (curves.distance[layer][:, 1] > 1e-2).all(), (transform, layer)
        assert torch.allclose(curves.prob_true[:, 0], probs, atol=1e-6)


def test_transforms_move_pixels_as_stated():
    image = torch.arange(64.0).view(1, 1, 8, 8)
    down = transformed(image, "translate", 2, fill=-1.0)
    assert torch.equal(down[0, 0, 2:], image[0, 0, :6]) and torch.all(down[0, 0, :2] == -1.0)
    quarter = transformed(image, "rotate", 90)  # counter-clockwise: the top row becomes the left column
    assert torch.allclose(quarter[0, 0], torch.rot90(image[0, 0], 1, dims=(0, 1)), atol=1e-4)
    # x2 about the centre (3.5, 3.5): output pixel (i, j) samples (1.75 + i / 2, 1.75 + j / 2), and bilinear
    # sampling of the linear image 8 r + c is exact there.
    zoom = transformed(image, "scale", 2.0)
    i, j = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    assert torch.allclose(zoom[0, 0], 8 * (1.75 + i / 2) + 1.75 + j / 2, atol=1e-4)


def test_bad_invariance_arguments_are_named():
    model = small_net()
    with pytest.raises(ValueError, match=r"transform='shear'; valid: translate, scale, rotate"):
        invariance_curves(model, torch.zeros(1, 1, 28, 28), [0], "shear")
    with pytest.raises(ValueError, match=r"layer='fc9' is not a conv or linear layer.*fc7, fc8"):
        invariance_curves(model, torch.zeros(1, 1, 28, 28), [0], "rotate", layers=["fc9"])


def test_sign_hamming_by_hand():
    eps = torch.tensor([[1.0, -1, 0, 2], [1, 1, 0, -3], [-1, -1, 0, 0]])
    # signs: [1,-1,0,1], [1,1,0,-1], [-1,-1,0,0] -> pairs (0,1): 2 of 4 differ, (0,2): 2, (1,2): 3
    assert pairwise_sign_hamming(eps).tolist() == [0.5, 0.5, 0.75]


def test_same_content_gives_delta_zero_and_random_boxes_more():
    model = small_net()
    torch.manual_seed(2)
    images = torch.randn(1, 1, 28, 28).repeat(5, 1, 1, 1)  # five copies: the "parts" are the same content
    parts = {"eye": [(4, 4, 10, 10)] * 5, "nose": [(14, 10, 20, 16)] * 5}
    result = correspondence(model, images, parts, layers=("conv5", "fc7"), n_random=3)
    for part in parts:
        for layer in ("conv5", "fc7"):
            assert result.delta[part][layer] == (0.0, 0.0)
    assert result.delta["random"]["conv5"][0] > 0.01 and result.delta["random"]["fc7"][0] > 0.01
    assert result.pairs["random"]["conv5"].shape == (3 * 2 * 10,)  # trials x parts x pairs
    assert {row["occlusion"] for row in result.table()} == {"eye", "nose", "random"}


def test_bad_correspondence_arguments_are_named():
    model = small_net()
    images = torch.zeros(3, 1, 28, 28)
    with pytest.raises(ValueError, match=r"part 'eye' box \(20, 20, 30, 30\) is not inside the 28x28 image"):
        correspondence(model, images, {"eye": [(0, 0, 3, 3), (0, 0, 3, 3), (20, 20, 30, 30)]})
    with pytest.raises(ValueError, match="part 'eye' has 2 boxes for 3 images"):
        correspondence(model, images, {"eye": [(0, 0, 3, 3)] * 2})
    with pytest.raises(ValueError, match="at least 2 images"):
        correspondence(model, images[:1], {"eye": [(0, 0, 3, 3)]})
    with pytest.raises(ValueError, match=r"part 'eye' box \(0.1, 0.1, 0.3, 0.3\): a box is 4 pixel indices"):
        correspondence(model, images, {"eye": [(0.1, 0.1, 0.3, 0.3)] * 3})  # fractions of the side


def test_the_automatic_way_is_the_devices_and_gives_both_forced_ways_maps():
    from zfexp.analysis.occlusion import incremental_pays

    assert incremental_pays(torch.device("cpu")) and not incremental_pays(torch.device("cuda"))
    model = small_net()
    images, labels = torch.randn(2, 1, 28, 28), torch.tensor([3, 7])
    auto, *forced = (occlusion_maps(model, images, labels, patch=7, stride=3, incremental=way)
                     for way in (None, True, False))
    for other in forced:
        assert torch.allclose(auto.prob_true, other.prob_true, atol=1e-6)
        assert torch.allclose(auto.feature_activity, other.feature_activity, rtol=1e-5, atol=1e-5)
        assert torch.equal(auto.top_label, other.top_label)


def test_the_batch_of_copies_and_their_layout_change_no_number():
    """Whole copies: any batch (the one chosen by the device's memory included) and either memory layout give the
    maps of one copy at a time."""
    from zfexp.analysis.occlusion import copies_per_batch

    model = small_net("batchnorm")
    images = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    assert copies_per_batch(model, images) == 64  # on a CPU
    one = occlusion_maps(model, images, [0, 1, 2], patch=6, stride=3, incremental=False, batch_size=1)
    for batch in (7, None):
        got = occlusion_maps(model, images, [0, 1, 2], patch=6, stride=3, incremental=False, batch_size=batch)
        assert torch.allclose(got.prob_true, one.prob_true, atol=1e-6) and torch.equal(got.top_label, one.top_label)
        assert torch.allclose(got.feature_activity, one.feature_activity, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="batch_size=0: must be a positive integer, or null"):
        occlusion_maps(model, images, [0, 1, 2], patch=6, stride=3, batch_size=0)
