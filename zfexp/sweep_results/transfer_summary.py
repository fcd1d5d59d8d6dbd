"""Tables 4 and 5 and Fig. 9 from a ``sweeps/transfer_curve`` multirun: mean per-class test accuracy by
training images per class, pretrained (layers 1-7 fixed) beside from scratch, mean +- std over folds.

Called by ``python -m zfexp.sweep_results.summarize <sweep dir>`` when the sweep is ``transfer_curve``; writes
``summary.md``, ``summary.csv`` and ``summary.png`` (the Fig. 9-style curve) into the sweep dir.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from zfexp.errors import SweepDirError
from zfexp.runs.outputs import write_csv
from zfexp.sweep_results.paper_numbers import TRANSFER
from zfexp.sweep_results.sweep_dir import log_summary_to_wandb

METRIC = "test/mean_class_acc"
PAPER_MODES = ("pretrained", "from scratch")  # the paper's two columns: layers 1-7 fixed, and from scratch


def mode_of(config: dict) -> str:
    """A job's column: ``pretrained`` (layers 1-7 fixed, the paper's), ``pretrained, up to <layer> fixed`` for
    another ``freeze``, ``pretrained, all trained`` (``freeze=null``), or ``from scratch``."""
    if config.get("from_scratch"):
        return "from scratch"
    freeze = config.get("freeze")
    if freeze == "fc7":
        return "pretrained"
    return "pretrained, all trained" if freeze is None else f"pretrained, up to {freeze} fixed"


def _ordered(modes) -> list[str]:
    """Pretrained columns first (the paper's first), from scratch last."""
    return sorted(modes, key=lambda m: (m == "from scratch", m != "pretrained", m))


def _dataset_name(config: dict) -> str:
    """``caltech101`` / ``caltech256`` (the paper's tables) or the data module's name for anything else."""
    target = str((config.get("data") or {}).get("_target_", ""))
    for name in TRANSFER:
        if name.replace("caltech", "Caltech") in target:
            return name
    name = target.rsplit(".", 1)[-1].removesuffix("DataModule") or "data"
    subset = (config.get("data") or {}).get("class_subset")
    return f"{name} classes {','.join(map(str, subset))}" if subset else name


def cells(jobs) -> tuple[dict[tuple[int, str], list[float]], list]:
    """``{(images per class, mode): [accuracy of each completed fold]}`` and the jobs that did not complete."""
    values: dict[tuple[int, str], list[float]] = defaultdict(list)
    failed = []
    for job in jobs:
        data = job.config.get("data") or {}
        mode = mode_of(job.config)
        if job.status != "completed" or job.metrics.get(METRIC) is None:
            failed.append(job)
            continue
        values[(int(data["train_per_class"]), mode)].append(float(job.metrics[METRIC]))
    return dict(values), failed


def table(values: dict[tuple[int, str], list[float]], dataset: str) -> list[dict]:
    """One row per number of training images per class: ours (mean, std, folds) per mode, and the paper's."""
    paper = TRANSFER.get(dataset, {})
    modes = _ordered({m for _, m in values})
    out = []
    for n in sorted({n for n, _ in values}):
        row: dict = {"images per class": n}
        for mode in modes:
            accs = values.get((n, mode), [])
            row[f"{mode} mean"] = round(statistics.fmean(accs), 2) if accs else None
            row[f"{mode} std"] = round(statistics.stdev(accs), 2) if len(accs) > 1 else (0.0 if accs else None)
            row[f"{mode} folds"] = len(accs)
        row["paper pretrained"], row["paper from scratch"] = paper.get(n, (None, None))
        out.append(row)
    return out


def modes_in(rows: list[dict]) -> list[str]:
    return [key.removesuffix(" mean") for key in rows[0] if key.endswith(" mean")]


def _header(mode: str) -> str:
    return "pretrained, layers 1-7 fixed" if mode == "pretrained" else mode


def markdown(rows: list[dict], dataset: str, failed) -> str:
    def ours(r, mode):
        if r[f"{mode} mean"] is None:
            return "-"
        return f"{r[f'{mode} mean']:.1f} +- {r[f'{mode} std']:.1f} ({r[f'{mode} folds']})"

    has_paper = any(r["paper pretrained"] is not None for r in rows)
    modes = modes_in(rows)
    head = ["images per class"] + [_header(m) for m in modes]
    head += ["paper pretrained", "paper from scratch"] if has_paper else []
    lines = [f"Mean per-class test accuracy % on {dataset}, mean +- std (folds)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells_ = [str(r["images per class"])] + [ours(r, m) for m in modes]
        if has_paper:
            cells_ += ["-" if r[k] is None else f"{r[k]:.1f}" for k in ("paper pretrained", "paper from scratch")]
        lines.append("| " + " | ".join(cells_) + " |")
    for job in failed:
        error = " ".join(str(job.error).split())[:200]
        lines.append(f"\n**{job.status}**: job {job.path.name} ({' '.join(job.overrides)}): {error}")
    return "\n".join(lines) + "\n"


def curve(rows: list[dict], dataset: str, path: Path) -> Path:
    """Fig. 9: accuracy against training images per class, error bars = std over folds; the paper's points
    dashed where it has them."""
    from zfexp.figures.plots import plt  # pyplot on the Agg backend: files only

    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=100)
    xs = [r["images per class"] for r in rows]
    colours = {"pretrained": "tab:blue", "from scratch": "tab:orange"}
    others = iter(("tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"))
    for mode in modes_in(rows):
        colour = colours.get(mode) or next(others, "tab:gray")
        pts = [(x, r[f"{mode} mean"], r[f"{mode} std"]) for x, r in zip(xs, rows, strict=True)
               if r[f"{mode} mean"] is not None]
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                        color=colour, label=f"ours, {_header(mode)}")
        paper = [(x, r[f"paper {mode}"]) for x, r in zip(xs, rows, strict=True)
                 if r.get(f"paper {mode}") is not None]
        if paper:
            ax.plot([p[0] for p in paper], [p[1] for p in paper], "--", marker="x", color=colour,
                    label=f"paper, {mode}")
    ax.set_xlabel("training images per class")
    ax.set_ylabel("mean per-class accuracy %")
    ax.set_title(f"Fig. 9 on {dataset}", fontsize=10)
    ax.set_xticks(xs)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def summarize_transfer(sweep_dir: Path, jobs, log_wandb: bool = False) -> list[dict]:
    dataset = _dataset_name(jobs[0].config)
    values, failed = cells(jobs)
    rows = table(values, dataset)
    if not rows:
        raise SweepDirError(f"{sweep_dir}: no job of the transfer sweep completed; each job's metrics.json says "
                            "why (its error); rerun the sweep, or summarise when its jobs have finished")
    text = markdown(rows, dataset, failed)
    (sweep_dir / "summary.md").write_text(text)
    write_csv(sweep_dir / "summary.csv", rows)
    curve(rows, dataset, sweep_dir / "summary.png")
    if log_wandb:
        log_summary_to_wandb(sweep_dir, rows)
    print(text, end="")
    return rows
