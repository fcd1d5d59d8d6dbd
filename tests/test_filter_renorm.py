"""Filter renormalisation: filters above the RMS radius land on it, the others keep their bits."""

import pytest
import torch
from torch import nn

from zfexp.analysis import filter_rms, renormalize_filters_
from zfexp.models import zfnet_small


def make_conv(rms_values, radius_dim=(3, 3, 3)):
    """A conv whose filter k has RMS exactly rms_values[k] (constant-magnitude +-1 filters, scaled)."""
    conv = nn.Conv2d(radius_dim[0], len(rms_values), radius_dim[1])
    signs = torch.randint(0, 2, conv.weight.shape).float() * 2 - 1
    with torch.no_grad():
        conv.weight.copy_(signs * torch.tensor(rms_values).view(-1, 1, 1, 1))
    return conv


def test_rms_is_root_mean_square_per_filter():
    conv = make_conv([0.05, 0.2, 0.1])
    assert torch.allclose(filter_rms(conv.weight), torch.tensor([0.05, 0.2, 0.1]))


def test_filters_above_radius_are_scaled_onto_it_and_others_untouched():
    model = nn.Sequential()
    model.add_module("conv1", make_conv([0.05, 0.2, 0.1, 3.0, 0.0999]))
    before = model.conv1.weight.detach().clone()
    counts = renormalize_filters_(model, radius=0.1)
    after = model.conv1.weight.detach()
    assert counts == {"conv1": 2}
    rms = filter_rms(after)
    assert torch.allclose(rms[[1, 3]], torch.tensor([0.1, 0.1]), rtol=1e-6)
    for k in (0, 2, 4):  # at or below the radius: bit-identical
        assert torch.equal(after[k], before[k])
    # Rescaling keeps a filter's direction.
    cos = nn.functional.cosine_similarity(after[3].flatten(), before[3].flatten(), dim=0)
    assert cos.item() == pytest.approx(1.0, abs=1e-6)


def test_every_conv_filter_ends_within_radius_on_a_real_network():
    model = zfnet_small(num_classes=10, in_channels=1, init="kaiming")
    with torch.no_grad():
        model.get_submodule("conv3").weight.mul_(5)
    before = {n: model.get_submodule(n).weight.detach().clone() for n in model.layer_names if n.startswith("conv")}
    counts = renormalize_filters_(model, radius=0.1)
    for name, w0 in before.items():
        w = model.get_submodule(name).weight.detach()
        rms0, rms = filter_rms(w0), filter_rms(w)
        assert (rms <= 0.1 * (1 + 1e-6)).all(), name
        below = rms0 <= 0.1
        assert torch.equal(w[below], w0[below]), name
        assert counts[name] == int((~below).sum()), name
    assert counts["conv1"] == 32  # kaiming on a 5x5x1 filter: std 0.28 > 0.1


def test_layers_selects_and_unknown_names_are_rejected():
    model = zfnet_small(num_classes=10, in_channels=1, init="kaiming")
    conv2_before = model.get_submodule("conv2").weight.detach().clone()
    counts = renormalize_filters_(model, radius=0.01, layers=["conv1"])
    assert list(counts) == ["conv1"]
    assert torch.equal(model.get_submodule("conv2").weight, conv2_before)
    with pytest.raises(ValueError, match="'conv9' is not a conv layer.*conv1"):
        renormalize_filters_(model, layers=["conv9"])
    with pytest.raises(ValueError, match="radius=0"):
        renormalize_filters_(model, radius=0)


def test_the_per_step_renormaliser_gives_the_same_bits_and_a_skipped_step_changes_nothing():
    """FilterRenormalizer (what FilterRenorm runs after every step, all layers at once) gives the weights of
    renormalize_filters_ bit for bit; with the flag of a step whose update was skipped, no filter changes."""
    from zfexp.analysis import FilterRenormalizer, conv_layers

    def scaled_net():
        torch.manual_seed(0)
        model = zfnet_small(num_classes=10, in_channels=1, init="kaiming")
        with torch.no_grad():
            for name in ("conv2", "conv3", "conv4", "conv5"):
                model.get_submodule(name).weight.mul_(7)
        return model

    reference, model = scaled_net(), scaled_net()
    counts = renormalize_filters_(reference, radius=0.1)
    renorm = FilterRenormalizer(conv_layers(model), 0.1)
    skipped = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert not renorm(skip=torch.ones(1)).any()
    assert all(torch.equal(p, skipped[n]) for n, p in model.named_parameters())
    rescaled = renorm.per_layer(renorm(skip=torch.zeros(1)))
    assert {name: int(mask.sum()) for name, mask in rescaled.items()} == counts
    assert all(counts[name] > 0 for name in ("conv1", "conv2", "conv3", "conv4", "conv5")), counts
    assert all(torch.equal(p, reference.get_parameter(n)) for n, p in model.named_parameters())
