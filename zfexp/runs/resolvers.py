"""OmegaConf resolvers the configs use; importing this module registers them (once)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from omegaconf import OmegaConf

from zfexp.runs.launchers import launch_digest, shared_launch_id


def gpus_per_job() -> int:
    """1 where CUDA is available (each sweep job gets one GPU), else 0 (jobs share the CPUs)."""
    import torch

    return 1 if torch.cuda.is_available() else 0


def bf16_where_native(accelerator: str = "auto") -> str:
    """``trainer.precision`` for runs that should take the hardware's fast path: ``"bf16-mixed"`` where the device
    the trainer will use computes bfloat16 natively (a CUDA GPU from Ampere on; a CPU with AMX or AVX512-BF16,
    where oneDNN's bf16 convolutions are several times faster than float32's), else ``"32-true"`` (bf16 emulated
    on an older CPU would be slower)."""
    import torch

    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        # Natively only (Ampere and newer): by default torch also counts emulation, on which a V100 or T4 runs
        # bf16 without cuDNN's kernels, slower than float32.
        return "bf16-mixed" if torch.cuda.is_bf16_supported(including_emulation=False) else "32-true"
    native = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)() or \
        getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    return "bf16-mixed" if native else "32-true"


def cudnn_benchmark(deterministic: bool | str | None = False) -> bool:
    """``trainer.benchmark`` on a GPU: cuDNN's autotuning, which times the convolution algorithms for each input
    size once and keeps the fastest (the sizes of a training run are fixed; torchvision's reference training
    scripts turn it on the same way), unless the run asks to be deterministic (``trainer.deterministic``: true or
    warn), which autotuning would make it not."""
    return not deterministic


def project_root() -> str:
    """Where ``logs/`` and ``data/`` go by default (``paths.root_dir``): ``$ZFEXP_ROOT`` when set, else the
    checkout that holds ``conf/`` and the ``zfexp`` package, whichever directory a command runs from."""
    return os.environ.get("ZFEXP_ROOT") or str(Path(__file__).resolve().parents[2])


def run_tag() -> str:
    """Six hex digits after the time in a run dir's name (``2026-11-30_12-40-03_3fa9c1``): runs started in the same
    second (two resumes, the jobs of two sweeps on a cluster) never share a dir. Drawn from the OS, not from the
    run's random generators; cached like Hydra's ``now``, so a sweep's jobs share their sweep dir. The processes
    of one torchrun or srun launch (DDP) take the launch's own, so that they share one run dir."""
    launch = shared_launch_id()
    return f"{launch_digest(launch) % 16**6:06x}" if launch is not None else secrets.token_hex(3)


for _name, _resolver in (("zfexp.gpus_per_job", gpus_per_job), ("zfexp.project_root", project_root),
                         ("zfexp.bf16_where_native", bf16_where_native), ("zfexp.cudnn_benchmark", cudnn_benchmark)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver)
if not OmegaConf.has_resolver("zfexp.run_tag"):
    OmegaConf.register_new_resolver("zfexp.run_tag", run_tag, use_cache=True)
