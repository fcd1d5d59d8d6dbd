"""Table 7: how discriminative each layer's features are, measured by a linear classifier (a linear SVM or a
softmax, scikit-learn's) trained on them, scored by mean per-class accuracy as the paper's Caltech tables."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from torch import nn
from torch.utils.data import DataLoader, Dataset

from zfexp.analysis.activations import layer_outputs
from zfexp.errors import InvalidValueError
from zfexp.runs.progress import progress

CLASSIFIERS = ("svm", "softmax")


def extract_features(net: nn.Module, dataset: Dataset, layers: Sequence[str], max_side: int | None = 6,
                     batch_size: int = 256, device: torch.device | str = "cpu", num_workers: int = 0,
                     ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every layer's (post-ReLU) features of every image of ``dataset`` in one pass over it:
    ``({layer: [N, D_layer] float32 on the CPU}, labels [N])``. Conv maps wider than ``max_side`` are
    max-pooled to ``max_side x max_side``."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    chunks: dict[str, list[torch.Tensor]] = {layer: [] for layer in layers}
    labels = []
    net = net.to(device)
    for images, y in progress(loader, len(loader), f"features of {', '.join(layers)}"):
        _, feats = layer_outputs(net, images.to(device), layers, max_side=max_side)
        for layer in layers:
            chunks[layer].append(feats[layer].float().cpu())
        labels.append(torch.as_tensor(y))
    return {layer: torch.cat(c) for layer, c in chunks.items()}, torch.cat(labels)


def make_classifier(kind: str, C: float = 1.0, max_iter: int = 2000, seed: int = 0):
    """A scikit-learn pipeline: standardised features, then a linear SVM (one-vs-rest) or a softmax."""
    if kind == "svm":
        model = LinearSVC(C=C, max_iter=max_iter, random_state=seed)
    elif kind == "softmax":
        model = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    else:
        raise InvalidValueError(f"classifier {kind!r}; valid: {', '.join(CLASSIFIERS)}")
    return make_pipeline(StandardScaler(), model)


def mean_class_accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Mean over the classes present in ``labels`` of the share of their images predicted right, in %."""
    return 100.0 * float(balanced_accuracy_score(labels, predicted))


def probe_accuracy(kind: str, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                   test_y: torch.Tensor, C: float = 1.0, max_iter: int = 2000, seed: int = 0) -> float:
    """Train classifier ``kind`` on ``train_x [N, D]`` and return its mean per-class accuracy (%) on ``test_x``."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    classifier = make_classifier(kind, C, max_iter, seed)
    with warnings.catch_warnings():
        # A few thousand iterations are what the table needs; liblinear's last digits are not worth longer.
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(train_x.numpy(), train_y.numpy())
    return mean_class_accuracy(test_y.numpy(), classifier.predict(test_x.numpy()))
