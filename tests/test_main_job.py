"""The README's main job, run in full as a user runs it (3 minutes on 2 cores with bf16, 4.5 without): ``-m slow``."""

import json
import re
import subprocess

import pytest
import torch

from tests.conftest import ROOT, train_cmd


@pytest.mark.slow
def test_the_main_job_reaches_the_readmes_error_and_draws_every_figure(tmp_path):
    readme = (ROOT / "README.md").read_text()
    subprocess.run(train_cmd("experiment=quickstart", f"paths.log_dir={tmp_path}"), check=True, cwd=ROOT,
                   capture_output=True)
    (run_dir,) = (tmp_path / "train" / "runs").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # The README gives the error with bf16 (CPUs and GPUs that compute it natively) and with float32 (the others).
    # bf16 rounds differently on an Intel CPU with AMX and on an AMD EPYC with AVX512-BF16: one figure for each.
    bf16 = "precision: bf16-mixed" in (run_dir / "config.yaml").read_text()
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    pattern = (r"with AMX the run reached \*\*([\d.]+)% test top-1 error\*\*" if amx else
               r"no AMX, [^*]*\*\*([\d.]+)% test top-1\s+error\*\*") if bf16 else r"with float32 [^*]*\*\*([\d.]+)%"
    claimed = float(re.search(pattern, readme).group(1))
    assert metrics["status"] == "completed" and metrics["epochs"] == 8
    # The same seeded command: the README's number, up to another CPU's rounding.
    assert abs(metrics["test/top1_err"] - claimed) < 0.5, (metrics["test/top1_err"], claimed)
    assert metrics["perf/train_img_per_s"] > 0  # the steady-state speed, also in the run's last log line
    assert "images/s (steady state" in (run_dir / "train.log").read_text().strip().splitlines()[-1]
    images = list((run_dir / "images").glob("*.png"))
    claimed_images = int(re.search(r"drawing the paper's figures \((\d+)\s+images", readme).group(1))
    assert len(images) == claimed_images
