"""The paper's ablations as real Hydra multiruns: Table 3's ZFNet rows in parallel on Ray, a sweep with a
failing row, the summariser, and Lightning DDP on two CPU processes."""

import json
import subprocess
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from torch import nn

from tests.conftest import ROOT
from tests.helpers.multiruns import multirun_cmd, only_sweep
from tests.helpers.wandb_records import history, run_info
from zfexp.sweep_results.paper_numbers import TABLE3
from zfexp.sweep_results.summarize import summarize

# One epoch on a slice of Fashion-MNIST; the analysis callbacks of the quickstart off, except where tested.
FAST = ["experiment=quickstart", "data.subset_size=256", "data.num_workers=0", "data.batch_size=64",
        "trainer.max_epochs=1", "trainer.accelerator=cpu", "callbacks.progress_bar=null",
        "trainer.enable_progress_bar=false", "callbacks.deconv_snapshots=null", "callbacks.top_activations=null",
        "callbacks.filter_diagnostics=null", "callbacks.occlusion_maps=null", "callbacks.invariance_curves=null"]


def compose_with_hydra(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def widths_of(cfg) -> dict[str, int]:
    """Maps / units of each layer of the network the config builds (on the meta device: no memory, no time)."""
    with torch.device("meta"):
        net = instantiate(cfg.model, num_classes=1000)
    return {name: m.weight.shape[0] for name, m in net.named_children() if isinstance(m, (nn.Conv2d, nn.Linear))}


# Table 3's rows on the full-size presets, as the paper describes them (fc8 is the 1000-way softmax).
ZFNET = {"conv1": 96, "conv2": 256, "conv3": 384, "conv4": 384, "conv5": 256, "fc6": 4096, "fc7": 4096, "fc8": 1000}
EXPECTED_ROWS = {
    ("table3_zfnet", "zfnet"): ZFNET,
    ("table3_zfnet", "fc67_2048"): {**ZFNET, "fc6": 2048, "fc7": 2048},
    ("table3_zfnet", "fc67_8192"): {**ZFNET, "fc6": 8192, "fc7": 8192},
    ("table3_zfnet", "conv345_wide"): {**ZFNET, "conv3": 512, "conv4": 1024, "conv5": 512},
    ("table3_zfnet", "fc67_8192_conv345_wide"): {**ZFNET, "conv3": 512, "conv4": 1024, "conv5": 512, "fc6": 8192,
                                                 "fc7": 8192},
    ("table3_alexnet", "alexnet"): ZFNET,
    ("table3_alexnet", "no_conv34"): {k: v for k, v in ZFNET.items() if k not in ("conv3", "conv4")},
    ("table3_alexnet", "no_fc7"): {k: v for k, v in ZFNET.items() if k != "fc7"},
    ("table3_alexnet", "no_fc67"): {k: v for k, v in ZFNET.items() if k not in ("fc6", "fc7")},
    ("table3_alexnet", "no_conv34_fc67"): {k: v for k, v in ZFNET.items() if k not in ("conv3", "conv4", "fc6", "fc7")},
    ("table3_alexnet", "fc67_2048"): {**ZFNET, "fc6": 2048, "fc7": 2048},
    ("table3_alexnet", "fc67_8192"): {**ZFNET, "fc6": 8192, "fc7": 8192},
}


@pytest.mark.parametrize("sweep,row", list(EXPECTED_ROWS))
def test_every_table3_row_builds_the_papers_network(sweep, row):
    model = "zfnet" if sweep == "table3_zfnet" else "alexnet"
    cfg = compose_with_hydra(f"sweep={sweep}", f"model={model}", f"ablation.row={row}")
    # The sweep runs exactly the rows the summariser knows the paper's numbers of, in the paper's order.
    assert cfg.hydra.sweeper.params["ablation.row"] == ",".join(TABLE3[sweep])
    assert widths_of(cfg) == EXPECTED_ROWS[sweep, row]
    if sweep == "table3_alexnet":
        with torch.device("meta"):
            assert instantiate(cfg.model, num_classes=1000).conv1.kernel_size == (11, 11)


def test_fig6_sweep_pairs_both_conv1s_with_and_without_renormalisation():
    cfg = compose_with_hydra("sweep=fig6_conv1")
    assert dict(cfg.hydra.sweeper.params) == {"model": "zfnet,alexnet", "callbacks.filter_renorm.enabled": "true,false"}
    assert cfg.callbacks.filter_diagnostics.first_layer == "conv1"  # the sweep draws conv1 in every job
    for model, conv1 in (("zfnet_small", (5, 1)), ("alexnet_small", (9, 2)), ("zfnet", (7, 2)), ("alexnet", (11, 4))):
        cfg = compose_with_hydra("sweep=fig6_conv1", f"model={model}", "callbacks.filter_renorm.enabled=false")
        assert cfg.callbacks.filter_renorm.enabled is False
        with torch.device("meta"):
            net = instantiate(cfg.model, num_classes=10)
        assert (net.conv1.kernel_size[0], net.conv1.stride[0]) == conv1


def test_table3_zfnet_rows_run_in_parallel_on_ray_each_its_own_wandb_run(tmp_path):
    log_dir = tmp_path / "logs"
    rows = ["zfnet", "fc67_2048"]  # two of the sweep's rows: enough to see them run side by side
    done = subprocess.run(multirun_cmd("sweep=table3_zfnet", f"ablation.row={','.join(rows)}", "hydra/launcher=ray",
                                    f"hydra.launcher.ray.init.num_cpus={len(rows)}",  # all rows at once
                                    f"paths.log_dir={log_dir}", *FAST),
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    sweep = only_sweep(log_dir)
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert len(jobs) == len(rows)
    infos, spans = [], []
    for job in jobs:
        record = job / "metrics.json"
        metrics = json.loads(record.read_text())
        assert metrics["status"] == "completed"
        ended = record.stat().st_mtime  # the record is written as the job ends
        spans.append((ended - metrics["wall_time_s"], ended))
        (log,) = job.glob("wandb/offline-run-*/run-*.wandb")
        infos.append(run_info(log))
    assert {i["group"] for i in infos} == {f"table3_zfnet-{sweep.name}"}  # one group for the launch
    assert sorted(i["name"] for i in infos) == sorted(rows)  # one run per row, named by it
    # The jobs ran side by side: one interval of time in which every job was running.
    assert max(start for start, _ in spans) < min(end for _, end in spans), spans
    table = summarize(sweep)
    assert [r["row"] for r in table] == [TABLE3["table3_zfnet"][r].label for r in rows]
    for r, key in zip(table, rows, strict=True):
        assert r["status"] == "completed" and r["val top-1"] is not None
        assert r["paper val top-1"] == TABLE3["table3_zfnet"][key].val_top1
    assert (sweep / "summary.md").read_text().count("| completed |") == len(rows)
    assert (sweep / "summary.csv").is_file() and (sweep / "summary.png").stat().st_size > 0


def test_a_failing_row_does_not_stop_the_others_and_is_marked(tmp_path):
    log_dir = tmp_path / "logs"
    done = subprocess.run(multirun_cmd("sweep=table3_zfnet", "ablation.row=zfnet,typo,fc67_2048",
                                    f"paths.log_dir={log_dir}", "logger=csv", *FAST),
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0  # the multirun reports the failure, after running every job
    table = summarize(only_sweep(log_dir))
    assert [r["status"] for r in table] == ["completed", "failed", "completed"]
    assert table[1]["error"] == ("InvalidValueError: ablation.row='typo' is not a row of sweep 'table3_zfnet'; "
                                 "valid: " + ", ".join(TABLE3["table3_zfnet"]))
    assert table[1]["paper val top-1"] is None
    assert "**failed**" in (only_sweep(log_dir) / "summary.md").read_text()
    # --wandb: the table as one more (offline) run of the launch's group
    sweep = only_sweep(log_dir)
    summarize(sweep, log_wandb=True)
    (log,) = sweep.glob("wandb/offline-run-*/run-*.wandb")
    assert run_info(log) == {"group": f"table3_zfnet-{sweep.name}", "name": f"table3_zfnet-{sweep.name} summary",
                             "job_type": "summary"}
    (logged,) = history(log)
    assert logged["summary/table/_type"] == "table-file" and logged["summary/table/nrows"] == 3
    assert logged["summary/chart/_type"] == "image-file"


def test_summary_marks_unfinished_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    (sweep / "0" / ".hydra").mkdir(parents=True)
    (sweep / "0" / ".hydra" / "overrides.yaml").write_text("- ablation.row=fc67_8192\n")
    (sweep / "0" / "config.yaml").write_text("sweep_name: table3_zfnet\n"
                                             "ablation: {table: table3_zfnet, row: fc67_8192}\n")
    (table,) = summarize(sweep)
    assert table["status"] == "unfinished" and table["row"] == "- layers 6,7 at 8192 units"
    assert table["paper train top-1"] == 22.0
    with pytest.raises(FileNotFoundError, match="no job directories"):
        summarize(tmp_path / "sweep" / "0")


def write_job(sweep: Path, job: int, row: str, seed: int | None, metrics: dict | None) -> None:
    """A job dir as Hydra and train.py leave it, with ``metrics`` (None: the job never finished)."""
    path = sweep / str(job)
    (path / ".hydra").mkdir(parents=True)
    seed_override = f"- seed={seed}\n" if seed is not None else ""
    (path / ".hydra" / "overrides.yaml").write_text(
        f"- ablation.row={row}\n{seed_override}- sweep=[table3_zfnet,seeds]\n")
    (path / "config.yaml").write_text(f"sweep_name: seeds\nablation: {{table: table3_zfnet, row: {row}}}\n")
    if metrics is not None:
        (path / "metrics.json").write_text(json.dumps(metrics))


def test_jobs_that_differ_only_in_their_seed_make_one_row_with_mean_std_and_n(tmp_path):
    sweep = tmp_path / "sweep"
    for job, (seed, val) in enumerate(((1, 10.0), (2, 11.0), (3, 13.0))):
        write_job(sweep, job, "zfnet", seed, {"status": "completed", "train/top1_err": 9.0, "val/top1_err": val})
    write_job(sweep, 3, "fc67_8192", 1, {"status": "completed", "train/top1_err": 8.0, "val/top1_err": 12.0})
    write_job(sweep, 4, "fc67_8192", 2, {"status": "failed", "error": "NonFiniteLossError: train/loss is nan"})
    write_job(sweep, 5, "fc67_2048", 7, {"status": "completed", "train/top1_err": 7.5, "val/top1_err": 14.0})
    zfnet, wide, narrow = summarize(sweep)
    # By hand: mean(10, 11, 13) = 11.33; sample std = sqrt((1.78 + 0.11 + 2.78) / 2) = 1.53.
    assert (zfnet["row"], zfnet["n"], zfnet["seeds"], zfnet["status"]) == ("ZFNet (Fig. 3)", 3, "1,2,3", "completed")
    assert zfnet["val top-1"] == 11.33 and zfnet["val top-1 std"] == 1.53
    assert zfnet["train top-1"] == 9.0 and zfnet["train top-1 std"] == 0.0 and zfnet["paper val top-1"] == 38.4
    # The failed seed is left out of the mean, counted in the status and shown with its error.
    assert (wide["n"], wide["val top-1"], wide["val top-1 std"]) == (1, 12.0, None)
    assert wide["status"] == "1 of 2 failed" and "train/loss is nan" in wide["error"]
    # A row run with one seed stays as it is.
    assert (narrow["n"], narrow["val top-1"], narrow["val top-1 std"], narrow["seeds"]) == (1, 14.0, None, "7")
    text = (sweep / "summary.md").read_text()
    assert "| ZFNet (Fig. 3) | completed | 3 | 9.0 +- 0.0 | 11.3 +- 1.5 |" in text, text
    assert "| - layers 6,7 at 2048 units | completed | 1 | 7.5 | 14.0 |" in text, text
    csv = (sweep / "summary.csv").read_text().splitlines()
    assert "val top-1 std" in csv[0] and ",1.53," in csv[1]
    assert (sweep / "summary.png").stat().st_size > 0


def test_a_sweep_without_repeated_seeds_keeps_one_row_per_job(tmp_path):
    sweep = tmp_path / "sweep"
    write_job(sweep, 0, "zfnet", None, {"status": "completed", "val/top1_err": 11.0})
    write_job(sweep, 1, "fc67_2048", None, {"status": "completed", "val/top1_err": 12.0})
    table = summarize(sweep)
    assert [(r["row"], r["val top-1"]) for r in table] == [("ZFNet (Fig. 3)", 11.0),
                                                         ("- layers 6,7 at 2048 units", 12.0)]
    assert all("n" not in r and "val top-1 std" not in r for r in table)


def test_the_sweep_summary_takes_wandbs_mode_as_the_runs_do(tmp_path, monkeypatch):
    from zfexp.runs.loggers import wandb_offline
    from zfexp.sweep_results.sweep_dir import log_summary_to_wandb

    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)  # credentials, but WANDB_MODE says offline
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_offline() and wandb_offline(offline=False)
    monkeypatch.setenv("WANDB_MODE", "online")
    assert not wandb_offline(offline=True)
    monkeypatch.delenv("WANDB_MODE")
    assert not wandb_offline() and wandb_offline(offline=True)

    monkeypatch.setenv("WANDB_MODE", "offline")
    sweep = tmp_path / "sweep"
    write_job(sweep, 0, "fig3", 1, {"status": "completed", "val/top1_err": 10.0})
    summarize(sweep)  # writes summary.png
    log_summary_to_wandb(sweep, [{"row": "ZFNet", "val top-1": 10.0}])
    assert list(sweep.glob("wandb/offline-run-*/run-*.wandb"))


def test_summarize_command_reports_a_wrong_directory_in_one_paragraph(tmp_path, capsys):
    from zfexp.sweep_results.summarize import main

    (tmp_path / "sweep" / "0" / ".hydra").mkdir(parents=True)
    for given, said in ((tmp_path / "nowhere", "no such sweep directory; give logs/<task>/multiruns/<time>"),
                        (tmp_path / "sweep" / "0", "no job directories (subfolders with .hydra/) in it; give the "
                                                   "multirun's directory")):
        with pytest.raises(SystemExit) as exit_:
            main([str(given)])
        message = str(exit_.value.code)  # SystemExit(str): Python prints it on stderr, exit status 1
        assert message.startswith(f"Error: {given}: {said}")
        assert "Traceback" not in message and "\n" not in message
    assert capsys.readouterr().out == ""  # no summary printed
