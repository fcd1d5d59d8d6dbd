#!/usr/bin/env python3
"""Set up everything zfexp needs, from nothing but python3. Safe to re-run.

    python3 bootstrap.py          # runtime environment in .venv
    python3 bootstrap.py --dev    # plus the test and benchmark extras
    python3 bootstrap.py --dev --browser   # plus a headless browser for the atlas's browser test (-m slow)

Steps, each skipped when already done:
1. Debian packages, when apt-get is usable (root): `dataset-fashion-mnist` (the embedded
   default dataset, so no network is needed to train) and `python3-venv` where Python
   lacks `ensurepip`. Without apt the datamodule downloads Fashion-MNIST instead. With `--browser`:
   `chromium` and `chromium-driver`, which the atlas's browser test drives through selenium.
2. A virtual environment in `.venv` (falls back to `virtualenv` when `venv` cannot bootstrap pip).
3. `pip install -e .[extras]` into it: torch and torchvision from the package registry, and
   the rest of pyproject.toml. A stamp holding the hash of pyproject.toml makes re-runs instant.

Standard library only: this file runs before anything is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
FASHION_MNIST_DEB_DIR = Path("/usr/share/datasets/fashion-mnist")


def log(msg: str) -> None:
    print(f"[bootstrap] {msg}", flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    log("$ " + " ".join(cmd))
    return subprocess.run(cmd, **kw)


def apt_usable() -> bool:
    return shutil.which("apt-get") is not None and hasattr(os, "geteuid") and os.geteuid() == 0


def has_ensurepip() -> bool:
    return subprocess.run([sys.executable, "-c", "import ensurepip, venv"], capture_output=True).returncode == 0


def apt_install(packages: list[str]) -> bool:
    """Install Debian packages; refresh the package lists once if the first try fails."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    if run(cmd, env=env).returncode == 0:
        return True
    run(["apt-get", "update", "-q"], env=env)
    return run(cmd, env=env).returncode == 0


def system_packages(browser: bool = False) -> None:
    wanted = []
    if browser:
        wanted += [name for name in ("chromium", "chromium-driver")
                   if shutil.which("chromedriver" if name == "chromium-driver" else name) is None]
    if not FASHION_MNIST_DEB_DIR.is_dir():
        wanted.append("dataset-fashion-mnist")
    if not has_ensurepip():
        wanted.append("python3-venv")
    if not wanted:
        return
    if not apt_usable():
        log(f"apt-get not usable (not root or not Debian): skipping {wanted}. "
            "Fashion-MNIST will be downloaded by torchvision on first use.")
        return
    if not apt_install(wanted):
        log(f"apt-get could not install {wanted}; continuing (Fashion-MNIST falls back to download).")


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def create_venv() -> None:
    if venv_python().exists():
        return
    if has_ensurepip():
        if run([sys.executable, "-m", "venv", str(VENV)]).returncode == 0:
            return
        shutil.rmtree(VENV, ignore_errors=True)
    # No ensurepip (Debian's python3 without python3-venv, and apt not usable): virtualenv
    # ships its own pip, so it only needs a pip to be installed by.
    if run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode != 0:
        sys.exit("[bootstrap] python3 has neither a working venv/ensurepip nor pip. Install one of "
                 "them (Debian: apt-get install python3-venv) and re-run `python3 bootstrap.py`.")
    if run([sys.executable, "-m", "pip", "install", "--user", "virtualenv"]).returncode != 0:
        sys.exit("[bootstrap] could not install virtualenv with pip; see the output above.")
    if run([sys.executable, "-m", "virtualenv", str(VENV)]).returncode != 0:
        sys.exit("[bootstrap] virtualenv failed to create .venv; see the output above.")


def install_project(extras: str) -> None:
    spec = f".[{extras}]" if extras else "."
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + spec.encode()).hexdigest()
    stamp = VENV / f".zfexp-installed-{extras or 'base'}"
    if stamp.exists() and stamp.read_text() == digest:
        log(f"{spec} already installed in .venv")
        return
    py = str(venv_python())
    if run([py, "-m", "pip", "install", "-q", "--upgrade", "pip"], cwd=ROOT).returncode != 0:
        log("pip upgrade failed; continuing with the bundled pip")
    if run([py, "-m", "pip", "install", "-e", spec], cwd=ROOT).returncode != 0:
        sys.exit(f"[bootstrap] pip install -e {spec} failed; see the output above.")
    stamp.write_text(digest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dev", action="store_true", help="also install the test/benchmark extras")
    parser.add_argument("--browser", action="store_true",
                        help="also Debian's chromium and chromium-driver and selenium (the atlas's browser test)")
    args = parser.parse_args()
    system_packages(args.browser)
    create_venv()
    install_project(",".join(extra for extra, wanted in (("dev", args.dev), ("browser", args.browser)) if wanted))
    log("ready: .venv/bin/python train.py experiment=quickstart")


if __name__ == "__main__":
    main()
