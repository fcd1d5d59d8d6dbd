"""The extension path: the worked example, ``callbacks/guided_backprop.py``, in a short fit, with its config and
commands as docs/callbacks.md shows them; the callbacks group composed and edited from the command line; the
shared schedule."""

from __future__ import annotations

import logging
import re
import shlex
import subprocess

import hydra
import lightning as L
import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import LearningRateMonitor, ModelSummary
from PIL import Image

from callbacks import (
    BestCheckpoint,
    DeconvSnapshots,
    FilterDiagnostics,
    FilterRenorm,
    GuidedBackpropSnapshots,
    InvarianceCurves,
    OcclusionMaps,
    ResumeCheckpoint,
    TopActivations,
    TrainingSpeed,
    guided_backprop,
)
from callbacks.progress_bar import RichOrLogProgressBar
from callbacks.scheduled_analysis import ScheduledAnalysis
from tests.conftest import ROOT, TINY_RUN, compose_train, train_cmd
from tests.helpers.wandb_records import media_steps
from zfexp.analysis.unit_crops import strongest_unit_tiles
from zfexp.figures.grid import image_grid
from zfexp.module import ImageClassifier
from zfexp.runs.config_groups import instantiate_group
from zfexp.training import train

GUIDE = ROOT / "docs" / "callbacks.md"
SECTION = "## Write your own callback"


def guide_blocks(language: str, containing: str) -> list[str]:
    """The fenced ``language`` blocks of the guide's callback section that contain ``containing``."""
    guide = GUIDE.read_text()
    section = guide[guide.index(SECTION):]
    end = section.find("\n## ", len(SECTION))
    section = section if end < 0 else section[:end]
    return [b for b in re.findall(rf"```{language}\n(.*?)```", section, re.S) if containing in b]


def guide_block(language: str, containing: str) -> str:
    """The one fenced ``language`` block of the guide's callback section that contains ``containing``."""
    blocks = guide_blocks(language, containing)
    assert len(blocks) == 1, f"one {language} block with {containing!r} expected in {SECTION!r}, found {len(blocks)}"
    return blocks[0]


GUIDE_COMMANDS = [line for block in guide_blocks("bash", "guided_backprop") for line in block.splitlines()
                  if line.startswith("python train.py")]


def test_the_guide_links_the_shipped_callback_and_shows_its_config_verbatim():
    guide = GUIDE.read_text()
    assert "](../callbacks/guided_backprop.py)" in guide  # the worked example is linked, not pasted
    assert "class GuidedBackpropSnapshots" not in guide
    assert guide_block("yaml", "_target_: callbacks.GuidedBackpropSnapshots") == \
        (ROOT / "conf/callbacks/guided_backprop.yaml").read_text()
    assert len(GUIDE_COMMANDS) >= 2  # the commands that switch it on, tested below
    code = (ROOT / "callbacks/guided_backprop.py").read_text()
    body = code[code.index("\nclass "):]  # the callback itself, after its docstring and imports
    assert len([line for line in body.splitlines() if line.strip()]) <= 30  # "about 30 lines"


@pytest.mark.parametrize("command", GUIDE_COMMANDS)
def test_the_guides_commands_switch_the_callback_on_with_their_settings(tmp_path, command):
    overrides = shlex.split(command)[2:]  # after "python train.py"
    made = instantiate_group(compose_train(tmp_path / "logs/train/runs/a", overrides).get("callbacks"), "callback")
    (cb,) = [c for c in made if isinstance(c, GuidedBackpropSnapshots)]
    settings = [o.partition("=") for o in overrides if o.startswith("callbacks.guided_backprop.")]
    assert settings
    for key, _, value in settings:
        assert list(getattr(cb, key.rsplit(".", 1)[1])) == yaml.safe_load(value), key


def test_the_guides_defaults_list_names_existing_callback_files():
    (block,) = [b for b in guide_blocks("yaml", "override /callbacks") if "defaults:" in b]
    (choice,) = yaml.safe_load(block)["defaults"]
    names = choice["override /callbacks"]
    assert "guided_backprop" in names
    assert all((ROOT / "conf/callbacks" / f"{name}.yaml").is_file() for name in names), names


