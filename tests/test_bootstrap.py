"""The setup command is safe to re-run: a second run finds everything in place and changes nothing."""

import subprocess
import sys

from tests.conftest import ROOT


def test_bootstrap_rerun_is_a_no_op():
    if sys.prefix == sys.base_prefix or not (ROOT / ".venv").exists():
        import pytest
        pytest.skip("not running from the bootstrap's .venv")
    stamp = ROOT / ".venv" / ".zfexp-installed-dev"
    before = stamp.stat().st_mtime_ns
    done = subprocess.run(["python3", str(ROOT / "bootstrap.py"), "--dev"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert ".[dev] already installed in .venv" in done.stdout
    assert stamp.stat().st_mtime_ns == before
