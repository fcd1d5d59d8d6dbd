"""Progress where the user looks: plain lines in stdout and train.log when stdout is no terminal, and the model
summary with every layer's output size (the paper's Fig. 3)."""

from __future__ import annotations

import json
import logging
import re
import subprocess

import pytest
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.utilities.model_summary import ModelSummary

from callbacks.progress_bar import PlainProgressBar, RichOrLogProgressBar
from tests.conftest import ROOT, TINY_RUN, train_cmd
from zfexp.errors import InvalidValueError
from zfexp.module import ImageClassifier
from zfexp.runs.progress import duration, progress


def test_a_run_off_a_terminal_logs_progress_and_one_line_per_epoch_to_train_log(tmp_path):
    log_dir = tmp_path / "logs"
    quiet = [o for o in TINY_RUN if not o.startswith(("callbacks.progress_bar", "trainer.enable_progress_bar"))]
    done = subprocess.run(train_cmd("experiment=quickstart", *quiet, "trainer.max_epochs=2", "callbacks=default",
                                    "logger=csv", "callbacks.progress_bar.every_n_steps=2", f"paths.log_dir={log_dir}"),
                          cwd=ROOT, capture_output=True, text=True, timeout=600)  # stdout is a pipe: no terminal
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = (log_dir / "train" / "runs").iterdir()
    text = (run / "train.log").read_text()
    epochs = re.findall(r"epoch (\d)/2 done in \S+: (.*)", text)
    assert [e for e, _ in epochs] == ["1", "2"]
    metrics = json.loads((run / "metrics.json").read_text())
    for _, line in epochs:
        assert "train/loss" in line and "val/top1_err" in line and "perf/train_img_per_s" in line
    # The last epoch's line says what metrics.json says (4 significant digits).
    val = float(re.search(r"val/top1_err ([\d.]+)", epochs[-1][1]).group(1))
    assert abs(val - metrics["val/top1_err"]) <= 0.01 * max(1.0, abs(val))
    # 256 images / 64 per batch = 4 steps an epoch: a line at step 2 of each (the last step has the epoch's).
    assert len(re.findall(r"epoch \d/2 step 2/4 \(50%\): train/loss_step", text)) == 2
    assert re.search(r"test: test/loss [\d.]+, .*test/top1_err", text)
    # The run's last line: its errors and its steady-state speed, as in metrics.json.
    last = text.strip().splitlines()[-1]
    speed = f"training {metrics['perf/train_img_per_s']:,.0f} images/s (steady state"
    assert f"done: test/top1_err {metrics['test/top1_err']:.2f}, " in last and speed in last, last
    # Lightning's own messages reach the run's log too: the model summary with the layers' output sizes.
    assert re.search(r"net\.conv1 .*\[1, 8, 28, 28\]", text)
    assert text.count("net.conv1 ") == 1 and done.stdout.count("net.conv1 ") == 1  # once each, not twice


def test_the_bar_follows_the_terminal():
    live = RichOrLogProgressBar(terminal=True)
    assert isinstance(live, RichProgressBar) and live.lines is None and live.is_enabled
    plain = RichOrLogProgressBar(every_n_steps=7, terminal=False)
    assert isinstance(plain.lines, PlainProgressBar) and plain.lines.every_n_steps == 7
    assert not plain.is_enabled  # Rich's bar draws nothing beside the lines
    assert isinstance(RichOrLogProgressBar().lines, PlainProgressBar)  # under pytest stdout is captured
    with pytest.raises(InvalidValueError, match=r"RichOrLogProgressBar.every_n_steps=0: must be a positive integer"):
        RichOrLogProgressBar(every_n_steps=0, terminal=True)


def test_analysis_passes_log_about_ten_lines_off_a_terminal(caplog):
    with caplog.at_level(logging.INFO, logger="zfexp.progress"):
        items = list(progress(iter(range(100)), 100, "top-9 of conv1", terminal=False))
    assert items == list(range(100))
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("top-9 of conv1: 10/100 batch (10%), ") and lines[0].endswith(" left")
    assert len(lines) == 10 and lines[-1].startswith("top-9 of conv1: 100 batch in ")  # 9 on the way, 1 at the end
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="zfexp.progress"):
        assert list(progress(range(3), 3, "quiet", enabled=False)) == [0, 1, 2]
    assert not caplog.records


def test_durations_read_as_a_person_writes_them():
    assert [duration(s) for s in (0.4, 42, 75, 3599, 3725)] == ["0s", "42s", "1m15s", "59m59s", "1h02m"]


def test_the_zfnet_summary_lists_the_feature_map_sizes_of_fig_3():
    module = ImageClassifier({"_target_": "zfexp.models.zfnet"}, num_classes=1000)
    summary = ModelSummary(module, max_depth=2)  # what conf/callbacks/model_summary.yaml asks Lightning for
    out = dict(zip(summary.layer_names, summary.out_sizes, strict=True))
    # Fig. 3: 110x110x96 after conv1, 55 after pool1, 26x26x256 after conv2, 13 after pool2 and conv3-5, 6 after pool5.
    assert out["net.conv1"] == [1, 96, 110, 110] and out["net.pool1"] == [1, 96, 55, 55]
    assert out["net.conv2"] == [1, 256, 26, 26] and out["net.pool2"] == [1, 256, 13, 13]
    assert out["net.conv3"] == [1, 384, 13, 13] and out["net.conv5"] == [1, 256, 13, 13]
    assert out["net.pool5"] == [1, 256, 6, 6] and out["net.fc8"] == [1, 1000]
    # FLOPs too: conv2's are 2 per multiply-add, 256 x 26 x 26 output units x 96 x 5 x 5 inputs each.
    assert sum(summary.flop_counts["net.conv2"].values()) == 2 * 256 * 26 * 26 * 96 * 5 * 5
