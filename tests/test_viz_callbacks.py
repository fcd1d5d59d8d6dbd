"""The visualisation callbacks in a short fit: their PNGs in the run dir and the W&B run, their state in
the checkpoint, and their argument checks."""

import csv
import json
import logging

import pytest
import torch
from torchvision.datasets import FashionMNIST

from callbacks import DeconvSnapshots, FilterDiagnostics, InvarianceCurves, OcclusionMaps, TopActivations
from tests.conftest import TINY, compose_train
from tests.helpers.wandb_records import artifact_files, history, media_steps
from tests.helpers.wandb_records import summary as wandb_summary
from zfexp.training import train

LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5"]


def test_quickstart_callbacks_write_figs_2_4_5_6_7_to_run_dir_and_wandb(run_dir):
    metrics = train(compose_train(run_dir, ["experiment=quickstart", *TINY, "trainer.max_epochs=2",
                                  "callbacks.deconv_snapshots.epochs=[1,2]", "callbacks.filter_diagnostics.epochs=[1]",
                                  "test=false"]))
    images = {p.name for p in (run_dir / "images").glob("*.png")}
    expected = ({f"deconv_{layer}_epoch00{e}.png" for layer in LAYERS for e in (1, 2)}
                | {f"deconv_{layer}_evolution.png" for layer in LAYERS}
                | {f"top9_{layer}_final.png" for layer in LAYERS}
                | {"filters_conv1_epoch001.png", "filters_conv1_final.png"}
                | {"occlusion_panel_final.png", "invariance_curves_final.png"})
    assert images == expected
    media = list(run_dir.glob("wandb/offline-run-*/files/media/images/**/*.png"))
    assert len(media) == len(expected)
    # The numbers behind Fig. 7 and Fig. 5: CSV in the run dir, tables in the W&B run.
    occlusion = (run_dir / "tables" / "occlusion_table_final.csv").read_text().splitlines()
    # The datamodule's class names name the most probable class.
    assert occlusion[0] == "image,top,left,patch,prob_true,top_label,feature_map,feature_activity,top_class"
    assert len(occlusion) == 1 + 2 * 8 * 8  # 2 probe images, patch 7 at 0, 3, .., 21 on 28 px: 8 x 8 positions
    rows = [dict(zip(occlusion[0].split(","), row.split(","), strict=True)) for row in occlusion[1:]]
    classes = FashionMNIST.classes
    assert all(row["top_class"] == classes[int(row["top_label"])] for row in rows)
    invariance = (run_dir / "tables" / "invariance_table_final.csv").read_text().splitlines()
    assert len(invariance) == 1 + 2 * (13 + 9 + 36)  # 2 images x the paper's translate, scale, rotate values
    top9 = (run_dir / "tables" / "top9_conv3_table_final.csv").read_text().splitlines()
    assert top9[0] == "layer,map,rank,activation,image,row,col,predicted,predicted_class" and len(top9) == 1 + 4 * 9
    assert all(row.split(",")[-1] == classes[int(row.split(",")[-2])] for row in top9[1:])  # 4 maps x 9 ranks

    # W&B: one key per figure, logged at the step of each epoch it was drawn after (4 steps an epoch: 256
    # images, 64 a batch), so the media panel slides through the epochs; the end of fit under <key>/final.
    (records,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    logged = media_steps(records)
    assert logged == {
        **{f"deconv/{layer}": [(4, 1), (8, 1)] for layer in LAYERS},
        **{f"deconv/{layer}_evolution": [(8, 1)] for layer in LAYERS},
        **{f"top9/{layer}/final": [(8, 1)] for layer in LAYERS},
        **{f"top9/{layer}_table/final": [(8, 1)] for layer in LAYERS},
        "filters/conv1": [(4, 1)], "filters/conv1/final": [(8, 1)],
        "occlusion/panel/final": [(8, 1)], "occlusion/table/final": [(8, 1)],
        "invariance/curves/final": [(8, 1)], "invariance/table/final": [(8, 1)],
    }, logged
    captions = [row["deconv/conv5/captions"] for row in history(records) if "deconv/conv5/captions" in row]
    assert [c[0].rsplit(" (", 1)[1] for c in captions] == ["epoch 1)", "epoch 2)"]
    # The top-9 table: 4 maps x 9 rows, each with a projection and a patch as image cells (stored as PNGs in
    # the table's artifact, once per distinct image).
    (table,) = run_dir.glob("wandb/offline-run-*/files/media/table/top9/conv3_table/final_*.table.json")
    table = json.loads(table.read_text())
    assert table["columns"] == ["layer", "map", "rank", "activation", "image", "row", "col", "predicted",
                                "predicted_class", "projection", "patch"]
    assert len(table["data"]) == 36 and [row[2] for row in table["data"][:9]] == list(range(1, 10))
    cells = [f for f in artifact_files(records, "top9conv3_table") if f.endswith(".png")]
    assert 2 <= len(cells) <= 2 * 36
    # The run's record in the run summary.
    assert wandb_summary(records)["epochs"] == 2 and wandb_summary(records)["status"] == "completed"
    scalars = (run_dir / "csv" / "metrics.csv").read_text()
    assert "filters/dead_frac/conv1" in scalars and "filters/rms_max/conv5" in scalars
    # The end-of-fit values also go to metrics.json (what a sweep's summary reads): the CSV's last ones.
    logged = [r for r in csv.DictReader(scalars.splitlines()) if r["filters/dead_frac/conv1"]]
    assert len(logged) == 2  # epoch 1 and the end of fit
    dead = metrics["filters/dead_frac/conv1"]
    assert dead == pytest.approx(float(logged[-1]["filters/dead_frac/conv1"]))
    assert (dead * 8) == pytest.approx(round(dead * 8))  # a count out of TINY's 8 conv1 filters
    assert metrics["filters/rms_max/conv5"] == pytest.approx(float(logged[-1]["filters/rms_max/conv5"]))

    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("DeconvSnapshots")]
    assert sorted(state["snapshots"]["conv3"]) == [1, 2] and len(state["maps"]["conv3"]) == 8
    restored = DeconvSnapshots()
    restored.load_state_dict(state)
    assert torch.equal(restored.probe, state["probe"])


