"""torchvision's networks and weights by name: ``zfexp.analyze network=resnet18 weights=DEFAULT`` and
``train.py model=torchvision model.name=resnet18``. Nothing can be downloaded here: a state_dict placed in a
temporary ``TORCH_HOME`` under torchvision's file name stands in for the download, and an unreachable proxy
makes the download fail at once where nothing is cached."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from tests.conftest import RESNET18_FILE, run_in_process
from zfexp.data.normalization import InputNormalization
from zfexp.errors import CheckpointError, InvalidValueError, UnsafeFileError
from zfexp.models.classifiers import adapt_input_channels, build_classifier, first_conv, torchvision_classifier
from zfexp.models.external import load_network
from zfexp.models.torchvision_weights import cached_file, names_weights


def test_named_weights_load_from_the_hub_cache_with_their_preprocessing_and_class_names(cached_resnet18):
    assert cached_file(torchvision.models.ResNet18_Weights.DEFAULT) == Path(os.environ["TORCH_HOME"]) / "hub" / \
        "checkpoints" / RESNET18_FILE
    for name in ("DEFAULT", "IMAGENET1K_V1", "ResNet18_Weights.IMAGENET1K_V1"):
        loaded = load_network("resnet18", name)
        assert all(torch.equal(loaded.net.state_dict()[k], v) for k, v in cached_resnet18.items())
        assert not loaded.net.training
    # What torchvision's ResNet18_Weights.IMAGENET1K_V1.transforms() does, and its 1000 ImageNet classes.
    assert loaded.input == {"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406],
                            "std": [0.229, 0.224, 0.225], "interpolation": "bilinear"}
    assert len(loaded.class_names) == 1000 and loaded.class_names[:2] == ["tench", "goldfish"]


def test_the_input_config_takes_the_weights_preprocessing_where_it_is_null():
    weights = {"resize": 232, "crop": 224, "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2],
               "interpolation": "bicubic"}
    auto = {"resize": None, "crop": None, "mean": None, "std": None, "interpolation": None}
    assert InputNormalization.from_config(auto, weights) == InputNormalization(232, 224, (0.5,) * 3, (0.2,) * 3,
                                                                               "bicubic")
    assert InputNormalization.from_config({**auto, "resize": 64, "crop": 64}, weights).resize == 64
    assert InputNormalization.from_config(auto) == InputNormalization()  # no weights: ImageNet's
    with pytest.raises(InvalidValueError, match="input.interpolation='cubic'; valid: bilinear, bicubic, nearest"):
        InputNormalization.from_config({**auto, "interpolation": "cubic"})


def test_offline_with_nothing_cached_names_the_file_and_where_to_put_it(torch_home):
    with pytest.raises(CheckpointError) as err:
        load_network("resnet18", "DEFAULT")
    message = str(err.value)
    assert str(torch_home / "hub" / "checkpoints" / RESNET18_FILE) in message
    assert "https://download.pytorch.org/models/" + RESNET18_FILE in message
    assert "$TORCH_HOME/hub/checkpoints/" in message
    assert message.endswith("or give weights=<a state_dict file>")  # the key of the command it came from


def test_a_cached_file_holding_code_is_refused_unopened(torch_home, tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = torch_home / "hub" / "checkpoints" / RESNET18_FILE
    path.parent.mkdir(parents=True)
    torch.save({"conv1.weight": Payload()}, path)
    with pytest.raises(UnsafeFileError, match=f"{path} holds Python objects that a safe load refuses"):
        load_network("resnet18", "DEFAULT")
    assert not marker.exists()
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # torch's own default is back


def test_a_wrong_weights_name_lists_the_valid_ones(torch_home):
    with pytest.raises(InvalidValueError, match="weights='IMAGENET1K_V9'.*valid: DEFAULT, IMAGENET1K_V1 "
                                                r"\(ResNet18_Weights\)"):
        load_network("resnet18", "IMAGENET1K_V9")
    with pytest.raises(InvalidValueError, match="network=<a torchvision builder name>"):
        load_network("mypkg.nets.build", "DEFAULT")


def test_a_name_reads_as_weights_unless_a_file_has_it(tmp_path, monkeypatch):
    assert names_weights("DEFAULT") and names_weights("IMAGENET1K_V2") and names_weights("VGG16_Weights.DEFAULT")
    assert not names_weights("vgg16.pth") and not names_weights("weights/DEFAULT") and not names_weights(None)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "DEFAULT").write_bytes(b"")
    assert not names_weights("DEFAULT")


@pytest.fixture
def photos(tmp_path) -> Path:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    folder = tmp_path / "photos"
    folder.mkdir()
    for i, image in enumerate(load_sample_images().images):  # two 427x640 colour photographs
        Image.fromarray(image).save(folder / f"{i}.jpg")
    return folder


ANALYZE_FAST = ["input.resize=64", "input.crop=64", "logger=none", "deconv.num_images=2", "top9.max_images=2",
                "occlusion.stride=8", "invariance.transforms=[rotate]", "correspondence.n_random=2"]
RESNET18_LAYERS = ["conv1", "layer2.0.conv1", "layer3.0.conv1", "layer3.1.conv2", "layer4.1.conv2"]  # 5 of 20


def test_analyze_resnet18_with_named_weights_draws_every_figure_labelled_by_its_classes(cached_resnet18, photos,
                                                                                          tmp_path):
    out = tmp_path / "run"
    code, stderr = run_in_process("zfexp.analyze", "network=resnet18", "weights=DEFAULT", f"images={photos}",
                                  *ANALYZE_FAST, f"hydra.run.dir={out}")
    assert code == 0, stderr
    assert {p.name for p in (out / "images").glob("*.png")} == (
        {f"deconv_{layer}.png" for layer in RESNET18_LAYERS} | {f"top9_{layer}.png" for layer in RESNET18_LAYERS}
        | {"occlusion_panel.png", "invariance_curves.png", "correspondence_occluded.png"})
    # The images are labelled with the network's prediction, named by the weights' classes, which the loaded
    # network (the file's weights) gives again here.
    names = torchvision.models.ResNet18_Weights.DEFAULT.meta["categories"]
    occlusion = list(csv.DictReader((out / "tables" / "occlusion_table.csv").open()))
    assert all(row["top_class"] == names[int(row["top_label"])] for row in occlusion)
    top9 = list(csv.DictReader((out / "tables" / "top9_layer3.1.conv2_table.csv").open()))
    net = load_network("resnet18", "DEFAULT").net
    normalization = InputNormalization(resize=64, crop=64)
    from zfexp.data.photos import ImageFiles

    images = torch.stack([image for image, _ in ImageFiles(photos, normalization.transform())])
    with torch.no_grad():
        predicted = net(images).argmax(1)
    assert all(row["predicted_class"] == names[int(predicted[int(row["image"])])] for row in top9)
    record = json.loads((out / "analyze.json").read_text())
    assert record["input"]["resize"] == 64 and record["input"]["mean"] == [0.485, 0.456, 0.406]


def test_a_cached_file_of_another_network_is_named_with_its_keys_and_shapes(torch_home):
    path = torch_home / "hub" / "checkpoints" / RESNET18_FILE
    path.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet50().state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        load_network("resnet18", "DEFAULT")
    message = str(err.value)
    assert f"{path} holds weights of another network than torchvision's resnet18: " in message
    assert "unexpected (layer1.0.bn3.bias, layer1.0.bn3.num_batches_tracked, layer1.0.bn3.running_mean, ...)" in message
    assert "shapes differ (layer1.0.conv1.weight [64, 64, 1, 1] in the file, [64, 64, 3, 3] in the network" in message
    assert "incomplete" not in message and "complete copy" not in message


def test_analyze_offline_with_nothing_cached_stops_with_one_paragraph(torch_home, photos, tmp_path):
    code, stderr = run_in_process("zfexp.analyze", "network=resnet18", "weights=DEFAULT", f"images={photos}",
                                  "logger=none", f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 1
    error = stderr[stderr.index("Error: "):].split("\n\n")[0]
    assert "Traceback" not in stderr and "\n" not in error.strip()
    assert str(torch_home / "hub" / "checkpoints" / RESNET18_FILE) in error


def test_one_channel_data_sums_the_first_convs_filters_exactly():
    torch.manual_seed(0)
    rgb = torchvision.models.resnet18(num_classes=10).eval()
    grey = torch.rand(2, 1, 32, 32)
    expected = rgb(grey.repeat(1, 3, 1, 1))
    assert adapt_input_channels(rgb, 1, 32) == "conv1"
    assert rgb.conv1.weight.shape == (64, 1, 7, 7)
    torch.testing.assert_close(rgb(grey), expected, rtol=1e-5, atol=1e-5)
    assert adapt_input_channels(rgb, 1, 32) is None  # already fits


def test_the_first_conv_is_the_one_the_forward_runs_first():
    class Late(nn.Module):  # registers its head conv after the stem's, but runs it second
        def __init__(self):
            super().__init__()
            self.head = nn.Conv2d(8, 8, 1)
            self.stem = nn.Conv2d(3, 8, 3)

        def forward(self, x):
            return self.head(self.stem(x))

    assert first_conv(Late(), 16)[0] == "stem"


def test_train_builds_any_builder_that_takes_num_classes_for_the_data():
    net = build_classifier({"_target_": "torchvision.models.resnet18"}, num_classes=10, in_channels=1,
                           input_size=28)
    assert net.fc.out_features == 10 and net.conv1.in_channels == 1
    with pytest.raises(InvalidValueError, match="the builder takes no num_classes"):
        build_classifier({"_target_": "torch.nn.Flatten"}, 10, 1, 28)
    with pytest.raises(InvalidValueError, match="does not take the data's 1-channel 28 px images"):
        build_classifier({"_target_": "torchvision.models.vit_b_16"}, 10, 1, 28)
    with pytest.raises(InvalidValueError, match="model.name='resnet181' is not a torchvision classification builder"):
        torchvision_classifier("resnet181", 10)


def test_fine_tuning_named_weights_keeps_all_but_the_classifier_and_a_checkpoint_needs_no_download(
        cached_resnet18, torch_home):
    spec = {"_target_": "zfexp.models.classifiers.torchvision_classifier", "name": "resnet18", "weights": "DEFAULT"}
    net = build_classifier(spec, num_classes=10, in_channels=1, input_size=28)
    kept = [k for k in cached_resnet18 if not k.startswith(("fc.", "conv1."))]
    assert all(torch.equal(net.state_dict()[k], cached_resnet18[k]) for k in kept)
    torch.testing.assert_close(net.conv1.weight, cached_resnet18["conv1.weight"].sum(1, keepdim=True))
    assert net.fc.out_features == 10
    # Reading a checkpoint of it builds the network without the weights: nothing is read from the cache.
    (torch_home / "hub" / "checkpoints" / RESNET18_FILE).unlink()
    rebuilt = build_classifier(spec, num_classes=10, in_channels=1, input_size=28, from_checkpoint=True)
    rebuilt.load_state_dict(net.state_dict())


@pytest.mark.slow  # a whole fit; tests/test_every_network.py's slow training of three families proves the same path
def test_train_a_torchvision_network_with_every_paper_callback_on_its_own_layers(tmp_path):
    out = tmp_path / "run"
    code, stderr = run_in_process(
        "train", "experiment=quickstart", "model=torchvision", "model.name=resnet18", "logger=csv",
        "trainer.max_epochs=1", "data.subset_size=256", "test=false", "callbacks.deconv_snapshots.epochs=[1]",
        "callbacks.deconv_snapshots.probe_size=16", "callbacks.top_activations.max_images=64",
        "callbacks.filter_diagnostics.probe_size=16", "callbacks.occlusion_maps.probe_size=1",
        "callbacks.occlusion_maps.stride=7", "callbacks.invariance_curves.probe_size=1",
        "callbacks.invariance_curves.transforms=[rotate]", f"hydra.run.dir={out}")
    assert code == 0, stderr
    layers = ["conv1", "layer2.0.conv1", "layer3.0.conv1", "layer3.1.conv2", "layer4.1.conv2"]  # 5 of 20, by depth
    images = {p.name for p in (out / "images").glob("*.png")}
    assert images == ({f"deconv_{layer}_epoch001.png" for layer in layers}
                      | {f"deconv_{layer}_evolution.png" for layer in layers}
                      | {f"top9_{layer}_final.png" for layer in layers}
                      | {"filters_conv1_final.png", "occlusion_panel_final.png", "invariance_curves_final.png"})
    table = (out / "tables" / "invariance_table_final.csv").read_text().splitlines()[0]
    assert table.endswith("distance_conv1,distance_layer4.1.conv2")  # no hidden linear: the last conv


def test_a_network_that_cannot_take_the_data_stops_before_training():
    spec = {"_target_": "zfexp.models.classifiers.torchvision_classifier", "name": "vit_b_16"}
    with pytest.raises(InvalidValueError, match="does not take the data's 1-channel 28 px images"):
        build_classifier(spec, num_classes=10, in_channels=1, input_size=28)
    # GoogLeNet and Inception-v3 are trained without their auxiliary classifiers: logits alone in training too.
    net = torchvision_classifier("googlenet", 10, in_channels=1, input_size=64).train()
    assert isinstance(net(torch.zeros(2, 1, 64, 64)), torch.Tensor) and net.aux1 is None


def test_a_callbacks_default_layers_keep_the_state_key_the_named_layers_had():
    """A run resumed from a checkpoint written when the configs named conv1..conv5 finds its callbacks' states
    (probe images, chosen maps, snapshots): the key holds the layers setup named, not null."""
    import lightning as L

    from callbacks import DeconvSnapshots, FilterDiagnostics, InvarianceCurves, OcclusionMaps
    from zfexp.module import ImageClassifier

    module = ImageClassifier({"_target_": "zfexp.models.zfnet_small"}, num_classes=10, in_channels=1, input_size=28)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    for default, named in ((DeconvSnapshots(layers=None), DeconvSnapshots(layers=["conv1", "conv2", "conv3", "conv4",
                                                                                  "conv5"])),
                           (InvarianceCurves(layers=None), InvarianceCurves(layers=["conv1", "fc7"])),
                           (OcclusionMaps(feature_layer=None), OcclusionMaps(feature_layer="conv5")),
                           (FilterDiagnostics(first_layer=None), FilterDiagnostics(first_layer="conv1"))):
        default.setup(trainer, module, "fit")
        assert default.state_key == named.state_key


def test_the_input_config_is_checked_against_the_named_weights_preprocessing_before_loading(tmp_path):
    from tests.conftest import compose_config
    from zfexp.analyze import check_config

    # EfficientNet-B7's weights resize to 600 and crop 600: a crop of 512 fits them (not ImageNet's 256).
    check_config(compose_config("analyze", tmp_path, ["network=efficientnet_b7", "weights=DEFAULT",
                                                      f"images={tmp_path}", "input.crop=512"]))
    with pytest.raises(InvalidValueError, match="input.crop=700 is larger than input.resize=600"):
        check_config(compose_config("analyze", tmp_path, ["network=efficientnet_b7", "weights=DEFAULT",
                                                          f"images={tmp_path}", "input.crop=700"]))
