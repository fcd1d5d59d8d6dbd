"""Every network a researcher brings: the layers drawn by default are convs whose maps are spatial (a
squeeze-excite conv works on globally pooled features and is not one), found from the forward; a layer that
cannot be drawn is named before any work; every torchvision classifier (``-m slow``: the whole list, each under
4 GiB of peak memory but ViT-H/14) and timm's models by name draw every figure."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from tests.conftest import ROOT, run_in_process
from zfexp.analysis import DeconvNet, receptive_field
from zfexp.analysis.layer_choice import check_drawn_layers, conv_maps, default_conv_layers
from zfexp.analysis.receptive_field import ClippedField, Field, field_geometry
from zfexp.errors import CheckpointError, InvalidValueError

FAST = ["logger=none", "deconv.num_images=2", "deconv.maps_per_layer=2", "top9.max_images=2",
        "top9.maps_per_layer=2", "occlusion.num_images=1", "invariance.num_images=2", "invariance.transforms=[rotate]",
        "correspondence.num_images=2", "correspondence.n_random=2"]
FIGURES = {"occlusion_panel.png", "invariance_curves.png", "correspondence_occluded.png"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    folder = tmp_path_factory.mktemp("photos")
    for i, image in enumerate(load_sample_images().images):  # two 427x640 colour photographs
        Image.fromarray(image).save(folder / f"{i}.jpg")
    return folder


def analyze_overrides(side: int) -> list[str]:
    """The analyses at ``side`` px, with an occluder a quarter of the side moved by its own size."""
    return [f"input.resize={side}", f"input.crop={side}", f"occlusion.stride={side // 4}", *FAST]


def test_squeeze_excite_convs_are_no_default_layer_and_are_refused_by_name():
    net = torchvision.models.mobilenet_v3_small().eval()
    maps = conv_maps(net, (3, 64, 64))
    assert "features.4.block.2.fc1" in maps.global_ and "features.4.block.2.fc2" in maps.global_
    assert maps.sizes["features.4.block.2.fc1"] == (1, 1)
    assert not any(name.endswith((".fc1", ".fc2")) for name in maps.drawable)
    layers = default_conv_layers(net, (3, 64, 64))
    assert layers == ["features.0.0", "features.3.block.2.0", "features.6.block.1.0", "features.9.block.1.0",
                      "features.12.0"]
    with pytest.raises(InvalidValueError, match=r"deconv.layers: layer='features.4.block.2.fc1' gives maps of 1x1 at "
                                                r"every image size: it works on globally pooled features.*layers that "
                                                r"can be drawn: features.0.0, "):
        check_drawn_layers("deconv.layers", net, ["features.4.block.2.fc1"], (3, 64, 64))


def test_auxiliary_heads_are_not_drawn_or_read():
    net = torchvision.models.googlenet(init_weights=False).eval()
    layers = default_conv_layers(net, (3, 64, 64))
    assert not any(layer.startswith("aux") for layer in layers)
    with pytest.raises(InvalidValueError, match="layer='aux2.conv.conv' is not run by the network's forward"):
        check_drawn_layers("top9.layers", net, ["aux2.conv.conv"], (3, 64, 64))


def test_a_conv_after_a_gate_sees_its_local_field_and_a_field_beyond_the_probe_is_clipped_per_unit():
    net = torchvision.models.efficientnet_b0().eval()
    # A 1x1 conv after earlier squeeze-excite gates: the gates scale whole maps and move no field.
    field = field_geometry(net, "features.3.1.block.0.0", 3, 64)
    assert isinstance(field, Field) and field.size == (35, 35) and field.jump == (8, 8)
    # Deeper, one unit sees more than twice the image: each unit's box on these images, clipped.
    deep = field_geometry(net, "features.6.1.block.0.0", 3, 64)
    assert isinstance(deep, ClippedField) and len(deep.rows) == len(deep.cols) == 2  # 2x2 maps at 64 px
    assert receptive_field(net, "features.6.1.block.0.0", (0, 0), 64) == (0, 0, 63, 63)


def test_convnext_fields_through_its_patchify_stem_layer_norm_and_depthwise_convs():
    net = torchvision.models.convnext_tiny().eval()
    assert field_geometry(net, "features.0.0", 3, 64) == Field((4, 4), (0, 0), (4, 4))  # 4x4 patches, stride 4
    # A block: one depthwise 7x7 conv on the stride-4 maps (LayerNorm over channels moves nothing).
    assert field_geometry(net, "features.1.0.block.0", 3, 64).size == (4 + 6 * 4, 4 + 6 * 4)


@pytest.mark.parametrize("in_c, out_c, groups, stride, padding, dilation",
                         [(6, 4, 1, 1, 1, 1), (6, 9, 3, 2, 0, 1), (8, 8, 8, 1, 2, 2), (4, 6, 2, 2, "same", 1)])
def test_the_probes_average_conv_equals_a_conv_with_every_weight_one_over_the_fan_in(in_c, out_c, groups, stride,
                                                                                      padding, dilation):
    from zfexp.analysis.receptive_field import _average_conv

    torch.manual_seed(0)
    x = torch.rand(2, in_c, 11, 13, dtype=torch.float64)
    weight = torch.full((out_c, in_c // groups, 3, 3), 1.0 / (in_c // groups * 9), dtype=torch.float64)
    stride = 1 if padding == "same" else stride  # a "same" conv is unstrided
    expected = torch.nn.functional.conv2d(x, weight, None, stride, padding, dilation, groups)
    torch.testing.assert_close(_average_conv(x, weight.shape, stride, padding, dilation, groups), expected)


def test_the_unhandled_activation_is_logged_once_per_run(caplog):
    from zfexp.analysis import graph

    net = torchvision.models.convnext_tiny().eval()
    graph._SAID_UNCOVERED.discard("gelu")
    with caplog.at_level(logging.INFO, logger="zfexp.analysis.graph"):
        for layer in ("features.1.0", "features.3.0", "features.5.0"):
            DeconvNet(net).project(torch.rand(1, 3, 64, 64), layer, [0, 1], mode="max")
    said = [r for r in caplog.records if "passed their gradient" in r.getMessage()]
    assert len(said) == 1 and "gelu" in said[0].getMessage()


# ViT-B/16 (two minutes on two cores), GoogLeNet and ConvNeXt are slow (test_auxiliary_heads_are_not_drawn_or_read
# and test_convnext_fields_through_its_patchify_stem_layer_norm_and_depthwise_convs check their parts); the whole
# of torchvision (-m slow) runs every one of them too.
@pytest.mark.parametrize("network, side", [("mobilenet_v3_small", 64),
                                           pytest.param("convnext_tiny", 64, marks=pytest.mark.slow),
                                           pytest.param("googlenet", 64, marks=pytest.mark.slow),
                                           pytest.param("vit_b_16", 224, marks=pytest.mark.slow)])
def test_analyze_draws_every_figure(network, side, photos, tmp_path):
    out = tmp_path / "run"
    code, stderr = run_in_process("zfexp.analyze", f"network={network}", f"images={photos}",
                                  *analyze_overrides(side), f"hydra.run.dir={out}")
    assert code == 0, stderr[-2000:]
    drawn = drawn_layers(out)
    assert len(drawn) == (1 if network == "vit_b_16" else 5)  # a ViT has one conv: its patch embedding
    assert {p.name for p in (out / "images").glob("*.png")} == (
        {f"{kind}_{layer}.png" for layer in drawn for kind in ("deconv", "top9")} | FIGURES)


def drawn_layers(run: Path) -> list[str]:
    return sorted(p.name.removeprefix("deconv_").removesuffix(".png") for p in (run / "images").glob("deconv_*"))


def test_a_squeeze_excite_conv_named_stops_the_analysis_before_any_work(photos, tmp_path):
    code, stderr = run_in_process("zfexp.analyze", "network=mobilenet_v3_small", f"images={photos}",
                                  *analyze_overrides(64), "deconv.layers=[features.4.block.2.fc1]",
                                  f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 1 and "Traceback" not in stderr
    assert "deconv.layers: layer='features.4.block.2.fc1' gives maps of 1x1 at every image size" in stderr
    assert not (tmp_path / "run" / "images").exists()


# -- the whole of torchvision (-m slow) ----------------------------------------------------------------------------

TRANSFORMERS = ("vit_", "swin_", "maxvit_")


def smallest_side(name: str) -> int:
    """The smallest input each network takes in this test: 64 px, 80 for Inception-v3 (75 at least), 224 for the
    transformers (a ViT takes 224 only; Swin's and MaxViT's windows)."""
    return 224 if name.startswith(TRANSFORMERS) else 80 if name == "inception_v3" else 64


# The one network over 4 GiB (measured 4.7-4.9): ViT-H/14 holds 2.4 GiB of weights (632M parameters) and takes
# 224 px only; its one conv (the patch embedding) has no ReLU after it, so the recorded forward that finds its
# features runs the whole encoder with autograd's graph (1.4 GiB for two images).
PEAK_GIB = {"vit_h_14": 5.0}


def peak_rss_gib(cmd: list[str], env: dict[str, str]) -> tuple[int, float, str]:
    """Run ``cmd``; ``(exit code, its peak resident memory in GiB, its stderr)``."""
    process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_maxrss / 2**20, stderr


@pytest.mark.slow
@pytest.mark.parametrize("network", torchvision.models.list_models(module=torchvision.models))
def test_every_torchvision_classifier_draws_every_figure_under_4_gib(network, photos, tmp_path):
    out = tmp_path / "run"
    side = smallest_side(network)
    code, peak, stderr = peak_rss_gib(
        [sys.executable, "-m", "zfexp.analyze", f"network={network}", f"images={photos}", *analyze_overrides(side),
         "invariance.transforms=[rotate]", f"hydra.run.dir={out}"], {**os.environ, "WANDB_MODE": "offline"})
    assert code == 0, stderr[-2000:]
    drawn = drawn_layers(out)
    assert drawn and {p.name for p in (out / "images").glob("*.png")} == (
        {f"{kind}_{layer}.png" for layer in drawn for kind in ("deconv", "top9")} | FIGURES)
    print(f"{network} at {side} px: peak {peak:.2f} GiB")  # shown by pytest -rA
    assert peak < PEAK_GIB.get(network, 4.0), f"{network}: {peak:.2f} GiB"


# -- timm ----------------------------------------------------------------------------------------------------------

def test_analyze_a_timm_model_by_name_with_random_weights_and_from_a_state_dict_file(photos, tmp_path):
    import timm

    out = tmp_path / "random"
    code, stderr = run_in_process("zfexp.analyze", "network=timm/resnet18", f"images={photos}",
                                  *analyze_overrides(64), f"hydra.run.dir={out}")
    assert code == 0, stderr[-2000:]
    drawn = drawn_layers(out)
    assert len(drawn) == 5 and {p.name for p in (out / "images").glob("*.png")} == (
        {f"{kind}_{layer}.png" for layer in drawn for kind in ("deconv", "top9")} | FIGURES)
    import json

    record = json.loads((out / "analyze.json").read_text())  # timm's preprocessing where input's keys are null
    assert record["input"]["interpolation"] == "bicubic" and record["input"]["mean"] == [0.485, 0.456, 0.406]

    torch.manual_seed(3)
    state = timm.create_model("resnet18").state_dict()
    torch.save(state, tmp_path / "resnet18.pth")
    from zfexp.models.external import load_network

    loaded = load_network("timm/resnet18", str(tmp_path / "resnet18.pth"))
    assert all(torch.equal(loaded.net.state_dict()[k], v) for k, v in state.items())
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "resnet34.pth")
    with pytest.raises(CheckpointError, match=r"resnet34.pth holds weights of another network than ResNet: 96 "
                                              r"unexpected \(layer1.2.bn1.bias, "):
        load_network("timm/resnet18", str(tmp_path / "resnet34.pth"))


def offline_hub(monkeypatch, cache: Path) -> None:
    """huggingface_hub with its cache at ``cache`` and no network, as ``HF_HOME=<cache's parent>
    HF_HUB_OFFLINE=1`` set before it is imported give it (it reads both once, at import)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_timm_pretrained_weights_offline_with_nothing_cached_name_the_repository(tmp_path, monkeypatch):
    from zfexp.models.external import load_network

    offline_hub(monkeypatch, tmp_path / "hf" / "hub")
    with pytest.raises(CheckpointError) as err:
        load_network("timm/resnet18", "DEFAULT")
    message = str(err.value)
    assert "huggingface-cli download timm/resnet18.a1_in1k" in message
    assert f"copy its folder to {tmp_path / 'hf' / 'hub'}/models--timm--resnet18.a1_in1k" in message
    assert message.endswith("or give weights=<a state_dict file>")
    with pytest.raises(InvalidValueError, match="weights='in22k_nope': not a pretrained tag of timm's resnet18; "
                                                "valid: DEFAULT, a1_in1k"):
        load_network("timm/resnet18", "in22k_nope")
    with pytest.raises(InvalidValueError, match="network='resnet_18' is not a timm model"):
        load_network("timm/resnet_18", None)