def test_evolution_grid_is_maps_by_epochs_of_a_shorter_fit_than_scheduled(run_dir, caplog):
    from PIL import Image

    # The quickstart's own schedule, epochs 1, 2, 4 and 8, in a fit of 2 epochs: it draws 1 and 2, and says so.
    with caplog.at_level(logging.WARNING):
        train(compose_train(run_dir, ["experiment=quickstart", *TINY, "trainer.max_epochs=2", "logger=csv",
                                      "callbacks.deconv_snapshots.epochs=[1,2,4,8]",
                                      "callbacks.deconv_snapshots.maps_per_layer=3",
                                      "callbacks.top_activations=null", "callbacks.filter_diagnostics=null",
                                      "test=false"]))
    assert "callbacks.deconv_snapshots.epochs: epochs [4, 8] are beyond trainer.max_epochs=2" in caplog.text
    one = Image.open(run_dir / "images" / "deconv_conv1_epoch001.png")
    grid = Image.open(run_dir / "images" / "deconv_conv1_evolution.png")
    tile = one.size[1] - 2  # one row of 3 tiles, 1 px padding around
    assert tile >= 32  # small receptive fields are enlarged
    assert one.size == (3 * (tile + 1) + 1, tile + 2)
    assert grid.size == (2 * (tile + 1) + 1, 3 * (tile + 1) + 1)  # columns = 2 epochs, rows = 3 maps


@pytest.mark.parametrize("make, words", [
    (lambda: DeconvSnapshots(epochs=[0, 2]), ["epochs=[0, 2]", ">= 1"]),
    (lambda: DeconvSnapshots(maps_per_layer=0), ["maps_per_layer=0"]),
    (lambda: TopActivations(k=0), ["k=0"]),
    (lambda: FilterDiagnostics(epochs=[-1]), ["epochs=[-1]"]),
    (lambda: OcclusionMaps(patch=0), ["OcclusionMaps", "patch=0"]),
    (lambda: OcclusionMaps(probe_size=0), ["OcclusionMaps", "probe_size=0"]),
    (lambda: InvarianceCurves(transforms=["shear"]), ["InvarianceCurves", "['shear']", "translate, scale, rotate"]),
])
def test_bad_arguments_are_named_at_construction(make, words):
    with pytest.raises(ValueError) as err:
        make()
    assert all(w in str(err.value) for w in words)


@pytest.mark.parametrize("overrides, words", [
    (["callbacks.deconv_snapshots.layers=[conv9]"], ["callbacks.deconv_snapshots.layers", "'conv9'", "conv1"]),
    (["callbacks.top_activations.layers=[fc6]"], ["callbacks.top_activations.layers", "'fc6'"]),
    (["callbacks.filter_diagnostics.first_layer=conv7"], ["'conv7'"]),
    (["callbacks.occlusion_maps.feature_layer=fc6"], ["callbacks.occlusion_maps.feature_layer", "'fc6'", "conv5"]),
    (["callbacks.occlusion_maps.patch=40"], ["callbacks.occlusion_maps.patch=40", "28x28"]),
    (["callbacks.invariance_curves.layers=[fc9]"], ["callbacks.invariance_curves.layers", "'fc9'", "fc7"]),
])
def test_bad_layers_and_epochs_stop_before_training(run_dir, overrides, words):
    with pytest.raises(ValueError) as err:
        train(compose_train(run_dir, ["experiment=quickstart", *TINY, "trainer.max_epochs=2", "logger=csv",
                                      "callbacks.deconv_snapshots.epochs=[1]", *overrides]))
    assert all(w in str(err.value) for w in words), str(err.value)
    assert not list(run_dir.glob("checkpoints/*.ckpt"))


def test_two_occlusion_callbacks_keep_their_own_state_and_figures(run_dir):
    second = ("+callbacks.occlusion_conv4={_target_: callbacks.OcclusionMaps, feature_layer: conv4, probe_size: 2, "
              "stride: 7, seed: 1}")
    train(compose_train(run_dir, ["experiment=quickstart", *TINY, "logger=csv", "callbacks.deconv_snapshots=null",
                                  "callbacks.top_activations=null", "callbacks.filter_diagnostics=null",
                                  "callbacks.invariance_curves=null", "test=false", second]))
    states = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]
    occlusion = {key: state for key, state in states.items() if key.startswith("OcclusionMaps")}
    assert len(occlusion) == 2 and "'feature_layer': 'conv4'" in " ".join(occlusion)
    assert {p.name for p in (run_dir / "images").glob("occlusion*.png")} == {"occlusion_panel_final.png",
                                                                             "occlusion_conv4_panel_final.png"}
