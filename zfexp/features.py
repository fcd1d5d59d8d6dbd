"""Features by layer (Table 7): a linear SVM and a softmax trained on each layer's features of a trained
network, N images per class of a few-shot dataset, mean +- std of the mean per-class accuracy over folds.

    python -m zfexp.features ckpt_path=logs/train/runs/<time>/checkpoints/last.ckpt data=caltech101
    python -m zfexp.features ckpt_path=... data=fashion_mnist_few_shot data.train_per_class=30

The images of all folds are passed through the network once; every layer's features are kept, and each
classifier of each fold reads its rows. Writes ``features.md``, ``tables/features_table7.csv`` and ``features.json``
to ``logs/features/runs/<time>/`` and the table to W&B.
"""

from __future__ import annotations

import logging
import statistics
from typing import Any, cast

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import Subset

from zfexp.analysis.linear_probes import CLASSIFIERS, extract_features, probe_accuracy
from zfexp.checks import positive_int
from zfexp.data.few_shot import FewShotDataModule
from zfexp.errors import InvalidValueError
from zfexp.pretrained import check_compatible, load_pretrained, normalise_as_pretrained, pretrained_network
from zfexp.runs.devices import check_device, device_of
from zfexp.runs.lifecycle import Run, hydra_entry_point, task_wrapper
from zfexp.runs.outputs import write_table
from zfexp.safe_load import trust_option
from zfexp.sweep_results.paper_numbers import TABLE7

log = logging.getLogger(__name__)


def check_config(cfg: DictConfig) -> None:
    """Stop on a bad value before anything is loaded."""
    if not cfg.classifiers or any(c not in CLASSIFIERS for c in cfg.classifiers):
        raise InvalidValueError(f"classifiers={list(cfg.classifiers)}; valid: a non-empty list of "
                                f"{', '.join(CLASSIFIERS)}")
    positive_int("folds", cfg.folds, unit="paper: 5")
    check_device(cfg.device)
    trust_option(cfg)
    positive_int("max_side", cfg.max_side, null="no pooling", unit="a map side")


def fold_datamodules(cfg: DictConfig) -> list[FewShotDataModule]:
    """One datamodule per fold (``data.fold`` = 0..folds-1); the data must be a few-shot one."""
    target = cfg.data.get("_target_")
    if not target or not issubclass(get_class(target), FewShotDataModule):
        raise InvalidValueError(f"data={target}: features by layer needs a few-shot dataset with N images per class; "
                                "valid: data=caltech101, caltech256, image_folder_few_shot, fashion_mnist_few_shot")
    modules = []
    for fold in range(cfg.folds):
        data_cfg = cfg.data.copy()
        with open_dict(data_cfg):
            data_cfg.fold = fold
        modules.append(instantiate(data_cfg, _convert_="all"))
    return modules


def table7_rows(scores: dict[tuple[str, str], list[float]]) -> list[dict]:
    """One row per (classifier, layer): ours mean +- std over folds, and the paper's Caltech numbers. Rows are
    named as the paper's: "SVM (5)" is an SVM on layer 5's features."""
    rows = []
    for (kind, layer), values in scores.items():
        paper = TABLE7.get((kind, layer), (None, None))
        name = "SVM" if kind == "svm" else "Softmax"
        rows.append({"row": f"{name} ({layer[-1]})", "classifier": kind, "layer": layer,
                     "mean": round(statistics.fmean(values), 2),
                     "std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0, "folds": len(values),
                     "paper caltech101": paper[0], "paper caltech256": paper[1]})
    return rows


def markdown(rows: list[dict], title: str, dims: dict[str, int]) -> str:
    """Table 7 in markdown under a title line; ``dims`` is each layer's feature length (after pooling)."""
    def cell(v) -> str:
        return "-" if v is None else str(v)

    lines = [title, "", "| features | dims | ours (mean +- std) | folds | paper Caltech-101 | paper Caltech-256 |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['row']} | {dims.get(r['layer'], '-')} | {r['mean']:.1f} +- {r['std']:.1f} | {r['folds']} | "
              f"{cell(r['paper caltech101'])} | {cell(r['paper caltech256'])} |" for r in rows]
    return "\n".join(lines) + "\n"


@task_wrapper("features.json")
def features_by_layer(cfg: DictConfig, run: Run) -> None:
    """Table 7 for a checkpoint; the rows and what they came from go to ``<run dir>/features.json``."""
    check_config(cfg)
    device = device_of(cfg.device)
    folds = fold_datamodules(cfg)
    pretrained = load_pretrained(cfg.ckpt_path, key="ckpt_path", trusted=trust_option(cfg))
    net = pretrained_network(pretrained)
    layer_names: tuple[str, ...] = getattr(net, "layer_names", ())  # a ZFNet's paper layers
    missing = [layer for layer in cfg.layers if layer not in layer_names]
    if missing:
        raise InvalidValueError(f"layers={list(cfg.layers)}: {missing} not in the network; valid: "
                                f"{', '.join(n for n in layer_names if n != 'fc8')}")
    first = folds[0]
    check_compatible(pretrained, first.num_channels, first.input_size, key="ckpt_path")
    normalise_as_pretrained(first, pretrained)  # the checkpoint's mean image, not the pool's
    first.prepare_data()
    splits = [dm.split_indices for dm in folds]
    used = sorted({i for train, test in splits for i in (*train, *test)})
    position = {index: row for row, index in enumerate(used)}
    run.record.update(ckpt_path=str(cfg.ckpt_path), data=cfg.data._target_, train_per_class=first.train_per_class,
                      folds=cfg.folds, images=len(used))
    feats, labels = extract_features(net, Subset(first.pool_dataset(), used), list(cfg.layers),
                                     max_side=cfg.max_side, batch_size=cfg.batch_size, device=device,
                                     num_workers=first.hparams["num_workers"])
    scores: dict[tuple[str, str], list[float]] = {(k, layer): [] for k in cfg.classifiers for layer in cfg.layers}
    for fold, (train, test) in enumerate(splits):
        tr, te = [position[i] for i in train], [position[i] for i in test]
        for layer in cfg.layers:
            x = feats[layer]
            for kind in cfg.classifiers:
                acc = probe_accuracy(kind, x[tr], labels[tr], x[te], labels[te], seed=cfg.seed,
                                     **cast("dict[str, Any]", OmegaConf.to_container(cfg[kind])))
                scores[(kind, layer)].append(acc)
                log.info("fold %d %7s %5s: %.1f%%", fold, kind, layer, acc)
    rows = table7_rows(scores)
    dims = {layer: int(t.shape[1]) for layer, t in feats.items()}
    classes = ", ".join(first.classes) if len(first.classes) <= 10 else f"{len(first.classes)} classes"
    title = (f"Mean per-class test accuracy % by layer, {type(first).__name__.removesuffix('DataModule')} "
             f"({classes}): {first.train_per_class} training and up to {first.test_per_class} test "
             f"images per class, mean +- std over {cfg.folds} folds; features of {cfg.ckpt_path}")
    text = markdown(rows, title, dims)
    (run.dir / "features.md").write_text(text)
    write_table(run.dir, run.open_loggers(cfg), "features/table7", rows, 0)
    run.record.update(feature_dims=dims, rows=rows)
    log.info("%s\nwritten to %s", text.rstrip("\n"), run.dir)


main = hydra_entry_point(features_by_layer, "features")

if __name__ == "__main__":
    main()
