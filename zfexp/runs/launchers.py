"""The launcher presets of ``conf/hydra/launcher/`` and the extra each needs: most users never run Ray or
SLURM, so their Hydra plugins are not in the base install."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence

from zfexp.errors import UserError

# preset -> (the plugin's module, the extra that installs it)
LAUNCHER_EXTRAS = {"ray": ("hydra_plugins.hydra_ray_launcher", "ray"),
                   "slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm")}


class MissingExtraError(UserError):
    """A preset was chosen whose package is not installed."""


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing too
        return False


def check_launcher_extra(argv: Sequence[str], extras: Mapping[str, tuple[str, str]] = LAUNCHER_EXTRAS) -> None:
    """Before Hydra composes anything: a ``hydra/launcher=<preset>`` on the command line whose plugin is not
    installed stops with the extra to install (Hydra itself would only say the config is missing)."""
    for arg in argv:
        key, _, preset = arg.partition("=")
        if key.lstrip("+~") != "hydra/launcher" or preset not in extras:
            continue
        module, extra = extras[preset]
        if not _installed(module):
            raise MissingExtraError(f"hydra/launcher={preset} needs the [{extra}] extra, which is not installed: "
                                    f"pip install -e '.[{extra}]' (python3 bootstrap.py --dev installs every extra)")
