"""The plain PyTorch training step the benchmarks hold train.py's against: the same per-step work, by hand."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from zfexp.analysis import FilterRenormalizer, conv_layers
from zfexp.module import ImageClassifier


class PlainStep:
    """``step(images, labels)``: forward and cross-entropy (bf16 autocast when ``bf16``), backward, the divergence
    check on the device (loss and gradients; the flag as fused SGD's ``found_inf``, sticky), fused SGD with the
    module's settings, filter renormalisation of every conv to RMS 0.1 and the module's training metrics. The
    module is on its device already."""

    def __init__(self, module: ImageClassifier, bf16: bool):
        self.module, self.net, self.bf16 = module, module.net, bf16
        device = next(self.net.parameters()).device
        hp = module.hparams
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=hp.lr, momentum=hp.momentum,
                                         weight_decay=hp.weight_decay, fused=True)
        self.renorm = FilterRenormalizer(conv_layers(self.net), radius=0.1)
        self.diverged, self.one = torch.zeros(1, device=device), torch.ones(1, device=device)
        self.device = device

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.module._step_net(images)
            loss = F.cross_entropy(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        bad = torch.zeros(1, device=self.device)
        torch._amp_foreach_non_finite_check_and_unscale_([p.grad for p in self.net.parameters()], bad, self.one)
        torch.maximum(self.diverged, bad + (~torch.isfinite(loss.detach())).float(), out=self.diverged)
        self.optimizer.found_inf = self.diverged
        self.optimizer.step()
        self.renorm()
        self.module.train_metrics.update(logits.detach(), labels)
        self.module.train_loss.update(loss, labels.numel())
