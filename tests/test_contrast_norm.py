"""The few-kernel contrast normalisation equals nn.LocalResponseNorm under either alpha convention."""

from __future__ import annotations

import copy

import lightning
import pytest
import torch
from torch import nn

from zfexp.errors import InvalidValueError
from zfexp.models import zfnet
from zfexp.models.contrast_norm import LocalContrastNorm, window_band
from zfexp.module import ImageClassifier
from zfexp.pretrained import load_pretrained


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("convention, torch_alpha", [("paper", 5e-4), ("torch", 1e-4)])
def test_equals_local_response_norm_with_the_convention_mapped(memory_format, convention, torch_alpha):
    torch.manual_seed(0)
    # Activities at the paper's input scale (pixels in [-128, 128]): the normalisation then matters.
    x = (torch.randn(3, 96, 11, 11) * 30).contiguous(memory_format=memory_format).requires_grad_()
    ours = LocalContrastNorm(size=5, alpha=1e-4, beta=0.75, k=2.0, convention=convention)
    reference = nn.LocalResponseNorm(5, alpha=torch_alpha, beta=0.75, k=2.0)
    y, y_ref = ours(x), reference(x)
    assert y.is_contiguous(memory_format=memory_format)
    assert torch.allclose(y, y_ref, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(y, x, rtol=1e-2)  # it normalises something at this scale
    g = torch.randn_like(y)
    grad, grad_ref = torch.autograd.grad(y, x, g)[0], torch.autograd.grad(y_ref, x, g)[0]
    assert torch.allclose(grad, grad_ref, rtol=1e-5, atol=1e-6)


def test_paper_convention_is_five_times_torchs_alpha_by_hand():
    # One position, three maps, window 3: map 1 sees maps 0..2, map 0 sees 0..1 (the window is cut at the edge).
    x = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)
    paper = LocalContrastNorm(size=3, alpha=0.1, beta=1.0, k=1.0, convention="paper")(x).flatten()
    torch_ = LocalContrastNorm(size=3, alpha=0.1, beta=1.0, k=1.0, convention="torch")(x).flatten()
    assert torch.allclose(paper, torch.tensor([1 / (1 + 0.1 * 5), 2 / (1 + 0.1 * 14), 3 / (1 + 0.1 * 13)]))
    assert torch.allclose(torch_, torch.tensor([1 / (1 + 0.1 / 3 * 5), 2 / (1 + 0.1 / 3 * 14), 3 / (1 + 0.1 / 3 * 13)]))


def test_window_band_is_lrns_window():
    band = window_band(6, 5, torch.float32, torch.device("cpu"))
    assert band[:, 0].tolist() == [1, 1, 1, 0, 0, 0]  # map 0: maps 0..2
    assert band[:, 3].tolist() == [0, 1, 1, 1, 1, 1]  # map 3: maps 1..5
    # An even window reaches size // 2 maps back and one less forward: map 1 sees maps -1..2, i.e. 0..2.
    assert window_band(4, 4, torch.float32, torch.device("cpu"))[:, 1].tolist() == [1, 1, 1, 0]


def test_zfnet_defaults_to_the_paper_convention_and_names_a_bad_one():
    assert zfnet().get_submodule("norm1").convention == "paper"
    with pytest.raises(InvalidValueError, match="lrn.convention='caffe'; valid: paper"):
        zfnet(lrn={"convention": "caffe"})


def _checkpoint(module: ImageClassifier, path, drop_convention: bool = False):
    hparams = copy.deepcopy(dict(module.hparams))
    if drop_convention:  # as checkpoints written before model.lrn.convention existed
        del hparams["net"]["lrn"]["convention"]
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams,
                "pytorch-lightning_version": lightning.__version__}, path)
    return path


def test_checkpoints_name_their_convention_and_old_ones_load_as_trained(tmp_path):
    net = {"_target_": "zfexp.models.zfnet_small", "norm": "lrn"}
    module = ImageClassifier(net=net, num_classes=10, in_channels=1, input_size=28)
    assert module.hparams.net["lrn"]["convention"] == "paper"  # saved explicitly though not given
    again = ImageClassifier.load_from_checkpoint(_checkpoint(module, tmp_path / "new.ckpt"))
    assert again.net.get_submodule("norm1").convention == "paper"
    old = ImageClassifier.load_from_checkpoint(_checkpoint(module, tmp_path / "old.ckpt", drop_convention=True))
    assert old.net.get_submodule("norm1").convention == "torch"  # nn.LocalResponseNorm's, as it was trained
    assert old.net.get_submodule("norm1").alpha_per_sum == pytest.approx(1e-4 / 5)
    assert load_pretrained(tmp_path / "old.ckpt").net["lrn"]["convention"] == "torch"
