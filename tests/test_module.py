"""The LightningModule: error metrics in %, 10-crop averaging, the NaN-loss stop."""

import lightning as L
import pytest
import torch
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from zfexp.errors import NonFiniteLossError
from zfexp.module import ImageClassifier, TopKError

SMALL_NET = {"_target_": "zfexp.models.zfnet_small", "widths": {"conv1": 4, "conv2": 4, "conv3": 4, "conv4": 4,
                                                                  "conv5": 4, "fc6": 8, "fc7": 8}}


def test_topk_error_matches_a_hand_count():
    # 4 samples, 6 classes; true labels 0, 1, 2, 5.
    scores = torch.tensor([
        [9., 1, 2, 3, 4, 5],   # label 0 ranked 1st          -> top-1 hit
        [9., 8, 7, 6, 5, 4],   # label 1 ranked 2nd          -> top-1 miss, top-5 hit
        [1., 2, 1.5, 3, 4, 5], # label 2 ranked 5th          -> top-5 hit
        [6., 5, 4, 3, 2, 1],   # label 5 ranked 6th (last)   -> top-5 miss
    ])
    labels = torch.tensor([0, 1, 2, 5])
    top1, top5 = TopKError(6, 1), TopKError(6, 5)
    top1.update(scores, labels)
    top5.update(scores, labels)
    assert top1.compute().item() == pytest.approx(75.0)  # 3 of 4 wrong
    assert top5.compute().item() == pytest.approx(25.0)  # 1 of 4 outside the top 5


def make_module(**kw):
    return ImageClassifier(net=SMALL_NET, num_classes=10, in_channels=1, input_size=28, **kw)


def test_ten_crop_evaluation_averages_the_softmax():
    torch.manual_seed(0)
    module = make_module().eval()
    crops = torch.randn(3, 10, 1, 28, 28)
    labels = torch.tensor([1, 2, 3])
    with torch.no_grad():
        expected = torch.stack([F.softmax(module(c), -1).mean(0) for c in crops])  # one image at a time
        module._eval_step((crops, labels), module.val_metrics, module.val_loss, "val")
    top1 = module.val_metrics["top1_err"].compute().item()
    assert top1 == pytest.approx(100.0 * (expected.argmax(-1) != labels).float().mean().item())
    assert module.val_loss.compute().item() == pytest.approx(F.nll_loss(expected.log(), labels).item(), rel=1e-5)


def test_nan_loss_stops_with_a_clear_message():
    module = make_module()
    images = torch.full((2, 1, 28, 28), float("nan"))
    with pytest.raises(NonFiniteLossError,
                       match=r"train/loss is nan at epoch 1, global step 0.*no checkpoint.*lower module.lr"):
        module.training_step((images, torch.tensor([0, 1])), 0)


def test_checkpoint_alone_rebuilds_the_network(tmp_path):
    module = make_module(lr=0.05)
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": "2.6.0"}, path)
    loaded = ImageClassifier.load_from_checkpoint(path)
    assert loaded.hparams.lr == 0.05
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(loaded.eval()(x), module.eval()(x))


@pytest.mark.parametrize("kw, words", [({"lr": 0}, "module.lr=0"), ({"momentum": 1.0}, "module.momentum=1.0"),
                                       ({"weight_decay": -1}, "module.weight_decay=-1")])
def test_bad_optimiser_settings_are_named(kw, words):
    with pytest.raises(ValueError, match=words):
        make_module(**kw)


def test_an_analysis_leaves_a_transfer_runs_fixed_layers_in_eval_mode():
    from callbacks.network_layers import evaluating
    from zfexp.analysis import occlusion_maps

    module = make_module(freeze="fc7").train()
    training = [name for name, child in module.net.named_children() if child.training]
    assert training == ["fc8"]  # layers 1-7 fixed: no dropout, no batch-norm statistics updated
    with evaluating(module.net):  # what every analysis callback does
        assert not any(m.training for m in module.net.modules())
    occlusion_maps(module.net, torch.randn(1, 1, 28, 28), [0], patch=7, stride=7)
    assert [name for name, child in module.net.named_children() if child.training] == training
    assert module.net.training  # the network itself back in training mode, its fixed layers not


class HostSyncs(TorchDispatchMode):
    """Counts, per training step, the reads of a device value by the host (``.item()``, ``bool(tensor)``: on a GPU
    each waits for the device) and the tensors made from Python numbers (on a GPU, copies the host waits for)."""

    def __init__(self):
        super().__init__()
        self.reads = self.made = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.reads += func is torch.ops.aten._local_scalar_dense.default
        self.made += func is torch.ops.aten.lift_fresh.default
        return func(*args, **(kwargs or {}))


class CountSyncs(L.Callback):
    def __init__(self):
        self.steps: list[tuple[int, int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.mode = HostSyncs().__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # after backward and the step
        self.mode.__exit__(None, None, None)
        self.steps.append((self.mode.reads, self.mode.made))


def test_a_training_step_makes_one_host_sync_the_divergence_check(monkeypatch):
    """So that the host runs ahead of a GPU: the network with LRN, the metrics, the loss's mean, filter
    renormalisation. ``F.one_hot`` checks its values on the host on a CPU only (on CUDA the device asserts them):
    it runs as on CUDA here."""
    from callbacks import FilterRenorm

    monkeypatch.setattr(F, "one_hot", lambda x, num_classes: torch.zeros(
        *x.shape, num_classes, dtype=torch.long).scatter_(-1, x.long().unsqueeze(-1), 1))
    net = {**SMALL_NET, "norm": "lrn"}
    module = ImageClassifier(net=net, num_classes=10, in_channels=1, input_size=28, lr_plateau=None)
    data = torch.utils.data.TensorDataset(torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,)))
    counting = CountSyncs()
    trainer = L.Trainer(max_epochs=1, callbacks=[FilterRenorm(), counting], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", limit_val_batches=0)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=16))
    assert counting.steps[1:] == [(1, 0)] * 3, counting.steps  # after the first (which makes LRN's constants)