def test_the_example_runs_in_a_fit_and_its_images_land_in_the_run_dir_and_wandb(run_dir):
    cfg = compose_train(run_dir, ["experiment=quickstart", "callbacks=[default,guided_backprop]", *TINY_RUN,
                                  "trainer.max_epochs=2", "test=false",
                                  "callbacks.guided_backprop.epochs=[1]", "callbacks.guided_backprop.maps_per_layer=3",
                                  "callbacks.guided_backprop.probe_size=16"])
    train(cfg)
    files = {f"guided_backprop_{layer}_{tag}.png" for layer in ("conv3", "conv5") for tag in ("epoch001", "final")}
    assert {p.name for p in (run_dir / "images").glob("*.png")} == files
    (wandb_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    # One W&B key per figure, at the step after epoch 1 (256 images / 64 = 4 steps); the end of fit's beside it.
    assert media_steps(wandb_file) == {"guided_backprop/conv3": [(4, 1)], "guided_backprop/conv5": [(4, 1)],
                                       "guided_backprop/conv3/final": [(8, 1)], "guided_backprop/conv5/final": [(8, 1)]}
    media = list(run_dir.glob("wandb/offline-run-*/files/media/images/guided_backprop/**/*.png"))
    assert len(media) == 4

    # The final picture is the engine's output for the trained network, probe set and maps, both rules.
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("GuidedBackpropSnapshots")]
    net = ImageClassifier.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt").net.eval()
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("fit")
    images = torch.stack([datamodule.analysis_dataset("val")[int(i)][0] for i in state["probe"]])
    assert images.shape[0] == 16
    maps = guided_backprop.chosen_maps(net, ["conv5"], 3, 0)["conv5"]
    with torch.no_grad():
        tiles = [strongest_unit_tiles(net, images, "conv5", maps, rule=r) for r in ("deconvnet", "guided")]
    expected = (image_grid(torch.stack(tiles, 1)).permute(1, 2, 0).numpy() * 255).round()
    saved = np.asarray(Image.open(run_dir / "images" / "guided_backprop_conv5_final.png"), dtype=np.float64)
    assert saved.shape == expected.shape  # rows = 3 maps, columns = deconvnet | guided
    assert np.abs(saved - expected).max() <= 1
    assert (tiles[0] - tiles[1]).abs().max() > 1e-3 * tiles[0].abs().max()  # guided is not the deconvnet


def test_a_seed_picks_the_same_maps_of_a_layer_whatever_layers_are_beside_it():
    from zfexp.analysis.map_choice import chosen_maps
    from zfexp.models import zfnet_small

    net = zfnet_small(num_classes=10, in_channels=1)
    alone, together = chosen_maps(net, ["conv5"], 8, 3), chosen_maps(net, ["conv1", "conv3", "conv5"], 8, 3)
    assert alone["conv5"] == together["conv5"] and len(set(alone["conv5"])) == 8
    assert alone["conv5"] == sorted(alone["conv5"]) and max(alone["conv5"]) < net.conv5.out_channels
    assert chosen_maps(net, ["conv5"], 8, 4)["conv5"] != alone["conv5"]  # another seed, another draw


def test_a_resumed_fit_keeps_the_probe_set():
    cb = guided_backprop.GuidedBackpropSnapshots(probe_size=5)
    cb.probe = torch.tensor([4, 1, 3, 0, 2])
    again = guided_backprop.GuidedBackpropSnapshots(probe_size=5)
    again.load_state_dict(cb.state_dict())
    assert torch.equal(again.probe, cb.probe)


@pytest.mark.parametrize("make, words", [
    (lambda: GuidedBackpropSnapshots(epochs=[0]), ["GuidedBackpropSnapshots", "epochs=[0]", ">= 1"]),
    (lambda: GuidedBackpropSnapshots(maps_per_layer=0), ["GuidedBackpropSnapshots", "maps_per_layer=0"]),
    (lambda: GuidedBackpropSnapshots(probe_size=-2), ["GuidedBackpropSnapshots", "probe_size=-2"]),
])
def test_bad_arguments_are_named(make, words):
    with pytest.raises(ValueError) as err:
        make()
    assert all(w in str(err.value) for w in words), str(err.value)


def test_a_bad_layer_stops_the_run_before_training(run_dir):
    with pytest.raises(ValueError, match=r"callbacks.guided_backprop.layers: .*'conv8'.*conv1"):
        train(compose_train(run_dir, [*TINY_RUN, "logger=csv", "callbacks=[default,guided_backprop]",
                                      "callbacks.guided_backprop.layers=[conv8]"]))
    assert not list(run_dir.glob("checkpoints/*.ckpt"))


# Under pytest stdout is no terminal: the plain progress lines rather than the rich bar.
DEFAULT = {BestCheckpoint, ResumeCheckpoint, LearningRateMonitor, ModelSummary, TrainingSpeed, RichOrLogProgressBar,
           FilterRenorm}
FIGURES = {DeconvSnapshots, TopActivations, FilterDiagnostics, OcclusionMaps, InvarianceCurves}


def kinds(objects) -> set:
    """Classes of instantiated callbacks."""
    return {type(o) for o in objects}


