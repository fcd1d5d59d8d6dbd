"""Transfer learning (Tables 4, 5, Fig. 9) and features by layer (Table 7): few-shot splits on generated
trees in the Caltech layouts, mean per-class accuracy, fixed layers, the transfer sweep's summary."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import ROOT, compose_config, compose_train
from zfexp.analysis.linear_probes import mean_class_accuracy, probe_accuracy
from zfexp.data import (
    Caltech101DataModule,
    Caltech256DataModule,
    FashionMNISTFewShotDataModule,
    ImageFolderFewShotDataModule,
    few_shot_split,
)
from zfexp.data.classes import dataset_targets
from zfexp.errors import DatasetNotFoundError
from zfexp.module import ImageClassifier, MeanClassAccuracy
from zfexp.sweep_results.summarize import main, summarize
from zfexp.training import train

SMALL = {"resize": 16, "crop": 16, "input_size": 12}
# A short transfer or pretraining run on a slice of Fashion-MNIST, analysis callbacks off.
QUIET = ["data.num_workers=0", "trainer.max_epochs=1", "trainer.accelerator=cpu", "callbacks.progress_bar=null",
         "trainer.enable_progress_bar=false", "logger=csv"]
PRETRAIN = ["experiment=pretrain_fashion5", "data.subset_size=256", "data.batch_size=64", *QUIET,
            "callbacks.deconv_snapshots=null", "callbacks.top_activations=null", "callbacks.filter_diagnostics=null",
            "callbacks.occlusion_maps=null", "callbacks.invariance_curves=null",
            "model.widths={conv1: 8, conv2: 16, conv3: 16, conv4: 16, conv5: 16, fc6: 32, fc7: 32}"]
TRANSFER = ["experiment=transfer_fashion", "data.train_per_class=3", "data.test_per_class=20", "data.epoch_size=64",
            "data.batch_size=32", *QUIET]


def jpeg(path: Path, rng, mode: str = "RGB", size: int = 10) -> None:
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)


def caltech101_tree(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """<root>/caltech101/101_ObjectCategories/<class>/image_0001.jpg, plus the BACKGROUND_Google folder;
    the first image of every class is greyscale, as a few of Caltech's are."""
    rng = np.random.default_rng(seed)
    for cls, n in {"BACKGROUND_Google": 4, **counts}.items():
        folder = root / "caltech101" / "101_ObjectCategories" / cls
        folder.mkdir(parents=True)
        for i in range(1, n + 1):
            jpeg(folder / f"image_{i:04d}.jpg", rng, "L" if i == 1 else "RGB")
    return root


