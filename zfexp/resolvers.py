"""OmegaConf resolvers the configs use; importing this module registers them (once)."""

from __future__ import annotations

from omegaconf import OmegaConf


def gpus_per_job() -> int:
    """1 where CUDA is available (each sweep job gets one GPU), else 0 (jobs share the CPUs)."""
    import torch

    return 1 if torch.cuda.is_available() else 0


if not OmegaConf.has_resolver("zfexp.gpus_per_job"):
    OmegaConf.register_new_resolver("zfexp.gpus_per_job", gpus_per_job)
