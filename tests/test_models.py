"""The ZFNet family: Fig. 3's sizes and parameter count, the ablation options, and their errors."""

import pytest
import torch
from torch import nn

from zfexp.models import CONV_NAMES, LAYER_NAMES, PRESETS, alexnet, zfnet, zfnet_small, zfnet_v2
from zfexp.models.contrast_norm import LocalContrastNorm


def conv_params(cin, cout, k):
    return cout * cin * k * k + cout


def fc_params(fin, fout):
    return fin * fout + fout


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# Fig. 3 by hand: conv1..conv5, then fc6 on 6x6x256, fc7, fc8.
ZF_CONV = (conv_params(3, 96, 7) + conv_params(96, 256, 5) + conv_params(256, 384, 3) + conv_params(384, 384, 3)
           + conv_params(384, 256, 3))


def test_zfnet_has_the_papers_parameter_count():
    assert n_params(zfnet(num_classes=1000)) == 62_357_608
    fc = fc_params(9216, 4096) + fc_params(4096, 4096) + fc_params(4096, 1000)
    assert n_params(zfnet(num_classes=1000)) == ZF_CONV + fc


def feature_shapes(model) -> dict[str, tuple[int, ...]]:
    """Output shape ``(C, H, W)`` or ``(F,)`` of every child of a ZFNet, on one blank image of its input size."""
    x = torch.zeros(1, model.get_submodule("conv1").in_channels, model.input_size, model.input_size)
    shapes = {}
    with torch.no_grad():
        for name, module in model.eval().named_children():
            x = module(x)
            shapes[name] = tuple(x.shape[1:])
    return shapes


def test_zfnet_feature_sizes_match_fig3():
    shapes = feature_shapes(zfnet())
    assert shapes["conv1"] == (96, 110, 110) and shapes["pool1"] == (96, 55, 55)
    assert shapes["conv2"] == (256, 26, 26) and shapes["pool2"] == (256, 13, 13)
    assert shapes["conv3"] == (384, 13, 13) and shapes["conv4"] == (384, 13, 13)
    assert shapes["conv5"] == (256, 13, 13) and shapes["pool5"] == (256, 6, 6)
    assert shapes["flatten"] == (9216,) and shapes["fc8"] == (1000,)


def test_zfnet_v2_widths_and_count():
    model = zfnet_v2()
    assert [model.get_submodule(n).out_channels for n in ("conv3", "conv4", "conv5")] == [512, 1024, 512]
    expected = (conv_params(3, 96, 7) + conv_params(96, 256, 5) + conv_params(256, 512, 3) + conv_params(512, 1024, 3)
                + conv_params(1024, 512, 3) + fc_params(512 * 36, 4096) + fc_params(4096, 4096) + fc_params(4096, 1000))
    assert n_params(model) == expected
    assert round(expected / 1e6, 1) == 107.6


def test_alexnet_conv1_is_11x11_stride_4_and_reaches_6x6():
    model = alexnet()
    conv1 = model.get_submodule("conv1")
    assert conv1.kernel_size == (11, 11) and conv1.stride == (4, 4)
    assert feature_shapes(model)["pool5"] == (256, 6, 6)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_layer_name_resolves(preset):
    kwargs = {"num_classes": 10, "in_channels": 1} if preset == "zfnet_small" else {}
    model = PRESETS[preset](**kwargs)
    assert model.layer_names == LAYER_NAMES
    for name in LAYER_NAMES:
        module = model.get_submodule(name)
        assert isinstance(module, nn.Conv2d if name.startswith("conv") else nn.Linear), name
        if name != "fc8":
            assert isinstance(model.get_submodule("relu" + name[-1]), nn.ReLU)


def test_remove_conv3_conv4_rewires_conv5():
    model = zfnet(remove=["conv3", "conv4"])
    assert model.layer_names == ("conv1", "conv2", "conv5", "fc6", "fc7", "fc8")
    assert model.get_submodule("conv5").in_channels == 256
    with pytest.raises(AttributeError):
        model.get_submodule("conv3")
    expected = (conv_params(3, 96, 7) + conv_params(96, 256, 5) + conv_params(256, 256, 3) + fc_params(9216, 4096)
                + fc_params(4096, 4096) + fc_params(4096, 1000))
    assert n_params(model) == expected
    assert model(torch.zeros(2, 3, 224, 224)).shape == (2, 1000)


def test_remove_fc6_fc7_feeds_fc8_from_conv5():
    model = zfnet(remove=["fc6", "fc7"], num_classes=10)
    assert model.get_submodule("fc8").in_features == 9216
    assert n_params(model) == ZF_CONV + fc_params(9216, 10)