def caltech256_tree(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """<root>/caltech256/256_ObjectCategories/<NNN.class>/<NNN>_0001.jpg."""
    rng = np.random.default_rng(seed)
    for cls, n in counts.items():
        folder = root / "caltech256" / "256_ObjectCategories" / cls
        folder.mkdir(parents=True)
        for i in range(1, n + 1):
            jpeg(folder / f"{cls[:3]}_{i:04d}.jpg", rng)
    return root


def per_class(dm, indices) -> Counter:
    targets = dataset_targets(dm._split("train", None))
    return Counter(targets[i] for i in indices)


# -- splits --------------------------------------------------------------------------------------------------
def test_caltech101_splits_have_n_per_class_and_at_most_50_test(tmp_path):
    counts = {"Faces": 8, "accordion": 60, "camera": 12}
    dm = Caltech101DataModule(root=str(caltech101_tree(tmp_path, counts)), download=False, train_per_class=5,
                              num_workers=0, batch_size=8, preprocess=SMALL)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.classes == ["Faces", "accordion", "camera"]  # BACKGROUND_Google is not a class
    train_idx, test_idx = dm.split_indices
    assert per_class(dm, train_idx) == {0: 5, 1: 5, 2: 5}
    assert per_class(dm, test_idx) == {0: 3, 1: 50, 2: 7}  # the rest, at most 50
    assert not set(train_idx) & set(test_idx)
    assert len(dm.data_train) == 15 and len(dm.data_test) == 60 and dm.data_val is dm.data_test
    images, labels = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert images.shape == (8, 3, 12, 12)  # greyscale images come out as RGB
    grey = dm.analysis_dataset("test")[0][0]  # class Faces' first image, greyscale on disk, in some folds' test split
    assert grey.shape == (3, 12, 12)


def test_folds_differ_and_are_reproducible_by_seed(tmp_path):
    root = caltech101_tree(tmp_path, {"a": 20, "b": 20})

    def split(fold, seed=0):
        return Caltech101DataModule(root=str(root), download=False, train_per_class=5, fold=fold, split_seed=seed,
                                    preprocess=SMALL).split_indices

    assert split(0) == split(0) and split(3, seed=7) == split(3, seed=7)
    folds = [split(f)[0] for f in range(5)]
    assert len({tuple(f) for f in folds}) == 5
    assert split(0, seed=1) != split(0)


def test_caltech256_layout_and_leaving_out_clutter(tmp_path):
    root = caltech256_tree(tmp_path, {"001.ak47": 9, "002.american-flag": 7, "257.clutter": 9})
    dm = Caltech256DataModule(root=str(root), download=False, train_per_class=4, test_per_class=2,
                              exclude_classes=["257.clutter"], preprocess=SMALL, num_workers=0)
    dm.prepare_data()
    assert dm.classes == ["001.ak47", "002.american-flag"] and dm.num_classes == 2
    train_idx, test_idx = dm.split_indices
    assert per_class(dm, train_idx) == {0: 4, 1: 4} and per_class(dm, test_idx) == {0: 2, 1: 2}
    dm.setup("fit")
    assert {int(y) for _, y in dm.data_test} == {0, 1}


def test_image_folder_pool(tmp_path):
    rng = np.random.default_rng(0)
    for cls, n in (("boat", 6), ("car", 4)):
        (tmp_path / cls).mkdir()
        for i in range(n):
            jpeg(tmp_path / cls / f"{i}.png", rng)
    dm = ImageFolderFewShotDataModule(root=str(tmp_path), train_per_class=2, preprocess=SMALL, num_workers=0)
    dm.prepare_data()
    assert per_class(dm, dm.split_indices[0]) == {0: 2, 1: 2} and per_class(dm, dm.split_indices[1]) == {0: 4, 1: 2}
    too_many = ImageFolderFewShotDataModule(root=str(tmp_path), train_per_class=4, preprocess=SMALL, num_workers=0)
    with pytest.raises(ValueError, match=r"class 1 \(car\) has only 4 images.*at most 3"):
        _ = too_many.split_indices


def test_too_few_images_and_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"class 1 has only 3 images.*at most 2"):
        few_shot_split([0, 0, 0, 0, 1, 1, 1], train_per_class=3)
    with pytest.raises(ValueError, match="data.train_per_class=0"):
        Caltech101DataModule(root=str(tmp_path), train_per_class=0)
    dm = Caltech101DataModule(root=str(tmp_path), download=False, preprocess=SMALL)
    with pytest.raises(DatasetNotFoundError, match=r"101_ObjectCategories.*data.caltech.edu"):
        dm.prepare_data()
    with pytest.raises(ValueError, match=r"class_subset: 'Bagz'.*valid"):
        _ = FashionMNISTFewShotDataModule(root=str(tmp_path), class_subset=["Bag", "Bagz"]).kept_classes


def test_fashion_mnist_class_subset_is_relabelled(fashion_mnist_raw):
    dm = FashionMNISTFewShotDataModule(root=str(fashion_mnist_raw.parents[1]), class_subset=["Sandal", 9, "Bag"],
                                       train_per_class=4, num_workers=0, preprocess={"resize": None, "crop": None,
                                                                                      "input_size": 28})
    assert dm.classes == ["Sandal", "Bag", "Ankle boot"]  # the dataset's order
    labels = dataset_targets(dm._split("train", None))
    assert Counter(labels) == {0: 6000, 1: 6000, 2: 6000}
    assert per_class(dm, dm.split_indices[0]) == {0: 4, 1: 4, 2: 4}


