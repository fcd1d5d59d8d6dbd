"""The job directories of a multirun, read back (``Job``: overrides, the ablation row, status, metrics, config),
and a summary logged to the sweep's W&B group. What the Table 3 and the transfer summarisers share."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf

from zfexp.errors import SweepDirError
from zfexp.sweep_results.paper_numbers import TABLE3, PaperRow

SEED = "seed="


@dataclass
class Job:
    """One job directory of a multirun."""

    path: Path
    overrides: list[str]
    table: str | None
    row: str | None
    status: str  # completed | failed | unfinished
    error: str | None
    metrics: dict
    config: dict = field(default_factory=dict)  # the job's resolved config (empty if none)

    @property
    def paper(self) -> PaperRow | None:
        return TABLE3.get(self.table or "", {}).get(self.row or "")

    def label(self, common: Collection[str] = frozenset(), without_seed: bool = False) -> str:
        """The paper's wording of the row (else the row name), followed by the other overrides that set this
        job apart (``seed=2`` in ``'sweep=[table3_zfnet,seeds]'``, left out with ``without_seed``); else those
        overrides alone."""
        own = " ".join(o for o in self.overrides if o not in common and not o.startswith("ablation.row=")
                       and not (without_seed and o.startswith(SEED)))
        row = self.paper.label if self.paper is not None else self.row
        return " ".join(filter(None, (row, own))) or self.path.name

    @property
    def seedless(self) -> tuple:
        """What the job ran, but for its seed: jobs with the same value were repeated over seeds."""
        return self.table, self.row, tuple(sorted(o for o in self.overrides if not o.startswith((SEED, "sweep="))))


def _job_config(path: Path) -> DictConfig:
    """A job's saved config, which Hydra writes as a mapping."""
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig):
        raise SweepDirError(f"{path}: a job's config is a mapping, not a {type(cfg).__name__}; the file is not "
                            "the one Hydra wrote: rerun that job, or move its directory out of the sweep")
    return cfg


def read_job(path: Path) -> Job:
    overrides_file = path / ".hydra" / "overrides.yaml"
    overrides = [str(o) for o in OmegaConf.load(overrides_file)] if overrides_file.is_file() else []
    config_file = path / "config.yaml" if (path / "config.yaml").is_file() else path / ".hydra" / "config.yaml"
    table = row = None
    config: dict = {}
    if config_file.is_file():
        cfg = _job_config(config_file)
        config = cast("dict[str, Any]", OmegaConf.to_container(cfg, resolve=False))  # a DictConfig's: a dict
        ablation = cfg.get("ablation") or {}
        table, row = ablation.get("table") or cfg.get("sweep_name"), ablation.get("row")
        if isinstance(row, str) and row.startswith("${"):  # an unresolved config of a job that never started
            row = None
    row = row or next((o.split("=", 1)[1] for o in overrides if o.startswith("ablation.row=")), None)
    metrics_file = path / "metrics.json"
    if not metrics_file.is_file():
        return Job(path, overrides, table, row, "unfinished", "no metrics.json (killed or still running)", {},
                   config)
    try:
        metrics = json.loads(metrics_file.read_text())
    except json.JSONDecodeError as err:
        return Job(path, overrides, table, row, "failed", f"unreadable metrics.json: {err}", {}, config)
    status = metrics.get("status", "unfinished")
    return Job(path, overrides, table, row, "completed" if status == "completed" else "failed",
               metrics.get("error") if status != "completed" else None, metrics, config)


def find_jobs(sweep_dir: Path) -> list[Job]:
    """Every job directory (one with Hydra's ``.hydra/``) directly under ``sweep_dir``, in job order."""
    if not sweep_dir.is_dir():
        raise SweepDirError(f"{sweep_dir}: no such sweep directory; give logs/<task>/multiruns/<time>")
    dirs = [p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()]
    if not dirs:
        raise SweepDirError(f"{sweep_dir}: no job directories (subfolders with .hydra/) in it; give the "
                            "multirun's directory, logs/<task>/multiruns/<time>, not one of its jobs")
    return [read_job(p) for p in sorted(dirs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit()
                                                             else 0, p.name))]


def log_summary_to_wandb(sweep_dir: Path, table: list[dict], chart: str = "summary.png") -> None:
    """The table and chart as one more run of the sweep's W&B group, in the mode the runs take (WANDB_MODE, else
    offline unless credentials exist)."""
    import wandb

    from zfexp.runs.loggers import finish_wandb, wandb_offline

    first: DictConfig | dict[str, Any] = (_job_config(next(sweep_dir.glob("*/config.yaml")))
                                          if any(sweep_dir.glob("*/config.yaml")) else {})
    group = f"{first.get('sweep_name') or 'multirun'}-{sweep_dir.name}"
    run = wandb.init(project=(first.get("logger") or {}).get("wandb", {}).get("project", "zfexp"), group=group,
                     job_type="summary", name=f"{group} summary", dir=str(sweep_dir),
                     mode="offline" if wandb_offline() else "online")
    columns = list(table[0])
    run.log({"summary/table": wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in table]),
             "summary/chart": wandb.Image(str(sweep_dir / chart))})
    # Finished and W&B's service shut down: its transaction log is complete on disk when this returns (after
    # finish() alone the service may still be writing it).
    finish_wandb()
