"""Summarise a finished (or half-finished) multirun: our train / val errors per job beside the paper's row.

    python -m zfexp.sweep_results.summarize logs/train/multiruns/<time>            # prints the table
    python -m zfexp.sweep_results.summarize logs/train/multiruns/<time> --wandb    # and logs it to W&B
    python -m zfexp.sweep_results.summarize logs/train/multiruns/<time> --with logs/train/multiruns/<time2>  # pooled

Writes ``summary.md``, ``summary.csv`` and ``summary.png`` (bar chart) into the sweep dir. A job without
``metrics.json`` (killed, or still running) is "unfinished", one whose status is not "completed" is "failed";
both stay in the table with their error instead of stopping the summary. Jobs that differ only in ``seed``
(``'sweep=[table3_zfnet,seeds]'``) make one row: each metric's mean +- standard deviation over the completed
jobs and their number n; a row run with one seed stays as it is.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from pathlib import Path

from zfexp.runs.outputs import write_csv
from zfexp.runs.reporting import reported_exit
from zfexp.sweep_results.sweep_dir import SEED, Job, find_jobs, log_summary_to_wandb
from zfexp.sweep_results.transfer_summary import summarize_transfer

METRICS = (("train/top1_err", "train top-1"), ("val/top1_err", "val top-1"), ("val/top5_err", "val top-5"))
# Shown when some job has it: Fig. 6's dead layer-1 filters (FilterDiagnostics, as a fraction in metrics.json).
EXTRA_METRICS = (("filters/dead_frac/conv1", "conv1 dead %", 100.0),)


def rows(jobs: list[Job]) -> list[dict]:
    """One dict per job, or per group of jobs that differ only in their seed: label, overrides, status, ours and
    the paper's errors (None where missing); a group's metrics are means, with ``<metric> std`` and ``n``."""
    common = set.intersection(*(set(j.overrides) for j in jobs)) if len(jobs) > 1 else set()
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.seedless, []).append(job)
    seeded = any(len(group) > 1 for group in groups.values())
    out = []
    for group in groups.values():
        first = group[0]
        row: dict[str, str | int | float | None]  # a table row: text, counts, errors (None where missing)
        if len(group) == 1 and not seeded:
            row = {"job": first.path.name, "row": first.label(common), "overrides": " ".join(first.overrides),
                   "status": first.status}
        else:
            row = {"job": ",".join(j.path.name for j in group), "row": first.label(common, without_seed=True),
                   "overrides": " ".join(o for o in first.overrides if not o.startswith(SEED)),
                   "seeds": ",".join(_seed_of(j) for j in group)}
        # A lone job shows what it has, finished or not; a group averages its completed jobs only.
        done = group if "seeds" not in row else [j for j in group if j.status == "completed"]
        failed = [j for j in group if j.status != "completed"]
        if "seeds" in row:
            row["status"] = "completed" if not failed else f"{len(failed)} of {len(group)} {failed[0].status}"
            row["n"] = len(done)
        for key, name, scale in (*((k, n, 1.0) for k, n in METRICS), *EXTRA_METRICS):
            values = [float(j.metrics[key]) * scale for j in done if j.metrics.get(key) is not None]
            row[name] = round(statistics.fmean(values), 2) if values else None
            if "seeds" in row:
                row[f"{name} std"] = round(statistics.stdev(values), 2) if len(values) > 1 else None
        paper = first.paper
        row.update({"paper train top-1": paper.train_top1 if paper else None,
                    "paper val top-1": paper.val_top1 if paper else None,
                    "paper val top-5": paper.val_top5 if paper else None,
                    "error": failed[0].error if failed else None})
        out.append(row)
    return out


def _seed_of(job: Job) -> str:
    return next((o.removeprefix(SEED) for o in job.overrides if o.startswith(SEED)),
                str(job.config.get("seed", "?")))


def markdown(table: list[dict]) -> str:
    def cell(row: dict, name: str) -> str:
        value, std = row.get(name), row.get(f"{name} std")
        if value is None:
            return "-"
        text = f"{value:.1f}" if isinstance(value, float) else str(value)
        return f"{text} +- {std:.1f}" if std is not None else text

    ours = [name for _, name in METRICS]
    optional = [name for _, name, _ in EXTRA_METRICS] + ["paper train top-1", "paper val top-1", "paper val top-5"]
    # Extra metrics and the paper's columns only where some row has them (Fig. 6 has no paper errors); n where
    # jobs were repeated over seeds.
    head = ["row", "status", *(["n"] if any("n" in r for r in table) else []), *ours,
            *(h for h in optional if any(r[h] is not None for r in table))]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        error = " ".join(str(r["error"]).split())  # one line: a table cell
        status = r["status"] if r["error"] is None else f"**{r['status']}**: {error[:200]}"
        lines.append("| " + " | ".join([r["row"], status] + [cell(r, h) for h in head[2:]]) + " |")
    return "\n".join(lines) + "\n"


def bar_chart(table: list[dict], path: Path) -> Path:
    from zfexp.figures.plots import plt  # pyplot on the Agg backend: files only

    labels = [r["row"] for r in table]
    x = range(len(table))
    panels = [("", "ours")]
    if any(r["paper val top-1"] is not None for r in table):
        panels.append(("paper ", "paper (ImageNet)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(max(4, 0.8 * len(table)) * len(panels), 4.5), dpi=90,
                             squeeze=False)
    for ax, (prefix, title) in zip(axes[0], panels, strict=True):
        highest = 0.0
        for name, offset in (("train top-1", -0.2), ("val top-1", 0.2)):
            values = [r[prefix + name] if r[prefix + name] is not None else 0.0 for r in table]
            spread = [r.get(f"{prefix}{name} std") or 0.0 for r in table]  # seeds' standard deviation
            ax.bar([i + offset for i in x], values, width=0.4, label=name,
                   yerr=spread if any(spread) else None, capsize=3)
            highest = max([highest, *(v + e for v, e in zip(values, spread, strict=True))])
        ax.set_ylim(0, 1.25 * highest or 1.0)  # room for the legend above the bars
        ax.set_xticks(list(x))
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("error %")
        ax.set_title(title)
        ax.legend(fontsize=8, loc="upper center", ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def summarize(sweep_dir: str | Path, log_wandb: bool = False, more_dirs: Sequence[str | Path] = ()) -> list[dict]:
    """Summarise the jobs of ``sweep_dir`` (and of ``more_dirs``: other launches of the same study, e.g. a
    column added later) into ``sweep_dir``."""
    sweep_dir = Path(sweep_dir)
    jobs = find_jobs(sweep_dir) + [job for more in more_dirs for job in find_jobs(Path(more))]
    if any(j.config.get("sweep_name") == "transfer_curve" for j in jobs):
        return summarize_transfer(sweep_dir, jobs, log_wandb)
    table = rows(jobs)
    text = markdown(table)
    (sweep_dir / "summary.md").write_text(text)
    write_csv(sweep_dir / "summary.csv", table)
    bar_chart(table, sweep_dir / "summary.png")
    if log_wandb:
        log_summary_to_wandb(sweep_dir, table)
    print(text, end="")
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", help="a multirun directory: logs/<task>/multiruns/<time>")
    parser.add_argument("--wandb", action="store_true", help="also log the table and chart to W&B")
    parser.add_argument("--with", dest="more_dirs", action="append", default=[], metavar="DIR",
                        help="pool the jobs of another multirun of the same study (repeatable); "
                             "the summary is written to sweep_dir")
    args = parser.parse_args(argv)
    with reported_exit():  # a user's mistake (a wrong directory) in one paragraph, no traceback
        summarize(args.sweep_dir, log_wandb=args.wandb, more_dirs=args.more_dirs)


if __name__ == "__main__":
    main()