# -- the metric ----------------------------------------------------------------------------------------------
def test_mean_per_class_accuracy_on_a_hand_made_example():
    # class 0: 3 of 4 right; class 1: 1 of 1 right; class 2: 0 of 2 right -> (75 + 100 + 0) / 3 = 58.33 %
    # (the share of all images right would be 4 / 7 = 57.1 %)
    labels = torch.tensor([0, 0, 0, 0, 1, 2, 2])
    predicted = torch.tensor([0, 0, 0, 2, 1, 0, 1])
    metric = MeanClassAccuracy(num_classes=3)
    metric.update(torch.nn.functional.one_hot(predicted, 3).float(), labels)
    assert float(metric.compute()) == pytest.approx(175 / 3, abs=1e-4)
    assert mean_class_accuracy(labels.numpy(), predicted.numpy()) == pytest.approx(175 / 3)


def test_linear_probe_separates_separable_features_and_not_noise():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(20)
    separable = torch.nn.functional.one_hot(labels, 3).float() * 5 + 0.1 * torch.randn(60, 3, generator=g)
    noise = torch.randn(60, 50, generator=g)
    for kind in ("svm", "softmax"):
        assert probe_accuracy(kind, separable[::2], labels[::2], separable[1::2], labels[1::2]) == 100.0
        assert probe_accuracy(kind, noise[::2], labels[::2], noise[1::2], labels[1::2]) < 70.0


# -- transfer ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pretrained_ckpt(tmp_path_factory, fashion_mnist_raw) -> Path:
    """A tiny network trained one epoch on Fashion-MNIST classes 0-4 (experiment pretrain_fashion5)."""
    run_dir = tmp_path_factory.mktemp("pre") / "logs" / "train" / "runs" / "pretrain"
    run_dir.mkdir(parents=True)
    train(compose_train(run_dir, PRETRAIN))
    return run_dir / "checkpoints" / "last.ckpt"


def state(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def test_fixed_layers_are_bit_identical_after_transfer_and_fc8_is_new(tmp_path, pretrained_ckpt):
    run_dir = tmp_path / "logs" / "train" / "runs" / "transfer"
    metrics = train(compose_train(run_dir, [*TRANSFER, f"pretrained_ckpt={pretrained_ckpt}"]))
    assert metrics["status"] == "completed" and 0.0 <= metrics["test/mean_class_acc"] <= 100.0
    before, after = state(pretrained_ckpt), state(run_dir / "checkpoints" / "last.ckpt")
    fixed = [k for k in before if k.startswith("net.") and not k.startswith("net.fc8.")]
    assert any("running_mean" in k for k in fixed)  # batch-norm statistics are checked too
    for key in fixed:
        assert torch.equal(before[key], after[key]), key
    assert after["net.fc8.weight"].shape == (5, 32) and not torch.equal(before["net.fc8.weight"],
                                                                        after["net.fc8.weight"])
    # the inputs were normalised with the pretraining run's mean image, not the new pool's
    pre_mean = torch.load(pretrained_ckpt, weights_only=True)["FashionMNISTDataModule"]["mean_image"]
    new_mean = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)[
        "FashionMNISTFewShotDataModule"]["mean_image"]
    assert torch.equal(pre_mean, new_mean)
    module = ImageClassifier.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert module.hparams.freeze == "fc7" and [p.requires_grad for p in module.net.parameters()].count(True) == 2


def test_from_scratch_trains_every_layer_of_the_same_network(tmp_path, pretrained_ckpt):
    run_dir = tmp_path / "logs" / "train" / "runs" / "scratch"
    train(compose_train(run_dir, [*TRANSFER, f"pretrained_ckpt={pretrained_ckpt}", "from_scratch=true"]))
    before, after = state(pretrained_ckpt), state(run_dir / "checkpoints" / "last.ckpt")
    assert {k: v.shape for k, v in before.items()} == {k: v.shape for k, v in after.items()}
    assert not torch.equal(before["net.conv1.weight"], after["net.conv1.weight"])
    module = ImageClassifier.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert module.hparams.freeze is None and all(p.requires_grad for p in module.parameters())


