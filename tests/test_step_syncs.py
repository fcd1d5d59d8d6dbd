"""A training step never waits for the host: no host sync in the quickstart's steps with the default callbacks
(counted as on a GPU, :mod:`tests.helpers.host_syncs`); a diverged step is found on the device, its update skipped
there, and the run stops a few steps later with the weights of before it. Under DDP: tests/test_ddp.py."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from callbacks import FilterRenorm
from tests.conftest import TINY_RUN, compose_train
from tests.helpers.diverging import InfiniteImagesOnRank, WeightsBeforeStep
from zfexp.divergence import READ_LAG
from zfexp.errors import NonFiniteLossError
from zfexp.module import ImageClassifier
from zfexp.training import train

SMALL_NET = {"_target_": "zfexp.models.zfnet_small", "widths": {"conv1": 4, "conv2": 4, "conv3": 4, "conv4": 4,
                                                                  "conv5": 4, "fc6": 8, "fc7": 8}}
# Logging and the progress lines every 2 steps, so that the counted steps include theirs.
EVERY_2_STEPS = ["logger=csv", "trainer.log_every_n_steps=2", "callbacks.progress_bar.every_n_steps=2",
                 "callbacks.progress_bar.terminal=false"]


def test_the_quickstarts_steps_make_no_host_sync_and_the_run_reports_its_speed(run_dir):
    out = run_dir / "syncs{rank}.json"
    record = train(compose_train(run_dir, [
        "experiment=quickstart", *[o for o in TINY_RUN if "progress_bar" not in o], "data.subset_size=512",
        "callbacks=default", *EVERY_2_STEPS, "test=false",
        f"+callbacks.count_syncs={{_target_: tests.helpers.host_syncs.CountHostSyncs, out: '{out}'}}"]))
    counted = json.loads((run_dir / "syncs0.json").read_text())
    assert counted["per_step"] == [0] * 8, counted["found"]  # 8 steps of 64 images
    # The steady-state speed of the steps after warm-up (half of this short epoch), in metrics.json and the log.
    assert record["perf/train_img_per_s"] > 0 and record["perf/step_ms"] > 0
    images_per_s = record["perf/train_img_per_s"]
    assert 64 / images_per_s * 1e3 == pytest.approx(record["perf/step_ms"], rel=0.5)
    csv = (run_dir / "csv" / "metrics.csv").read_text()
    assert "perf/train_img_per_s" in csv and "train/loss_step" in csv, csv


def make_module(**kw) -> ImageClassifier:
    return ImageClassifier(net=SMALL_NET, num_classes=10, in_channels=1, input_size=28, lr_plateau=None, **kw)


def fit_diverging(module: ImageClassifier, step: int, tmp_path, *callbacks: L.Callback) -> tuple[L.Trainer, dict]:
    """Fit ``module`` on 8 batches whose batch ``step`` is infinite, with filter renormalisation after every step;
    the error and what WeightsBeforeStep saw."""
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,)))
    out = tmp_path / "weights{rank}.json"
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", limit_val_batches=0,
                        callbacks=[InfiniteImagesOnRank(0, step), WeightsBeforeStep(step, str(out)), FilterRenorm(),
                                   *callbacks])
    with pytest.raises(NonFiniteLossError) as raised:
        trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=16))
    return trainer, {**json.loads((tmp_path / "weights0.json").read_text()), "message": str(raised.value)}


def test_a_diverged_step_is_skipped_on_the_device_and_the_run_stops_with_the_weights_of_before(tmp_path):
    trainer, seen = fit_diverging(make_module(), 3, tmp_path)
    assert seen["message"].startswith("train/loss is nan at epoch 1, global step 3 (lr=0.01). Its update was "
                                      "skipped"), seen["message"]
    assert "no checkpoint to resume from: start again with module.lr=0.001" in seen["message"]
    # The host read step 3's record READ_LAG steps later; those steps' updates were skipped on the device too.
    assert seen["stopped_at"] == 3 + READ_LAG
    assert seen["bit_equal"]


def test_non_finite_gradients_of_a_finite_loss_stop_the_run_too(tmp_path):
    class NanGradient(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if trainer.global_step == 4:
                next(pl_module.parameters()).grad[0].fill_(float("nan"))

    module = make_module()
    # Callbacks' hooks run before the module's: the gradient is spoilt before the module checks it.
    trainer, seen = fit_diverging(module, 99, tmp_path, NanGradient(), WeightsBeforeStep(4, str(tmp_path / "w{rank}")))
    assert seen["message"].startswith("the gradients are not finite (train/loss "), seen["message"]
    assert "at epoch 1, global step 4" in seen["message"]
    assert json.loads((tmp_path / "w0").read_text())["bit_equal"]


def test_an_optimizer_that_cannot_skip_on_the_device_stops_the_run_before_the_update(tmp_path):
    class UnfusedSGD(ImageClassifier):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)

    module = UnfusedSGD(net=SMALL_NET, num_classes=10, in_channels=1, input_size=28, lr_plateau=None)
    trainer, seen = fit_diverging(module, 3, tmp_path)
    assert seen["stopped_at"] == 3 and seen["bit_equal"]  # read at once: a wait, but no update applied
    assert "global step 3" in seen["message"]


def test_a_checkpoint_of_an_unfused_optimizer_resumes_with_steps_skipped_on_the_device(tmp_path):
    """A checkpoint written before SGD was fused restores its groups' ``fused``: the resumed run fuses them again
    (its diverged steps are then skipped on the device) and trains on."""
    class ForeachSGD(ImageClassifier):
        def configure_optimizers(self):
            hp = self.hparams
            return torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)

    data = torch.utils.data.TensorDataset(torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,)))
    loader = torch.utils.data.DataLoader(data, batch_size=16)
    options = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   accelerator="cpu", limit_val_batches=0)
    old = L.Trainer(max_epochs=1, **options)
    old.fit(ForeachSGD(net=SMALL_NET, num_classes=10, in_channels=1, input_size=28, lr_plateau=None), loader)
    old.save_checkpoint(tmp_path / "old.ckpt")
    resumed = L.Trainer(max_epochs=2, **options)
    module = make_module()
    resumed.fit(module, loader, ckpt_path=tmp_path / "old.ckpt", weights_only=True)
    assert resumed.global_step == 8
    assert all(group["fused"] for group in resumed.optimizers[0].param_groups)


def test_gradients_are_clipped_with_bf16_and_the_fused_optimizer():
    """Lightning refuses to clip for an optimizer that unscales AMP's gradients itself (fused SGD); without a loss
    scale (bf16, float32) the module clips them all the same."""
    class ClippedNorms(L.Callback):
        norms: list[float] = []

        def on_before_zero_grad(self, trainer, pl_module, optimizer):  # the previous step's gradients, clipped
            grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
            if grads:
                self.norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())

    data = torch.utils.data.TensorDataset(100 * torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,)))
    clipped = ClippedNorms()
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", limit_val_batches=0, precision="bf16-mixed",
                        gradient_clip_val=0.5, callbacks=[clipped])
    trainer.fit(make_module(), torch.utils.data.DataLoader(data, batch_size=16))
    assert len(clipped.norms) == 3 and max(clipped.norms) <= 0.5 * (1 + 1e-5), clipped.norms


def test_under_fp16s_loss_scale_only_the_loss_is_checked_and_read_at_once():
    """With AMP's GradScaler (16-mixed) the gradients are still scaled and their overflows are the scaler's to
    skip: the guard checks the loss alone, reads it at once (a wait per step) and leaves found_inf to the scaler."""
    from zfexp.divergence import DivergenceGuard

    param = torch.nn.Parameter(torch.ones(3))
    param.grad = torch.tensor([1.0, float("inf"), 0.0])  # an overflow of the scaled gradients
    optimizer = torch.optim.SGD([param], lr=0.1, fused=True)
    guard = DivergenceGuard()
    record = guard.check_step(torch.tensor(2.5), optimizer, step=7, epoch=0, loss_scaled=True)
    assert record is not None and not record.diverged and record.loss == 2.5
    assert not hasattr(optimizer, "found_inf")
    record = guard.check_step(torch.tensor(float("nan")), optimizer, step=8, epoch=0, loss_scaled=True)
    assert record.diverged and record.nonfinite_loss == 1
