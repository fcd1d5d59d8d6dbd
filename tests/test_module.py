"""The LightningModule: error metrics in %, 10-crop averaging, checkpoints, settings (its steps' host syncs and
divergence: tests/test_step_syncs.py)."""

import pytest
import torch
from torch.nn import functional as F

from zfexp.metrics import MeanClassAccuracy
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


@pytest.mark.parametrize("num_classes", [3, 10, 1000])
def test_the_metrics_equal_torchmetrics_to_the_last_digit(num_classes):
    """Ours count with comparisons (no host sync); torchmetrics' MulticlassAccuracy (bincount) is the independent
    reference. The scores are rounded to bf16, as a bf16 run's are: many tie, and the same class must win."""
    from torchmetrics.classification import MulticlassAccuracy

    g = torch.Generator().manual_seed(num_classes)
    top5 = min(5, num_classes)
    ours = [TopKError(num_classes, 1), TopKError(num_classes, top5), MeanClassAccuracy(num_classes)]
    ref = [MulticlassAccuracy(num_classes, top_k=1, average="micro"),
           MulticlassAccuracy(num_classes, top_k=top5, average="micro"),
           MulticlassAccuracy(num_classes, top_k=1, average="macro")]
    for _ in range(3):  # scores that the true class wins often; the last class predicted but never a label
        labels = torch.cat([torch.arange(num_classes - 1), torch.randint(0, num_classes - 1, (61,), generator=g)])
        scores = torch.randn(len(labels), num_classes, generator=g) + 2 * F.one_hot(labels, num_classes)
        scores[:4, -1] = 10.0
        for metric in (*ours, *ref):
            metric.update(scores.bfloat16().float(), labels)
    assert ours[0].compute().item() == (100 * (1 - ref[0].compute())).item()
    assert ours[1].compute().item() == (100 * (1 - ref[1].compute())).item()
    assert ours[2].compute().item() == (100 * ref[2].compute()).item()


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


def test_a_mid_epoch_checkpoints_torchmetrics_states_load_into_the_metrics():
    """Checkpoints written before these metrics hold torchmetrics' MulticlassAccuracy states (top-5's per class):
    loaded, the epoch goes on to torchmetrics' own numbers."""
    from torchmetrics import MetricCollection
    from torchmetrics.classification import MulticlassAccuracy

    from zfexp.resuming import _load_metric_states, _metric_states

    def collection(ours: bool) -> MetricCollection:
        if ours:
            return MetricCollection({"top1_err": TopKError(10, 1), "top5_err": TopKError(10, 5),
                                     "mean_class_acc": MeanClassAccuracy(10)}, compute_groups=False)
        return MetricCollection({"top1_err": MulticlassAccuracy(10, top_k=1, average="micro"),
                                 "top5_err": MulticlassAccuracy(10, top_k=5, average="micro"),
                                 "mean_class_acc": MulticlassAccuracy(10, top_k=1, average="macro")})

    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(64, 10, generator=g), torch.randint(0, 10, (64,), generator=g)) for _ in range(2)]
    old, ours = collection(False), collection(True)
    old.update(*batches[0])
    _load_metric_states(ours, _metric_states(old))
    for metrics in (old, ours):
        metrics.update(*batches[1])
    got, want = ours.compute(), old.compute()
    assert got["top1_err"].item() == (100 * (1 - want["top1_err"])).item()
    assert got["top5_err"].item() == (100 * (1 - want["top5_err"])).item()
    assert got["mean_class_acc"].item() == (100 * want["mean_class_acc"]).item()