@pytest.mark.parametrize("overrides, error, words", [
    (["freeze=fc9"], ValueError, r"freeze='fc9'.*valid: conv1, .*fc7"),
    (["data.preprocess.input_size=24"], ValueError, r"28 px images, the data gives 1-channel 24 px"),
])
def test_bad_transfer_settings_stop_before_training(tmp_path, pretrained_ckpt, overrides, error, words):
    run_dir = tmp_path / "logs" / "train" / "runs" / "bad"
    with pytest.raises(error, match=words):
        train(compose_train(run_dir, [*TRANSFER, f"pretrained_ckpt={pretrained_ckpt}", *overrides]))
    assert not (run_dir / "checkpoints").exists()


def test_missing_pretrained_checkpoint_names_the_key(tmp_path):
    run_dir = tmp_path / "logs" / "train" / "runs" / "bad"
    with pytest.raises(FileNotFoundError, match=r"pretrained_ckpt=/nowhere.ckpt: no such file"):
        train(compose_train(run_dir, [*TRANSFER, "pretrained_ckpt=/nowhere.ckpt"]))


def test_transfer_summary_is_mean_and_std_over_folds(tmp_path):
    """Job dirs as a transfer_curve multirun leaves them; the numbers are checked against hand-computed ones."""
    # (images per class, freeze, from_scratch): accuracy of each fold (None: the job failed)
    accs = {(5, "fc7", False): [80.0, 84.0, 82.0], (5, "fc7", True): [40.0, 50.0, None],
            (30, "fc7", False): [90.0], (30, "fc7", True): [70.0], (5, "conv5", False): [60.0, 64.0]}
    job = 0
    for (n, freeze, scratch), values in accs.items():
        for fold, acc in enumerate(values):
            # the conv5 column is a later launch of the same study, pooled in with --with
            d = (tmp_path / "later" if freeze == "conv5" else tmp_path) / str(job)
            (d / ".hydra").mkdir(parents=True)
            (d / ".hydra" / "overrides.yaml").write_text(
                f"- data.train_per_class={n}\n- data.fold={fold}\n- from_scratch={str(scratch).lower()}\n")
            (d / "config.yaml").write_text(
                f"sweep_name: transfer_curve\nfrom_scratch: {str(scratch).lower()}\nfreeze: {freeze}\n"
                f"data: {{_target_: zfexp.data.Caltech256DataModule, train_per_class: {n}, fold: {fold}}}\n")
            status = {"status": "completed", "test/mean_class_acc": acc} if acc is not None else \
                {"status": "failed", "error": "RuntimeError: boom"}
            (d / "metrics.json").write_text(json.dumps(status))
            job += 1
    main([str(tmp_path), "--with", str(tmp_path / "later")])
    rows = summarize(tmp_path, more_dirs=[tmp_path / "later"])
    five, thirty = rows
    assert five["pretrained mean"] == 82.0 and five["pretrained std"] == 2.0 and five["pretrained folds"] == 3
    assert five["from scratch mean"] == 45.0 and five["from scratch std"] == pytest.approx(7.07, abs=0.01)
    assert five["pretrained, up to conv5 fixed mean"] == 62.0 and thirty["pretrained, up to conv5 fixed folds"] == 0
    assert thirty["paper pretrained"] == 70.6 and thirty["paper from scratch"] == 22.5  # Table 5
    text = (tmp_path / "summary.md").read_text()
    assert "| images per class | pretrained, layers 1-7 fixed | pretrained, up to conv5 fixed | from scratch |" in text
    assert "| 5 | 82.0 +- 2.0 (3) | 62.0 +- 2.8 (2) | 45.0 +- 7.1 (2) |" in text
    assert "**failed**" in text and "boom" in text
    assert (tmp_path / "summary.png").stat().st_size > 0 and (tmp_path / "summary.csv").exists()


