"""OmegaConf resolvers the configs use; importing this module registers them (once)."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf


def gpus_per_job() -> int:
    """1 where CUDA is available (each sweep job gets one GPU), else 0 (jobs share the CPUs)."""
    import torch

    return 1 if torch.cuda.is_available() else 0


def project_root() -> str:
    """Where ``logs/`` and ``data/`` go by default (``paths.root_dir``): ``$ZFEXP_ROOT`` when set, else the
    checkout that holds ``conf/`` and the ``zfexp`` package, whichever directory a command runs from."""
    return os.environ.get("ZFEXP_ROOT") or str(Path(__file__).resolve().parents[2])


for _name, _resolver in (("zfexp.gpus_per_job", gpus_per_job), ("zfexp.project_root", project_root)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver)