def test_widths_set_maps_and_units():
    model = zfnet(widths={"conv3": 512, "fc6": 8192, "fc7": 8192})
    assert model.get_submodule("conv3").out_channels == 512
    assert model.get_submodule("conv4").in_channels == 512
    assert model.get_submodule("fc6").out_features == 8192 and model.get_submodule("fc8").in_features == 8192
    expected = (conv_params(3, 96, 7) + conv_params(96, 256, 5) + conv_params(256, 512, 3) + conv_params(512, 384, 3)
                + conv_params(384, 256, 3) + fc_params(9216, 8192) + fc_params(8192, 8192) + fc_params(8192, 1000))
    assert n_params(model) == expected


def test_zfnet_small_fits_28_to_64_px():
    for size in (28, 32, 64):
        model = zfnet_small(num_classes=10, in_channels=1 if size == 28 else 3, input_size=size)
        x = torch.zeros(3, 1 if size == 28 else 3, size, size)
        assert model(x).shape == (3, 10)


def test_paper_init_is_normal_001_with_zero_bias():
    model = zfnet()
    w = model.get_submodule("fc6").weight
    assert abs(w.std().item() - 0.01) < 2e-4 and abs(w.mean().item()) < 1e-4
    assert all(torch.count_nonzero(model.get_submodule(n).bias) == 0 for n in LAYER_NAMES)


def test_norm_options_place_the_right_layer():
    assert isinstance(zfnet().get_submodule("norm1"), LocalContrastNorm)
    assert isinstance(zfnet(norm="batchnorm").get_submodule("norm2"), nn.BatchNorm2d)
    assert not any(n.startswith("norm") for n, _ in zfnet(norm="none").named_children())


@pytest.mark.parametrize("options, words", [
    ({"remove": ["conv9"]}, ["'conv9'", "conv1", "fc7"]),
    ({"remove": ["fc8"]}, ["'fc8'", "classifier"]),
    ({"remove": list(CONV_NAMES)}, ["every conv layer"]),
    ({"widths": {"fc6": 0}}, ["widths.fc6=0", "positive integer"]),
    ({"widths": {"conv3": -4}}, ["widths.conv3=-4"]),
    ({"widths": {"conv7": 10}}, ["'conv7'", "conv5"]),
    ({"norm": "layernorm"}, ["norm='layernorm'", "lrn, batchnorm, none"]),
    ({"init": "xavier"}, ["init='xavier'", "paper, kaiming"]),
    ({"dropout": 1.5}, ["dropout=1.5"]),
])
def test_bad_options_name_the_value_and_what_is_valid(options, words):
    with pytest.raises(ValueError) as err:
        zfnet_small(num_classes=10, in_channels=1, **options)
    for word in words:
        assert word in str(err.value)


def test_built_models_are_in_training_mode_with_untouched_batchnorm():
    model = zfnet_small(num_classes=10, in_channels=1, norm="batchnorm")
    assert all(m.training for m in model.modules())
    bn = model.get_submodule("norm1")
    assert torch.equal(bn.running_var, torch.ones_like(bn.running_var)) and int(bn.num_batches_tracked) == 0


def test_alexnet_small_parameter_count_by_hand():
    from zfexp.models import alexnet_small

    model = alexnet_small(num_classes=10, in_channels=1)
    # conv1 9x9x1x32 (28 -> stride 2 -> 14 -> pool 7 -> 7 -> pool 3 -> 3 x 3 x 3 -> pool 1): 64 features into fc6
    expected = (9 * 9 * 1 * 32 + 32) + (3 * 3 * 32 * 64 + 64) + (3 * 3 * 64 * 96 + 96) + (3 * 3 * 96 * 96 + 96) \
        + (3 * 3 * 96 * 64 + 64) + (64 * 256 + 256) + (256 * 256 + 256) + (256 * 10 + 10)
    assert sum(p.numel() for p in model.parameters()) == expected == 299_914
    assert feature_shapes(model)["conv1"] == (32, 14, 14)


def test_width_factors_scale_the_presets_widths():
    from zfexp.models import zfnet_small

    model = zfnet_small(num_classes=10, in_channels=1,
                        width_factors={"fc6": 0.5, "fc7": 2.0, "conv3": 4 / 3, "conv4": 8 / 3, "conv5": 2.0})
    assert (model.fc6.out_features, model.fc7.out_features) == (128, 512)  # 256 x 0.5, 256 x 2
    assert (model.conv3.out_channels, model.conv4.out_channels, model.conv5.out_channels) == (128, 256, 128)
    big = zfnet(width_factors={"conv3": 512 / 384, "conv4": 1024 / 384, "conv5": 2.0})  # Table 3's 512,1024,512
    assert (big.conv3.out_channels, big.conv4.out_channels, big.conv5.out_channels) == (512, 1024, 512)
    with pytest.raises(ValueError, match=r"width_factors: 'fc8' is not a layer.*valid: conv1"):
        zfnet_small(width_factors={"fc8": 2.0})
    with pytest.raises(ValueError, match="width_factors.fc6=0: must be a positive number"):
        zfnet_small(width_factors={"fc6": 0})
    with pytest.raises(ValueError, match="fc6 is set in both widths"):
        zfnet_small(widths={"fc6": 100}, width_factors={"fc6": 2.0})