@pytest.mark.slow  # the whole sweep, 8 jobs; test_transfer_summary_is_mean_and_std_over_folds checks its table
def test_transfer_curve_sweep_runs_every_cell(tmp_path, pretrained_ckpt):
    import subprocess

    from tests.helpers.multiruns import multirun_cmd, only_sweep

    log_dir = tmp_path / "logs"
    cmd = multirun_cmd("sweep=transfer_curve", *TRANSFER, f"pretrained_ckpt={pretrained_ckpt}",
                       f"paths.log_dir={log_dir}", "data.train_per_class=1,3", "data.fold=0,1")
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
    rows = summarize(only_sweep(log_dir))
    assert [r["images per class"] for r in rows] == [1, 3]
    assert all(r["pretrained folds"] == 2 and r["from scratch folds"] == 2 for r in rows)


# -- features by layer ---------------------------------------------------------------------------------------
def test_features_by_layer_extracts_once_and_logs_table7(tmp_path, pretrained_ckpt, monkeypatch, caplog):
    import zfexp.features as features
    from zfexp.data.base import ImageClassificationDataModule

    calls, reads, load = [], [], torch.load
    real = features.extract_features
    monkeypatch.setattr(features, "extract_features", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    monkeypatch.setattr(torch, "load", lambda path, *a, **k: reads.append(str(path)) or load(path, *a, **k))
    # The pretraining run's mean image normalises the pool: no pass over the pool for a mean of its own.
    monkeypatch.setattr(ImageClassificationDataModule, "_load_or_compute_mean",
                        lambda self: pytest.fail("the pool's mean image was computed"))
    caplog.set_level(logging.INFO)
    run_dir = tmp_path / "logs" / "features" / "runs" / "f"
    cfg = compose_config("features", run_dir, [
        f"ckpt_path={pretrained_ckpt}", "data=fashion_mnist_few_shot", "data.train_per_class=5",
        "data.test_per_class=10", "data.num_workers=0", "folds=2", "layers=[conv1,conv5,fc7]", "logger=csv"])
    summary = features.features_by_layer(cfg)
    assert calls == [["conv1", "conv5", "fc7"]]  # one pass over the images, all layers at once
    assert reads.count(str(pretrained_ckpt)) == 1  # the checkpoint read once
    assert "fold 1 softmax   fc7:" in caplog.text and "| SVM (5) |" in caplog.text  # in <run dir>/features.log
    assert summary["images"] <= 2 * 5 * (5 + 10)
    assert summary["feature_dims"]["conv1"] == 8 * 6 * 6  # 14x14 maps max-pooled to 6x6
    rows = {r["row"]: r for r in summary["rows"]}
    assert set(rows) == {"SVM (1)", "SVM (5)", "SVM (7)", "Softmax (1)", "Softmax (5)", "Softmax (7)"}
    assert all(r["folds"] == 2 and 0 <= r["mean"] <= 100 for r in rows.values())
    assert rows["SVM (5)"]["paper caltech101"] == 86.2 and rows["Softmax (1)"]["paper caltech256"] is None
    text = (run_dir / "features.md").read_text()
    assert "5 training and up to 10 test images per class" in text and "over 2 folds" in text
    assert "| SVM (1) | 288 |" in text and "| SVM (7) |" in text
    assert (run_dir / "tables" / "features_table7.csv").exists()


def test_features_by_layer_rejects_a_dataset_without_n_per_class(tmp_path, pretrained_ckpt):
    from zfexp.features import features_by_layer

    cfg = compose_config("features", tmp_path / "logs" / "features" / "runs" / "f",
                         [f"ckpt_path={pretrained_ckpt}", "data=fashion_mnist", "logger=csv"])
    with pytest.raises(ValueError, match=r"few-shot.*valid: data=caltech101"):
        features_by_layer(cfg)