def test_timm_pretrained_weights_load_from_the_hugging_face_cache_with_imagenet_class_names(tmp_path, monkeypatch):
    """The layout huggingface_hub keeps a download in: ``hub/models--timm--<name>/snapshots/<rev>/`` and
    ``refs/main`` naming the revision."""
    import timm
    from safetensors.torch import save_file

    from zfexp.models.external import load_network

    repo = tmp_path / "hf" / "hub" / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abc")
    snapshot = repo / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    torch.manual_seed(5)
    state = timm.create_model("resnet18").state_dict()
    save_file(state, snapshot / "model.safetensors")
    offline_hub(monkeypatch, tmp_path / "hf" / "hub")
    loaded = load_network("timm/resnet18", "DEFAULT")
    assert all(torch.equal(loaded.net.state_dict()[k], v) for k, v in state.items())
    assert loaded.class_names[:2] == ["tench", "goldfish"] and len(loaded.class_names) == 1000
    assert loaded.input == {"resize": 236, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                            "interpolation": "bicubic"}


def test_a_torchvision_network_that_needs_larger_images_is_advised_a_size_that_works(tmp_path):
    """convnext_tiny on the 28 px quickstart: the advice, followed, builds the module and its data."""
    from hydra.utils import instantiate

    from tests.conftest import compose_train
    from zfexp.pretrained import build_module

    base = ["experiment=quickstart", "model=torchvision", "model.name=convnext_tiny"]
    cfg = compose_train(tmp_path / "logs" / "train" / "runs" / "a", base)
    datamodule = instantiate(cfg.data, _convert_="all")
    with pytest.raises(InvalidValueError) as err:
        build_module(cfg, datamodule)
    advice = str(err.value).split("; set ")[1].split(" (the smallest")[0].split()
    assert advice == ["data.preprocess.resize=32", "data.preprocess.crop=32", "data.preprocess.input_size=32"]
    cfg = compose_train(tmp_path / "logs" / "train" / "runs" / "b", [*base, *advice])
    datamodule = instantiate(cfg.data, _convert_="all")
    assert datamodule.input_size == 32
    module = build_module(cfg, datamodule)
    assert module(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


def test_the_quickstarts_zfnet_options_stay_on_the_zfnet_family(tmp_path):
    from tests.conftest import compose_train

    other = compose_train(tmp_path / "logs" / "train" / "runs" / "a", ["experiment=quickstart", "model=torchvision"])
    assert "norm" not in other.model and "dropout" not in other.model
    for model in ("zfnet_small", "zfnet", "alexnet"):
        ours = compose_train(tmp_path / "logs" / "train" / "runs" / model, ["experiment=quickstart", f"model={model}"])
        assert ours.model.norm == "batchnorm" and ours.model.dropout == 0.0
    lrn = compose_train(tmp_path / "logs" / "train" / "runs" / "c", ["experiment=quickstart", "model.norm=lrn"])
    assert lrn.model.norm == "lrn"  # the command line still wins


@pytest.mark.slow
@pytest.mark.parametrize("model", ["model=torchvision model.name=mobilenet_v3_small",
                                   "model=torchvision model.name=efficientnet_b0",
                                   "model=torchvision model.name=convnext_tiny data.preprocess.resize=32 "
                                   "data.preprocess.crop=32 data.preprocess.input_size=32",
                                   "model=timm model.name=resnet18"])
def test_train_a_short_epoch_with_every_paper_callback(model, tmp_path):
    out = tmp_path / "run"
    code, stderr = run_in_process(
        "train", "experiment=quickstart", *model.split(), "logger=csv", "trainer.max_epochs=1",
        "data.subset_size=256", "test=false", "callbacks.deconv_snapshots.epochs=[1]",
        "callbacks.deconv_snapshots.probe_size=16", "callbacks.top_activations.max_images=64",
        "callbacks.filter_diagnostics.probe_size=16", "callbacks.occlusion_maps.probe_size=1",
        "callbacks.invariance_curves.probe_size=1", "callbacks.invariance_curves.transforms=[rotate]",
        f"hydra.run.dir={out}")
    assert code == 0, stderr[-2000:]
    images = {p.name for p in (out / "images").glob("*.png")}
    layers = sorted(name.removeprefix("top9_").removesuffix("_final.png") for name in images if name.startswith("top9"))
    assert len(layers) == 5
    assert images == ({f"deconv_{layer}_epoch001.png" for layer in layers}
                      | {f"deconv_{layer}_evolution.png" for layer in layers}
                      | {f"top9_{layer}_final.png" for layer in layers}
                      | {f"filters_{layers_first(out)}_final.png", "occlusion_panel_final.png",
                         "invariance_curves_final.png"})


def layers_first(run: Path) -> str:
    return next(p.name for p in (run / "images").glob("filters_*")).removeprefix("filters_").removesuffix("_final.png")


def test_a_layer_that_cannot_be_drawn_stops_training_before_the_first_step(tmp_path):
    out = tmp_path / "run"
    code, stderr = run_in_process("train", "experiment=quickstart", "model=torchvision",
                                  "model.name=mobilenet_v3_small", "logger=none", "data.subset_size=256",
                                  "callbacks.top_activations.layers=[features.4.block.2.fc1]", f"hydra.run.dir={out}")
    assert code == 1 and "Traceback" not in stderr
    assert "callbacks.top_activations.layers: layer='features.4.block.2.fc1' gives maps of 1x1" in stderr
    assert not (out / "images").exists() and "train/loss" not in (out / "metrics.json").read_text()

