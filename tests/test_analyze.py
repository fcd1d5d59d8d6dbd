"""``python -m zfexp.analyze`` on a checkpoint from a short fit: the test split, a folder of real
photographs, and its errors."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from tests.conftest import DATA_DIR, ROOT, TINY, compose_config, compose_train, run_in_process
from zfexp.analyze import analyze, images_of_class
from zfexp.errors import CorruptImageError
from zfexp.training import train

FAST = ["deconv.num_images=32", "top9.max_images=64", "occlusion.num_images=2", "occlusion.stride=4",
        "invariance.num_images=2", "correspondence.num_images=3", "correspondence.n_random=2"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("fit") / "logs" / "train" / "runs" / "run0"
    run.mkdir(parents=True)
    train(compose_train(run, ["experiment=quickstart", *TINY, "logger=csv", "callbacks.deconv_snapshots=null",
                              "callbacks.top_activations=null", "callbacks.filter_diagnostics=null",
                              "callbacks.occlusion_maps=null", "callbacks.invariance_curves=null", "test=false"]))
    return run / "checkpoints" / "last.ckpt"


@pytest.fixture
def photos(tmp_path):
    from PIL import Image
    from sklearn.datasets import load_sample_images

    folder = tmp_path / "photos"
    folder.mkdir()
    sample = load_sample_images()
    for name, image in zip(sample.filenames, sample.images, strict=True):
        Image.fromarray(image).save(folder / name.split("/")[-1])  # china.jpg, flower.jpg: 427x640 colour
    return folder


def analyze_dir(tmp_path):
    path = tmp_path / "logs" / "analyze" / "runs" / "a"
    path.mkdir(parents=True)
    return path


def test_every_analysis_on_the_test_split_lands_in_the_run_dir_and_wandb(checkpoint, tmp_path):
    out = analyze_dir(tmp_path)
    summary = analyze(compose_config("analyze", out, [f"ckpt_path={checkpoint}", *FAST]))
    layers = ["conv1", "conv2", "conv3", "conv4", "conv5"]
    images = {p.name for p in (out / "images").glob("*.png")}
    assert images == ({f"deconv_{layer}.png" for layer in layers} | {f"top9_{layer}.png" for layer in layers}
                      | {"occlusion_panel.png", "invariance_curves.png", "correspondence_occluded.png"})
    tables = {p.name for p in (out / "tables").glob("*.csv")}
    assert tables == ({"occlusion_table.csv", "invariance_table.csv", "correspondence_table.csv"}
                      | {f"top9_{layer}_table.csv" for layer in layers})  # Fig. 2 as a table too
    rows = (out / "tables" / "correspondence_table.csv").read_text().splitlines()
    assert rows[0] == "occlusion,layer,delta_mean,delta_std" and len(rows) == 1 + 4 * 2  # 3 parts + random, 2 layers
    media = list(out.glob("wandb/offline-run-*/files/media/images/**/*.png"))
    assert len(media) == len(images)
    assert len(list(out.glob("wandb/offline-run-*/files/media/table/**/*.table.json"))) == 3 + 5
    assert json.loads((out / "analyze.json").read_text())["outputs"] == summary["outputs"]
    assert len(summary["outputs"]) == len(images) + len(tables)


def test_the_command_on_a_folder_of_photographs(checkpoint, photos, tmp_path):
    out = tmp_path / "logs"
    result = subprocess.run([sys.executable, "-m", "zfexp.analyze", f"ckpt_path={checkpoint}", f"images={photos}",
                             "analyses=[occlusion,invariance,correspondence]", "logger=csv", f"paths.log_dir={out}",
                             f"paths.data_dir={DATA_DIR}", *FAST], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (out / "analyze" / "runs").iterdir()
    assert {p.name for p in (run / "images").glob("*.png")} == {"occlusion_panel.png", "invariance_curves.png",
                                                                "correspondence_occluded.png"}
    occlusion = (run / "tables" / "occlusion_table.csv").read_text().splitlines()
    assert len(occlusion) == 1 + 2 * 7 * 7  # 2 photographs at 28 px, patch 7 at 0, 4, .., 24 (the last clipped)
    assert "correspondence   random" in result.stdout


@pytest.mark.parametrize("overrides, error, words", [
    (["analyses=[deconv,saliency]"], ValueError, ["analyses=['deconv', 'saliency']", "valid: deconv, top9"]),
    (["invariance.transforms=[shear]"], ValueError, ["invariance.transforms", "translate, scale, rotate"]),
    (["ckpt_path=/nonexistent/x.ckpt"], FileNotFoundError, ["ckpt_path=/nonexistent/x.ckpt"]),
])
def test_bad_values_stop_before_anything_is_loaded(checkpoint, tmp_path, overrides, error, words):
    with pytest.raises(error) as err:
        analyze(compose_config("analyze", analyze_dir(tmp_path), [f"ckpt_path={checkpoint}", *overrides]))
    assert all(w in str(err.value) for w in words), str(err.value)


def test_a_corrupt_photograph_is_named(checkpoint, photos, tmp_path):
    (photos / "broken.png").write_bytes(b"not an image")
    with pytest.raises(CorruptImageError, match="broken.png") as err:
        analyze(compose_config("analyze", analyze_dir(tmp_path), [f"ckpt_path={checkpoint}", f"images={photos}",
                                                                  "analyses=[occlusion]", "logger=csv", *FAST]))
    assert "split folders" not in str(err.value)  # a folder of photographs has none


def test_the_checkpoint_is_read_once_and_its_mean_image_normalises_the_inputs(checkpoint, tmp_path, monkeypatch):
    """The network sees its inputs as in its training (a transfer run's: the pretraining data's mean), not
    normalised with a mean image of the data it is given now."""
    from zfexp.data.base import ImageClassificationDataModule

    reads, load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda path, *a, **k: reads.append(str(path)) or load(path, *a, **k))
    monkeypatch.setattr(ImageClassificationDataModule, "_load_or_compute_mean",
                        lambda self: pytest.fail("the mean image of the data was used"))
    summary = analyze(compose_config("analyze", analyze_dir(tmp_path), [f"ckpt_path={checkpoint}", "logger=csv",
                                                                        "analyses=[deconv]", *FAST]))
    assert summary["status"] == "completed" and reads.count(str(checkpoint)) == 1


def test_table_1_finds_its_class_from_the_labels_without_decoding_an_image():
    decoded = []

    class Labelled(torch.utils.data.Dataset):
        targets = [3, 1, 3, 3, 0, 3]

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, i):
            decoded.append(i)
            return torch.zeros(1, 4, 4), self.targets[i]

    assert images_of_class(Labelled(), 3, 3) == [0, 2, 3]
    assert images_of_class(torch.utils.data.Subset(Labelled(), [1, 2, 4, 5]), 3, 5) == [1, 3]
    assert decoded == []


# torchvision's VGG16 with random weights (nothing can be downloaded) on photographs cut to 32 px (its five
# pools leave 1 x 1 maps; its adaptive pool feeds the classifier all the same): every analysis by the network's
# own layer names.
VGG16 = ["network=vgg16", "input.resize=32", "input.crop=32", *FAST]
VGG16_CONVS = ["features.0", "features.7", "features.14", "features.21", "features.28"]  # 5 of 13, evenly


def test_any_torchvision_network_gets_every_figure(photos, tmp_path):
    out = analyze_dir(tmp_path)
    summary = analyze(compose_config("analyze", out, [*VGG16, f"images={photos}"]))
    images = {p.name for p in (out / "images").glob("*.png")}
    assert images == ({f"deconv_{layer}.png" for layer in VGG16_CONVS} | {f"top9_{layer}.png" for layer in VGG16_CONVS}
                      | {"occlusion_panel.png", "invariance_curves.png", "correspondence_occluded.png"})
    tables = {p.name for p in (out / "tables").glob("*.csv")}
    assert tables == ({"occlusion_table.csv", "invariance_table.csv", "correspondence_table.csv"}
                      | {f"top9_{layer}_table.csv" for layer in VGG16_CONVS})
    # Invariance follows the first conv and the last hidden linear (VGG's classifier.3, as fc7 in ZFNet).
    invariance = (out / "tables" / "invariance_table.csv").read_text().splitlines()
    assert invariance[0].endswith(",distance_features.0,distance_classifier.3")
    occlusion = (out / "tables" / "occlusion_table.csv").read_text().splitlines()
    assert len(occlusion) == 1 + 2 * 7 * 7  # 2 photographs, patch 8 every 4 px on 32: 7 x 7 positions
    assert summary["network"] == "vgg16" and summary["weights"] is None


def test_a_layer_the_network_does_not_have_lists_the_ones_it_has(photos, tmp_path):
    out = analyze_dir(tmp_path)
    with pytest.raises(ValueError) as err:
        analyze(compose_config("analyze", out, [*VGG16, f"images={photos}", "deconv.layers=[conv5]"]))
    assert "deconv.layers" in str(err.value) and "'conv5'" in str(err.value)
    assert "valid: features.0, features.2, features.5" in str(err.value)
    assert not (out / "images").exists()  # stopped before any analysis


def test_weights_are_loaded_from_a_state_dict_file_and_a_wrong_one_is_named(tmp_path):
    from zfexp.errors import CheckpointError
    from zfexp.models.external import build_network, load_weights

    spec = {"_target_": "zfexp.models.zfnet_small", "num_classes": 10, "in_channels": 3}
    trained = build_network(spec)
    torch.save({"state_dict": trained.state_dict()}, tmp_path / "w.pt")  # a checkpoint-like dict is unwrapped
    torch.manual_seed(123)  # another initialisation, then the file's weights
    loaded = load_weights(build_network(spec), str(tmp_path / "w.pt"))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), trained.state_dict().values(),
                                                 strict=True))
    torch.save(build_network("alexnet").features.state_dict(), tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other.pt holds weights of another network than ZFNet: \d+ keys "
                                              r"missing \(conv1.bias, conv1.weight, conv2.bias, ...\); \d+ unexpected "
                                              r"\(0.bias"):
        load_weights(build_network(spec), str(tmp_path / "other.pt"))
    with pytest.raises(CheckpointError, match="weights=.*nothing.pt: no such file"):
        load_weights(build_network(spec), str(tmp_path / "nothing.pt"))
    with pytest.raises(ValueError, match="network='vgg61' is not a torchvision classification builder; valid: .*vgg16"):
        build_network("vgg61")


@pytest.mark.parametrize("overrides, words", [
    ([], ["give one of them"]),
    (["network=vgg16"], ["images=test", "give images=<a folder"]),
    (["network=vgg16", "images=/tmp", "input.crop=300"], ["input.crop=300", "input.resize=256"]),
])
def test_network_mode_checks_its_values_first(tmp_path, overrides, words):
    with pytest.raises(ValueError) as err:
        analyze(compose_config("analyze", analyze_dir(tmp_path), overrides))
    assert all(w in str(err.value) for w in words), str(err.value)


def test_a_checkpoint_moved_out_of_its_run_dir_is_analysed_with_the_data_settings_it_carries(tiny_checkpoint,
                                                                                              tmp_path):
    moved = tmp_path / "from_a_colleague.ckpt"
    shutil.copy(tiny_checkpoint, moved)
    out = tmp_path / "run"
    code, stderr = run_in_process("zfexp.analyze", f"ckpt_path={moved}", "analyses=[deconv]", "deconv.num_images=4",
                                  "deconv.layers=[conv1]", "deconv.maps_per_layer=2", "logger=none",
                                  f"hydra.run.dir={out}")
    assert code == 0, stderr[-2000:]
    assert (out / "images" / "deconv_conv1.png").is_file()
    # Data settings that give other images than the mean image's: the keys are named.
    code, stderr = run_in_process("zfexp.analyze", f"ckpt_path={moved}", "data=fashion_mnist", "analyses=[deconv]",
                                  "deconv.layers=[conv1]", "logger=none", f"hydra.run.dir={tmp_path / 'other'}")
    assert code == 1 and "data.preprocess.resize, crop and input_size give other images than the mean" in stderr
