"""The launcher presets of ``conf/hydra/launcher/``, the extra each needs (most users never run Ray or SLURM,
so their Hydra plugins are not in the base install), and whether the cluster a preset names answers: both
checked before Hydra composes anything, so that a user reads what to do rather than a launcher's traceback."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence

from zfexp.errors import InvalidValueError, MissingExtraError

# preset -> (the plugin's module, the extra that installs it)
LAUNCHER_EXTRAS = {"ray": ("hydra_plugins.hydra_ray_launcher", "ray"),
                   "slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm")}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing too
        return False


def shared_launch_id() -> str | None:
    """What every process of one multi-process launch has in common, and no other launch has: torchrun's run id
    (``--rdzv-id``, or the one ``--standalone`` draws), or an srun step's job and step ids. ``None`` for a single
    process, and for processes whose launcher names no run (torchrun's static rendezvous names it "none")."""
    env = os.environ
    if env.get("SLURM_STEP_ID") and int(env.get("SLURM_NTASKS", "1")) > 1:  # the tasks of one srun step
        return f"slurm {env.get('SLURM_JOB_ID')}.{env['SLURM_STEP_ID']}"
    if int(env.get("WORLD_SIZE", "1")) > 1 and env.get("TORCHELASTIC_RUN_ID", "none") != "none":
        return f"torchrun {env['TORCHELASTIC_RUN_ID']}"
    return None


def launch_digest(launch: str) -> int:
    """A 64-bit number of a launch's id, the same in every process of the launch."""
    return int.from_bytes(hashlib.blake2b(launch.encode(), digest_size=8).digest(), "little")


class FirstOnly(logging.Filter):
    """Lets through the first record whose message holds ``text``, and drops the ones after it."""

    def __init__(self, text: str):
        super().__init__()
        self.text, self.seen = text, False

    def filter(self, record: logging.LogRecord) -> bool:
        if self.text not in record.getMessage():
            return True
        seen, self.seen = self.seen, True
        return not seen


def quiet_repeated_launcher_warnings() -> None:
    """The SLURM preset's launcher polls ``sacct`` for its jobs' states every few seconds; on a cluster that keeps
    no accounting every poll fails and submitit warns each time (the jobs run and end all the same: their results
    are read from their files). The first warning is kept, its repeats dropped."""
    submitit_log = logging.getLogger("submitit")
    if not any(isinstance(f, FirstOnly) for f in submitit_log.filters):
        submitit_log.addFilter(FirstOnly("Bypassing sacct error"))


def _overrides(argv: Sequence[str]) -> list[tuple[str, str]]:
    """``(key, value)`` of each ``key=value`` on the command line, the key without Hydra's ``+``/``~``."""
    return [(key.lstrip("+~"), value) for key, sep, value in (arg.partition("=") for arg in argv) if sep]


def check_launcher_extra(argv: Sequence[str], extras: Mapping[str, tuple[str, str]] = LAUNCHER_EXTRAS) -> None:
    """Before Hydra composes anything: a ``hydra/launcher=<preset>`` on the command line whose plugin is not
    installed stops with the extra to install (Hydra itself would only say the config is missing)."""
    for key, preset in _overrides(argv):
        if key != "hydra/launcher" or preset not in extras:
            continue
        module, extra = extras[preset]
        if not _installed(module):
            raise MissingExtraError(f"hydra/launcher={preset} needs the [{extra}] extra, which is not installed: "
                                    f"pip install -e '.[{extra}]' (python3 bootstrap.py --dev installs every extra)")


def check_launcher_reachable(argv: Sequence[str]) -> None:
    """A launcher preset on the command line whose cluster does not answer stops with what to do: Ray told to
    join a running instance (``hydra.launcher.ray.init.address=auto``) when none runs here; SLURM when no
    controller answers ``sinfo`` (or the SLURM client is not installed)."""
    overrides = dict(_overrides(argv))
    launcher = overrides.get("hydra/launcher")
    if launcher == "ray" and overrides.get("hydra.launcher.ray.init.address") == "auto":
        _check_ray_running()
    elif launcher == "slurm":
        _check_slurm_answers()


def _check_ray_running() -> None:
    try:  # Ray's own lookup of "auto" (RAY_ADDRESS, then the instances running here)
        from ray._private.services import get_ray_address_from_environment
    except ImportError:  # another Ray: its launcher says it itself
        return
    try:
        get_ray_address_from_environment("auto", None)
    except ConnectionError:
        raise InvalidValueError(
            "hydra.launcher.ray.init.address=auto: no Ray instance runs on this machine to join (and RAY_ADDRESS is "
            "not set). Start one (ray start --head, or run from a Ray cluster's head node), give its address "
            "(ray://<head>:10001), or leave the address out to start Ray for this sweep here") from None


def _check_slurm_answers() -> None:
    sinfo = shutil.which("sinfo")
    if sinfo is None:
        raise InvalidValueError("hydra/launcher=slurm: the SLURM client (sbatch, sinfo) is not installed here; launch "
                                "from a SLURM cluster's login node, or use hydra/launcher=ray on this machine")
    try:
        done = subprocess.run([sinfo, "-h", "-o", "%P"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return  # a busy controller: the launcher waits for it as it would
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or ["no answer"])[-1]
        raise InvalidValueError(f"hydra/launcher=slurm: no SLURM controller answers here (sinfo: {said}); launch "
                                "from a SLURM cluster's login node, or check the cluster's slurm.conf")
