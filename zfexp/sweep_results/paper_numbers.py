"""The paper's Table 3 (ImageNet 2012, error %), keyed like the rows of sweeps/table3_*.yaml."""

from __future__ import annotations

from typing import NamedTuple


class PaperRow(NamedTuple):
    label: str
    train_top1: float
    val_top1: float
    val_top5: float


TABLE3 = {
    "table3_alexnet": {
        "alexnet": PaperRow("AlexNet replication", 35.1, 40.5, 18.1),
        "no_conv34": PaperRow("- layers 3,4 removed", 41.8, 45.4, 22.1),
        "no_fc7": PaperRow("- layer 7 removed", 27.4, 40.0, 18.4),
        "no_fc67": PaperRow("- layers 6,7 removed", 27.4, 44.8, 22.4),
        "no_conv34_fc67": PaperRow("- layers 3,4,6,7 removed", 71.1, 71.3, 50.1),
        "fc67_2048": PaperRow("- layers 6,7 at 2048 units", 40.3, 41.7, 18.8),
        "fc67_8192": PaperRow("- layers 6,7 at 8192 units", 26.8, 40.0, 18.1),
    },
    "table3_zfnet": {
        "zfnet": PaperRow("ZFNet (Fig. 3)", 33.1, 38.4, 16.5),
        "fc67_2048": PaperRow("- layers 6,7 at 2048 units", 38.2, 40.2, 17.6),
        "fc67_8192": PaperRow("- layers 6,7 at 8192 units", 22.0, 38.8, 17.0),
        "conv345_wide": PaperRow("- layers 3,4,5 at 512,1024,512 maps", 18.8, 37.5, 16.0),
        "fc67_8192_conv345_wide": PaperRow("- 8192 units + 512,1024,512 maps", 10.0, 38.3, 16.9),
    },
}


# Tables 4 and 5: mean per-class accuracy (%), 5 folds, by training images per class:
# (layers 1-7 pretrained on ImageNet and fixed + a new softmax, the same network trained from scratch).
TRANSFER = {
    "caltech101": {15: (83.8, 22.8), 30: (86.5, 46.5)},
    "caltech256": {15: (65.7, 9.0), 30: (70.6, 22.5), 45: (72.7, 31.2), 60: (74.2, 38.8)},
}

# Table 7: a linear SVM or softmax on the features of one layer; Caltech-101 (30 per class), Caltech-256
# (60 per class), mean per-class accuracy (%). Keyed by (classifier, layer).
TABLE7 = {
    ("svm", "conv1"): (44.8, 24.6), ("svm", "conv2"): (66.2, 39.6), ("svm", "conv3"): (72.3, 46.0),
    ("svm", "conv4"): (76.6, 51.3), ("svm", "conv5"): (86.2, 65.6), ("svm", "fc7"): (85.5, 71.7),
    ("softmax", "conv5"): (82.9, 65.7), ("softmax", "fc7"): (85.4, 72.6),
}