@pytest.mark.parametrize("overrides, expected", [
    ([], DEFAULT),
    (["callbacks=none"], set()),
    (["callbacks=paper"], DEFAULT | FIGURES),
    (["callbacks=[default,guided_backprop]"], DEFAULT | {GuidedBackpropSnapshots}),
    (["callbacks=[paper,guided_backprop]", "callbacks.occlusion_maps=null", "callbacks.filter_renorm=null"],
     DEFAULT - {FilterRenorm} | FIGURES - {OcclusionMaps} | {GuidedBackpropSnapshots}),
    (["experiment=quickstart"], DEFAULT | FIGURES),
    (["experiment=quickstart", "callbacks=[paper,guided_backprop]"], DEFAULT | FIGURES | {GuidedBackpropSnapshots}),
    (["experiment=quickstart", "callbacks.invariance_curves=null"], DEFAULT | FIGURES - {InvarianceCurves}),
])
def test_callbacks_are_added_and_removed_from_the_command_line(tmp_path, overrides, expected):
    cfg = compose_train(tmp_path / "logs/train/runs/a", overrides)
    assert kinds(instantiate_group(cfg.get("callbacks"), "callback")) == expected


def test_an_experiments_settings_for_a_callback_no_longer_chosen_are_skipped_with_a_warning(tmp_path, caplog):
    cfg = compose_train(tmp_path / "logs/train/runs/a",
                        ["experiment=quickstart", "callbacks=[default,guided_backprop]"])
    with caplog.at_level(logging.WARNING):
        made = instantiate_group(cfg.callbacks, "callback")
    assert kinds(made) == DEFAULT | {GuidedBackpropSnapshots}
    assert "callback deconv_snapshots has settings but no _target_" in caplog.text
    assert "callbacks=[default,deconv_snapshots]" in caplog.text


def test_command_line_edits_of_the_group_run_in_train_py(tmp_path):
    """The real entry point: train.py with a list choice and a removal, one tiny epoch."""
    out = tmp_path / "run"
    result = subprocess.run(train_cmd(*TINY_RUN, "logger=csv", "test=false", "callbacks=[paper,guided_backprop]",
                                      "callbacks.top_activations=null", "callbacks.occlusion_maps=null",
                                      "callbacks.invariance_curves=null", "callbacks.filter_diagnostics=null",
                                      "callbacks.deconv_snapshots=null", "callbacks.guided_backprop.layers=[conv5]",
                                      "callbacks.guided_backprop.maps_per_layer=2",
                                      "callbacks.guided_backprop.probe_size=8", f"hydra.run.dir={out}"),
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (out / "images").glob("*.png")) == ["guided_backprop_conv5_final.png"]


class Every(ScheduledAnalysis):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.ran: list = []

    def analyse(self, trainer, pl_module, epoch):
        self.ran.append(epoch)


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, _):
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 2)), batch_size=2)


@pytest.mark.parametrize("kw, ran", [
    ({"epochs": [2, 5]}, [2, 5, None]),
    ({"every_n_epochs": 2}, [2, 4, None]),  # epoch 6 is the last: the end-of-fit run covers it
    ({"epochs": [1], "every_n_epochs": 3}, [1, 3, None]),
    ({}, [None]),
])
def test_the_shared_schedule_runs_at_epochs_every_n_and_at_the_end(tmp_path, kw, ran):
    cb = Every(**kw)
    trainer = L.Trainer(max_epochs=6, callbacks=[cb], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        num_sanity_val_steps=0)
    trainer.fit(Tiny())
    assert cb.ran == ran


def test_a_shorter_fit_draws_the_scheduled_epochs_it_reaches_and_names_the_others(tmp_path, caplog):
    cb = Every(epochs=[2, 7, 9])
    trainer = L.Trainer(max_epochs=6, callbacks=[cb], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, default_root_dir=tmp_path)
    with caplog.at_level(logging.WARNING):
        trainer.fit(Tiny())
    assert cb.ran == [2, None]
    assert "Every.epochs: epochs [7, 9] are beyond trainer.max_epochs=6 and are not drawn" in caplog.text
    with pytest.raises(ValueError, match=r"Every.every_n_epochs=0: must be a positive integer"):
        Every(every_n_epochs=0)


def test_the_end_of_fit_analysis_runs_before_the_strategy_moves_the_module_off_its_device(tmp_path):
    """On a GPU run the final analyses must see the network on the GPU: Lightning's teardown moves it to the CPU
    before ``on_fit_end``."""
    events = []

    class Recording(Every):
        def analyse(self, trainer, pl_module, epoch):
            events.append(("analyse", epoch, next(pl_module.parameters()).device.type))

    trainer = L.Trainer(max_epochs=2, callbacks=[Recording(epochs=[1])], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    teardown = trainer.strategy.teardown
    trainer.strategy.teardown = lambda: events.append(("teardown",)) or teardown()
    trainer.fit(Tiny())
    assert events == [("analyse", 1, "cpu"), ("analyse", None, "cpu"), ("teardown",)]
