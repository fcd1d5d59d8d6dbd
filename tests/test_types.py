"""The type checker, as ruff: mypy (configured in pyproject.toml, every function body checked) is clean on
``zfexp/`` and ``callbacks/``, and it does fail: a planted wrong type is reported on its line."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A call of the package with a result of the wrong type, and a wrong argument: what the checker is there for.
PLANTED = '''\
import torch

from zfexp.analysis.layer_choice import default_conv_layers

layers: int = default_conv_layers(torch.nn.Conv2d(3, 8, 3), (3, 64, 64))
default_conv_layers(torch.nn.Conv2d(3, 8, 3), (3, 64, 64), count="five")
'''


def mypy(*args: str) -> subprocess.CompletedProcess:
    """mypy with the project's configuration and its cache in the repository (one run at a time here)."""
    return subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), *args],
                          capture_output=True, text=True, cwd=ROOT)


def test_mypy_is_clean_and_reports_a_planted_wrong_type(tmp_path):
    clean = mypy()
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert clean.stdout.startswith("Success: no issues found")

    # A module name of its own each run: mypy replays a cached module's errors with the path it had then.
    planted = tmp_path / f"planted_{uuid.uuid4().hex[:12]}.py"
    planted.write_text(PLANTED)
    wrong = mypy(str(planted))
    assert wrong.returncode == 1
    assert f'{planted}:5: error: Incompatible types in assignment (expression has type "list[str]", variable has ' \
           'type "int")  [assignment]' in wrong.stdout, wrong.stdout
    assert f"{planted}:6: error: Argument \"count\" to \"default_conv_layers\" has incompatible type \"str\"; " \
           'expected "int"  [arg-type]' in wrong.stdout, wrong.stdout


def test_the_pre_commit_hooks_are_a_valid_config_running_ruff_and_mypy():
    import yaml

    config = ROOT / ".pre-commit-config.yaml"
    result = subprocess.run([sys.executable, "-m", "pre_commit", "validate-config", str(config)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    repos = yaml.safe_load(config.read_text())["repos"]
    hooks = {hook["id"]: hook["entry"] for repo in repos for hook in repo["hooks"]}
    assert hooks == {"ruff": ".venv/bin/python -m ruff check --fix", "mypy": ".venv/bin/python -m mypy"}
